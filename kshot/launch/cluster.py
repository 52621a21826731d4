"""What the launcher reads from the cluster before it renders a job: client, pod defaults, Trainer.

:func:`default_api_client` connects with the in-cluster config, else the kubeconfig.

Pod placement (GPU tolerations, node selector, service account) comes from the caller or from the
``kshot-launch-defaults`` ConfigMap in the namespace (:func:`load_launch_defaults`), which
``manifests/`` installs and its GPU overlay patches. Without the ConfigMap the launch is refused
(the pods would otherwise run as the namespace's default service account, without GPU
tolerations); ``launch_defaults=None`` opts out.

A TrainJob is rendered for the cluster's Trainer release, unless the caller names it
(:func:`detect_trainer_version`): read from the TrainJob schema (which spec field takes per-job pod
changes) of the CRD (``apiextensions.k8s.io``) or, where reading CRDs is forbidden, of the API
server's OpenAPI v3 document.
"""

from __future__ import annotations

import json
import os
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from urllib3.exceptions import HTTPError

from kshot.launch.jobs import JOB_KINDS
from kshot.launch.kube_api import REQUEST_TIMEOUT, api_failure
from kshot.launch.pods import validate_pod_overrides
from kshot.launch.spec import LaunchError
from kshot.launch.trainjob import TRAINER_VERSIONS

__all__ = [
    "default_api_client",
    "load_launch_defaults",
    "detect_trainer_version",
    "LaunchDefaultsUnavailable",
    "LAUNCH_DEFAULTS_CONFIGMAP",
    "TRAINJOB_CRD",
]

LAUNCH_DEFAULTS_CONFIGMAP = "kshot-launch-defaults"
TRAINJOB_CRD = "trainjobs.trainer.kubeflow.org"


class LaunchDefaultsUnavailable(LaunchError):
    """The launch-defaults ConfigMap could not be read: missing, forbidden, or no cluster."""


def default_api_client() -> client.ApiClient:
    """The cluster's client: in-cluster config, else the kubeconfig.

    Raises:
        LaunchError: neither is there.
    """
    try:
        config.load_incluster_config()
    except ConfigException:
        try:
            # $KUBECONFIG as it is now (the client reads it once, when imported)
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None)
        except (ConfigException, OSError) as error:
            raise LaunchError(
                f"no cluster credentials: neither in-cluster config nor a kubeconfig ({error})"
            ) from error
    return client.ApiClient()


def load_launch_defaults(
    api_client: client.ApiClient, namespace: str, name: str = LAUNCH_DEFAULTS_CONFIGMAP
) -> dict[str, Any]:
    """Pod overrides from the ConfigMap ``name`` in ``namespace``.

    Each data key (``tolerations``, ``nodeSelector``, ``serviceAccountName``, ``resources``,
    ``imagePullSecrets``, ``volumes``, ``volumeMounts``) holds YAML.

    Args:
        api_client: the cluster.
        namespace: where the jobs run.
        name: the ConfigMap.

    Returns:
        The validated overrides.

    Raises:
        LaunchDefaultsUnavailable: the ConfigMap is missing (with how to install it), reading it
            is forbidden or the API server cannot be reached.
        LaunchError: its content is malformed.
    """
    try:
        config_map = client.CoreV1Api(api_client).read_namespaced_config_map(
            name, namespace, _request_timeout=REQUEST_TIMEOUT
        )
    except ApiException as error:
        if error.status == 404:
            raise LaunchDefaultsUnavailable(
                f"ConfigMap {namespace}/{name} is missing: without it the job's pods would run "
                "as the namespace's default service account, without GPU tolerations. Install "
                f"it with `kubectl apply -k manifests/overlays/gpu` (or manifests/base) with "
                f"namespace {namespace!r}, or launch without defaults on purpose "
                "(launch_defaults=None)"
            ) from error
        raise LaunchDefaultsUnavailable(
            api_failure(error, f"read ConfigMap {name}", namespace)
        ) from error
    except (HTTPError, OSError) as error:
        raise LaunchDefaultsUnavailable(
            f"could not read ConfigMap {namespace}/{name}: the Kubernetes API server is "
            f"unreachable ({error})"
        ) from error
    try:
        overrides = {key: yaml.safe_load(text) for key, text in (config_map.data or {}).items()}
    except yaml.YAMLError as error:
        raise LaunchError(f"ConfigMap {namespace}/{name} holds invalid YAML: {error}") from error
    try:
        return validate_pod_overrides(overrides)
    except LaunchError as error:
        raise LaunchError(f"ConfigMap {namespace}/{name}: {error}") from error


def detect_trainer_version(api_client: client.ApiClient) -> str:
    """The Trainer release a TrainJob must be rendered for, from the cluster's TrainJob schema.

    Reads the CRD (``apiextensions.k8s.io/v1``); where that is forbidden, as for a Kubeflow
    profile's ``default-editor``, the same schema as the API server publishes it in its OpenAPI v3
    document (readable by every authenticated user). ``spec.runtimePatches`` means v2.2 or later
    (rendered as v2.3), ``spec.podTemplateOverrides`` v2.1.

    Args:
        api_client: the cluster.

    Returns:
        A key of :data:`kshot.launch.trainjob.TRAINER_VERSIONS`.

    Raises:
        LaunchError: when the Trainer is not installed, its schema cannot be read, or it is of a
            release this launcher does not render for.
    """
    try:
        spec_fields = _trainjob_spec_fields_from_crd(api_client)
    except ApiException as error:
        if error.status == 404:
            raise LaunchError(
                f"the cluster has no CustomResourceDefinition {TRAINJOB_CRD}: install the "
                "Kubeflow Trainer (v2.1 or later) or use the pytorchjob backend"
            ) from error
        if error.status != 403:
            raise LaunchError(
                f"could not read CustomResourceDefinition {TRAINJOB_CRD}: {error.status} "
                f"{error.reason}; name the Trainer version instead (--trainer-version)"
            ) from error
        spec_fields = _trainjob_spec_fields_from_openapi(api_client)
    for release, api in sorted(TRAINER_VERSIONS.items(), reverse=True):
        if api in spec_fields:
            return release
    raise LaunchError(
        f"the cluster's TrainJob has neither spec.runtimePatches nor spec.podTemplateOverrides "
        f"(spec fields: {', '.join(sorted(spec_fields)) or 'none'}): a Trainer release before "
        f"v2.1; supported: {', '.join(TRAINER_VERSIONS)}"
    )


def _trainjob_spec_fields_from_crd(api_client: client.ApiClient) -> set[str]:
    # Read as plain JSON: the client's models would rebuild the whole schema as objects.
    response = client.ApiextensionsV1Api(api_client).read_custom_resource_definition(
        TRAINJOB_CRD, _preload_content=False, _request_timeout=REQUEST_TIMEOUT
    )
    crd = json.loads(response.data)
    fields: set[str] = set()
    for version in crd["spec"]["versions"]:
        if version.get("served") and version["name"] == JOB_KINDS["trainjob"].version:
            schema = (version.get("schema") or {}).get("openAPIV3Schema") or {}
            spec_schema = (schema.get("properties") or {}).get("spec") or {}
            fields |= set(spec_schema.get("properties") or {})
    return fields


def _trainjob_spec_fields_from_openapi(api_client: client.ApiClient) -> set[str]:
    kind = JOB_KINDS["trainjob"]
    path = f"/openapi/v3/apis/{kind.group}/{kind.version}"
    try:
        document, _, _ = api_client.call_api(
            path,
            "GET",
            header_params={"Accept": "application/json"},
            response_type="object",
            auth_settings=["BearerToken"],
            _return_http_data_only=False,
            _request_timeout=REQUEST_TIMEOUT,
        )
    except ApiException as error:
        raise LaunchError(
            f"could not read the TrainJob schema (CustomResourceDefinition {TRAINJOB_CRD}: "
            f"forbidden; {path}: {error.status} {error.reason}); name the Trainer version "
            "instead (--trainer-version)"
        ) from error
    for schema in ((document or {}).get("components") or {}).get("schemas", {}).values():
        kinds = schema.get("x-kubernetes-group-version-kind") or []
        if any(k.get("group") == kind.group and k.get("kind") == "TrainJob" for k in kinds):
            return set(((schema.get("properties") or {}).get("spec") or {}).get("properties", {}))
    return set()
