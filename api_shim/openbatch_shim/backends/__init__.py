"""Where batches live: BatchJob CRs on Kubernetes, or SQLite and runner subprocesses locally."""
