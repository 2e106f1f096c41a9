"""Shared pytest configuration: fixtures live in tests/fixtures/ as plugins."""

import pytest

pytest_plugins = [
    "tests.fixtures.s3",
    "tests.fixtures.model_sim",
    "tests.fixtures.llama",
    "tests.fixtures.kube",
    "tests.fixtures.shim",
]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-cluster",
        action="store_true",
        help="run tests marked `cluster` against the real cluster in $KUBECONFIG (e.g. kind)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-cluster"):
        return
    skip = pytest.mark.skip(
        reason="needs a real Kubernetes cluster (CRD validation, CEL, kubectl explain); "
        "opt in with --run-cluster and KUBECONFIG pointing at e.g. a kind cluster"
    )
    for item in items:
        if "cluster" in item.keywords:
            item.add_marker(skip)
