"""`openbatch serve`: the whole product in one process on one machine (the embedded default).

The shim with its local backend (SQLite, runner subprocesses) on a loopback port. With no
model configured it starts the built-in model simulator (`openbatch sim`) so a newcomer gets
a completed batch without any model server; the banner says so.
"""

import argparse
import asyncio
import ipaddress
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    import uvicorn


def build_parser() -> argparse.ArgumentParser:
    from openbatch_shim.settings import OPENAI_COMPLETION_WINDOWS, default_data_dir

    p = argparse.ArgumentParser(
        prog="openbatch serve",
        description="Serve OpenAI's Files and Batches API on this machine: batches run as "
        "runner subprocesses against your model servers; state survives restarts.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (8000; 0: any)")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=default_data_dir(),
        help=f"where batches, files and logs are kept ({default_data_dir()})",
    )
    p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="a model and the base URL of an OpenAI-compatible server that serves it, e.g. "
        "llama=http://localhost:8080/v1; repeat for more models (or the same model on more "
        "servers)",
    )
    p.add_argument(
        "--models",
        type=Path,
        metavar="FILE",
        help='routing table JSON {"models": {"<name>": ["<base url>", ...]}}; merged with --model',
    )
    p.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="KEY=TENANT",
        help="accept this bearer key for that tenant; repeat for more. Without any, one "
        "anonymous tenant is served (any key or none) and only a loopback host is allowed",
    )
    p.add_argument(
        "--max-concurrent-batches",
        type=int,
        default=4,
        metavar="N",
        help="batches running at once; the rest wait in validating (4)",
    )
    p.add_argument(
        "--allow-completion-window",
        action="append",
        default=[],
        metavar="W",
        help=f"also accept this completion_window (e.g. 1h, 48h, 7d); OpenAI offers only "
        f"{', '.join(OPENAI_COMPLETION_WINDOWS)}",
    )
    return p


def _pairs(values: list[str], what: str) -> list[tuple[str, str]]:
    out = []
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise SystemExit(f"openbatch serve: {what} must look like NAME=VALUE, got {value!r}")
        out.append((name, rest))
    return out


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _start_simulator(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    (data_dir / "logs").mkdir(parents=True, exist_ok=True)
    stderr = (data_dir / "logs" / "simulator.log").open("ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "openbatch_sim",
            "--port",
            "0",
            "--slots",
            "64",
            "--exit-on-stdin-eof",
        ],
        stdin=subprocess.PIPE,  # the simulator exits when this closes: it dies with us
        stdout=subprocess.PIPE,
        stderr=stderr,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline().decode().strip()
        if line.startswith("READY "):
            return proc, line.split(" ", 1)[1] + "/v1"
        if not line and proc.poll() is not None:
            break
    raise SystemExit("openbatch serve: the built-in model simulator did not start")


async def _serve(server: "uvicorn.Server", host: str, port: int, banner: list[str]) -> None:
    """Run uvicorn (with its own signal handling) and print the banner once it listens."""
    task = asyncio.create_task(server.serve())
    while not server.started and not task.done():  # noqa: ASYNC110  # uvicorn has no event
        await asyncio.sleep(0.02)
    if task.done():
        await task
        raise SystemExit(f"openbatch serve: cannot listen on {host}:{port}")
    for srv in server.servers:
        for sock in srv.sockets:
            port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    sys.stderr.write("\n".join([*banner, f"  base URL: http://{shown}:{port}/v1", ""]))
    sys.stderr.flush()
    await task


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    keys = dict(_pairs(args.api_key, "--api-key"))
    if not keys and not _is_loopback(args.host):
        raise SystemExit(
            f"openbatch serve: refusing to serve {args.host} without --api-key: with no keys "
            "anyone who can reach the port could use it. Give --api-key KEY=TENANT, or listen "
            "on 127.0.0.1."
        )
    import uvicorn

    from openbatch.routing import parse_routing_table
    from openbatch_shim.app import create_app
    from openbatch_shim.memory import return_large_buffers_to_os
    from openbatch_shim.settings import OPENAI_COMPLETION_WINDOWS, BackendKind, ShimSettings

    data_dir: Path = args.data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    models: dict[str, list[str]] = {}
    if args.models is not None:
        for name, entry in parse_routing_table(args.models.read_bytes()).models.items():
            # Key references are a cluster feature (Secrets); locally only the URLs count.
            models[name] = list(entry.urls)
    for name, url in _pairs(args.model, "--model"):
        models.setdefault(name, []).append(url)
    simulator = None
    routing: Path | None = None
    sim_url: str | None = None
    if models:
        routing = data_dir / "models.json"
        routing.write_bytes(orjson.dumps({"models": models}, option=orjson.OPT_INDENT_2))
        parse_routing_table(routing.read_bytes())  # refuse bad URLs now, not in every runner
    else:
        simulator, sim_url = _start_simulator(data_dir)
    settings = ShimSettings(
        backend=BackendKind.LOCAL,
        host=args.host,
        port=args.port,
        data_dir=data_dir,
        api_keys=keys,
        models_file=routing,
        any_model_url=sim_url,
        max_concurrent_batches=args.max_concurrent_batches,
        allowed_completion_windows=[*OPENAI_COMPLETION_WINDOWS, *args.allow_completion_window],
    )
    return_large_buffers_to_os()
    app = create_app(settings)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning")
    server = uvicorn.Server(config)
    banner = [
        "openbatch serve: OpenAI's Batch API on this machine",
        f"  data dir: {data_dir}",
    ]
    if sim_url is not None:
        banner.append(
            f"  models:   any model name -> the built-in simulated model at {sim_url}"
            " (no --model given: replies are echoes; use --model NAME=URL for a real server)"
        )
    else:
        banner.append(
            "  models:   "
            + ", ".join(f"{name} -> {', '.join(urls)}" for name, urls in sorted(models.items()))
        )
    banner.append(
        "  tenants:  " + (", ".join(sorted(set(keys.values()))) if keys else "one anonymous tenant")
    )
    try:
        asyncio.run(_serve(server, args.host, args.port, banner))
    except KeyboardInterrupt:
        # uvicorn already shut down cleanly on SIGINT and re-raises it: no traceback.
        pass
    finally:
        if simulator is not None:
            simulator.terminate()
            simulator.wait(10)
    return 0
