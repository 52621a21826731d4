"""The K-shot NAS Kubeflow pipelines: the DAG, the K sweep, local runs, compile/upload/run."""
