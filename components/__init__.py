"""KFP components of the K-shot NAS pipeline, one per stage, thin over the :mod:`kshot` library.

:mod:`kshot.components.stages` defines the components, :mod:`kshot.components.runtime` what they
share when they run (config, artifact URIs, launching a job) and :mod:`kshot.components.reports`
what they show in the Kubeflow Pipelines UI.
"""
