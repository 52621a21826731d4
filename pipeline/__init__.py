"""The K-shot NAS Kubeflow pipelines: the DAG, the K sweep, local runs, compile/upload/run."""

TOKEN_ENV = "KF_PIPELINES_TOKEN"
"""The environment variable with the bearer token for a Kubeflow Pipelines host (here, not in
:mod:`kshot.pipeline.client`, so that ``kshot --help`` need not import kfp to name it)."""
