"""The OpenBatch runner: process one batch file (or one shard of it) against model servers.

Crash-safe and exactly-once in its output: results are committed in parts to object
storage (or a local dir) and a rerun with the same work dir skips every committed line.
"""
