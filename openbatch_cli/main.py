"""`openbatch <command>`: dispatch to the program that implements the command."""

import sys
from collections.abc import Callable, Sequence

from openbatch import __version__

HELP = """usage: openbatch <command> [options]
       openbatch --version

commands:
  serve      serve OpenAI's Files and Batches API on this machine (the embedded default)
  run        process a batch input file against model servers (the runner)
  finalize   join the committed parts of a (sharded) run into output and error files
  sim        run an OpenAI-compatible model-server simulator (for trying and load tests)
  version    print the version

`openbatch <command> --help` describes each command's options.
"""


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


def _version(argv: Sequence[str]) -> int:
    sys.stdout.write(f"openbatch {__version__}\n")
    return 0


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "serve": _serve,
    "sim": _sim,
    "run": _run,
    "finalize": _finalize,
    "version": _version,
}


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
    return command(args[1:])


if __name__ == "__main__":
    sys.exit(main())
