"""schemathesis (its CLI, every phase) against the OpenAPI document of a real `openbatch
serve`: no generated request, valid or not, gets a 5xx, and every response agrees with the
document (statuses, content types, headers, bodies, `Allow`, auth).

schemathesis's pytest loader for a schema that comes from a fixture
(`schemathesis.pytest.from_fixture`) does not work with pytest 9 (it sets the removed
`Node._nodeid`), so the CLI runs in a subprocess; its report is the failure message.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.fixtures.model_sim import SimHandle
from tests.fixtures.shim import ServeFactory

MAX_EXAMPLES = 50
KEY = "sk-schemathesis"
# Every check but one: `positive_data_acceptance` expects every schema-valid request to
# succeed, but some rules cannot be said in JSON Schema (a batch file's bytes must be
# JSONL; `after` must name an object of the list).
EXCLUDED_CHECKS = "positive_data_acceptance"


def test_no_generated_request_gets_a_server_error(
    serve_factory: ServeFactory, model_sim: SimHandle, tmp_path: Path
) -> None:
    serve = serve_factory(
        tmp_path / "data", models={"sim-model": model_sim.base_url}, api_keys={KEY: "team"}
    )
    schemathesis = Path(sys.executable).parent / "schemathesis"
    done = subprocess.run(
        [
            str(schemathesis),
            "run",
            f"{serve.root_url}/openapi.json",
            "--header",
            f"Authorization: Bearer {KEY}",
            "--checks",
            "all",
            "--exclude-checks",
            EXCLUDED_CHECKS,
            "--max-examples",
            str(MAX_EXAMPLES),
            "--workers",
            "1",
            "--wait-for-schema",
            "30",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
    )
    report = done.stdout[-12000:] + done.stderr[-4000:]
    assert done.returncode == 0, report
    assert "Tested: 10" in done.stdout, report  # every operation of the document
    # A crash the client never saw (e.g. inside a streamed body) still leaves a traceback.
    log = serve.log_text()
    assert "Traceback" not in log, log[-6000:]
