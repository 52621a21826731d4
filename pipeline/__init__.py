"""The K-shot NAS Kubeflow pipelines: the DAG, the K sweep, local runs, compile/upload/run.

The names here are what ``kshot --help`` and ``kshot pipeline run`` of an uploaded pipeline need
without importing kfp's DSL, the components or torch.
"""

PIPELINE_NAME = "kshot-nas"
"""The name of the K-shot NAS pipeline (:mod:`kshot.pipeline.pipeline`)."""
SWEEP_PIPELINE_NAME = "kshot-nas-k-sweep"
"""The name of the K-sweep pipeline (:mod:`kshot.pipeline.sweep`)."""

TOKEN_ENV = "KF_PIPELINES_TOKEN"
"""The environment variable with the bearer token for a Kubeflow Pipelines host."""
ENDPOINT_ENV = "KF_PIPELINES_ENDPOINT"
"""kfp's environment variable with the Kubeflow Pipelines host (``kfp.Client``'s default host)."""
SA_TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
"""kfp's environment variable naming a file that holds a token (a projected service-account token
in a Kubeflow notebook or pod)."""
SA_TOKEN_PATH = "/var/run/secrets/kubeflow/pipelines/token"
"""Where kfp reads that token by default in a pod (Kubeflow's ``access-ml-pipeline`` PodDefault
mounts it there)."""
