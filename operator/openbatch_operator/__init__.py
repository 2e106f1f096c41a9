"""The OpenBatch operator: reconciles BatchJob resources into isolated runner Jobs.

Handlers are thin kopf glue; decisions are the pure `reconcile`; child manifests come from
pure builders; all Kubernetes and storage I/O sits behind one small port.
"""
