"""An OpenAI-compatible model-server simulator: `openbatch sim` / `python -m openbatch_sim`.

For trying OpenBatch without a model server, for capacity tests, and for OpenBatch's own
tests and benchmarks (they use this very module). See `openbatch_sim.server`.
"""
