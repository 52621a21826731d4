"""K-shot NAS (Su et al., ICML 2021): K-shot supernets, the simplex-net, alternating training,
NSGA-II search with BN recalibration, retraining and ranking against NAS-Bench-201.

The library imports no Kubeflow code; the KFP components and pipelines live in
:mod:`kshot.components` and :mod:`kshot.pipeline`.
"""

__version__ = "0.1.0"
