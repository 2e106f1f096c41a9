"""`openbatch <command>`: dispatch to the program that implements the command.

Each program is imported lazily, per command, and needs its extra's dependencies. When one
is missing the command says which extra to install instead of printing a traceback.
"""

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from openbatch import __version__

DISTRIBUTION = "openbatch-api"
EXIT_MISSING_EXTRA = 2  # like a usage error: running it again cannot help, installing can

HELP = """usage: openbatch <command> [options]
       openbatch --version

commands:
  serve      serve OpenAI's Files and Batches API on this machine (the embedded default)
  submit     upload a batch input file to an OpenAI-compatible server, run it, download results
  run        process a batch input file against model servers (the runner)
  finalize   join the committed parts of a (sharded) run into output and error files
  sim        run an OpenAI-compatible model-server simulator (for trying and load tests)
  version    print the version

`openbatch <command> --help` describes each command's options.
"""

# The top-level modules each extra brings (its dependencies and its program). An
# ImportError naming one of them means the extra is not installed.
EXTRA_MODULES: dict[str, frozenset[str]] = {
    "runner": frozenset({"openbatch_runner", "aiohttp", "httptools", "uvloop"}),
    "operator": frozenset(
        {"openbatch_operator", "kopf", "kubernetes", "prometheus_client", "yaml"}
    ),
    "shim": frozenset(
        {
            "openbatch_shim",
            "fastapi",
            "starlette",
            "uvicorn",
            "python_multipart",
            "multipart",
            "prometheus_client",
            "kubernetes",
            "openbatch_runner",
            "aiohttp",
            "httptools",
            "uvloop",
        }
    ),
    "client": frozenset({"openai", "httpx", "httpx2"}),
}


@dataclass(frozen=True)
class Command:
    run: Callable[[Sequence[str]], int]
    extra: str | None  # the extra whose dependencies it imports


def _run(argv: Sequence[str]) -> int:
    from openbatch_runner.cli import run_main

    return run_main(argv)


def _finalize(argv: Sequence[str]) -> int:
    from openbatch_runner.cli import finalize_main

    return finalize_main(argv)


def _serve(argv: Sequence[str]) -> int:
    from openbatch_cli.serve import main as serve_main

    return serve_main(argv)


def _sim(argv: Sequence[str]) -> int:
    from openbatch_sim.server import main as sim_main

    return sim_main(list(argv))


def _submit(argv: Sequence[str]) -> int:
    from openbatch_cli.submit import main as submit_main

    return submit_main(argv)


def _version(argv: Sequence[str]) -> int:
    sys.stdout.write(f"openbatch {__version__}\n")
    return 0


COMMANDS: dict[str, Command] = {
    "serve": Command(_serve, "shim"),
    "submit": Command(_submit, "client"),
    "sim": Command(_sim, "runner"),
    "run": Command(_run, "runner"),
    "finalize": Command(_finalize, "runner"),
    "version": Command(_version, None),
}


def missing_extra(exc: ImportError, extra: str) -> bool:
    """Whether `exc` is the extra's dependency (or program) not being installed."""
    name = exc.name or ""
    return name.partition(".")[0] in EXTRA_MODULES[extra]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write(HELP)
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        return _version(args[1:])
    command = COMMANDS.get(args[0])
    if command is None:
        sys.stderr.write(f"openbatch: unknown command {args[0]!r}\n\n{HELP}")
        return 2
    try:
        return command.run(args[1:])
    except ImportError as exc:
        if command.extra is None or not missing_extra(exc, command.extra):
            raise
        sys.stderr.write(
            f"openbatch {args[0]} needs the {command.extra} extra (missing module "
            f"{exc.name!r}): pip install '{DISTRIBUTION}[{command.extra}]'\n"
        )
        return EXIT_MISSING_EXTRA


if __name__ == "__main__":
    sys.exit(main())
