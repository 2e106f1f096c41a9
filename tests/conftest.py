"""Shared pytest configuration: fixtures live in tests/fixtures/ as plugins."""

pytest_plugins = [
    "tests.fixtures.s3",
    "tests.fixtures.model_sim",
    "tests.fixtures.llama",
    "tests.fixtures.kube",
]
