#!/usr/bin/env bash
# Rerun an uploaded K-shot NAS pipeline version: one Kubeflow Pipelines run per K.
#
#   scripts/submit_reruns.sh K_VALUES [kshot pipeline run options …]
#
# K_VALUES is one K or a comma-separated list ("8" or "1,2,4,8"). The pipeline is $PIPELINE, its
# name or id as `kshot pipeline upload` printed it, and the version $PIPELINE_VERSION, a name or
# an id (empty: the newest); nothing is compiled here, so the run uses the images that pipeline was
# compiled with. The host comes from $KFP_HOST, the bearer token from $KFP_TOKEN: in the rerun
# workflow a short-lived token minted through Workload Identity Federation, or the repository
# secret of that name where none is set up. Extra arguments go to every `kshot pipeline run`
# (e.g. --experiment NAME, --set epochs=50, --set dataset=gs://BUCKET/cifar10).
set -euo pipefail

if [[ $# -lt 1 ]]; then
  echo "usage: $0 K_VALUES [kshot pipeline run options ...]" >&2
  exit 2
fi
k_list="${1//[[:space:]]/}"
shift
: "${KFP_HOST:?set KFP_HOST to the Kubeflow Pipelines endpoint}"
: "${PIPELINE:?set PIPELINE to the uploaded pipeline (its name or id)}"
python="${PYTHON:-python}"

IFS=',' read -r -a k_values <<< "$k_list"
if [[ ${#k_values[@]} -eq 0 ]]; then
  echo "$0: no K given" >&2
  exit 2
fi
for k in "${k_values[@]}"; do
  if ! [[ "$k" =~ ^[1-9][0-9]*$ ]]; then
    echo "$0: K must be a positive integer, got '$k' in '$k_list'" >&2
    exit 2
  fi
done

# Kubeflow Pipelines ids are UUIDs; anything else is a name.
uuid='^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$'
if [[ "$PIPELINE" =~ $uuid ]]; then
  source=(--pipeline-id "$PIPELINE")
  label="kshot"
else
  source=(--name "$PIPELINE")
  label="$PIPELINE"
fi
version="${PIPELINE_VERSION:-}"
if [[ -z "$version" ]]; then
  :
elif [[ "$version" =~ $uuid ]]; then
  source+=(--version-id "$version")
else
  source+=(--version "$version")
fi

revision="${GITHUB_SHA:-local}"
for k in "${k_values[@]}"; do
  KF_PIPELINES_TOKEN="${KFP_TOKEN:-}" "$python" -m kshot.cli pipeline run \
    --host "$KFP_HOST" "${source[@]}" --run-name "${label}-k${k}-${revision:0:7}" \
    --set "k=${k}" "$@"
done
