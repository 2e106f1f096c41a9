"""OpenBatch's OpenAI-compatible API: the Files and Batches endpoints over a backend.

`create_app(settings)` builds the FastAPI app; `python -m openbatch_shim` serves it.
"""
