"""The `openbatch` command: the composition root above the programs.

It is the only code that knows more than one program; each subcommand imports its
program lazily, so `openbatch run` never loads the API shim or the operator.
"""
