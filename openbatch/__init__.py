"""OpenBatch shared core: the contract every program speaks.

Wire objects (OpenAI, snake_case), JSONL line models, validation, storage and the
object layout live here. Nothing in this package imports a program, a web framework,
an HTTP client or kopf; an import-linter contract keeps it so.
"""

__version__ = "0.1.0"
