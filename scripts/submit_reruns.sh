#!/usr/bin/env bash
# Compile the K-shot NAS pipeline once and submit one Kubeflow Pipelines run per K.
#
#   scripts/submit_reruns.sh K_VALUES [kshot pipeline run options …]
#
# K_VALUES is one K or a comma-separated list ("8" or "1,2,4,8"). The host comes from $KFP_HOST,
# the bearer token from $KFP_TOKEN: in the rerun workflow a short-lived token minted through
# Workload Identity Federation, or the repository secret of that name where none is set up.
# $KSHOT_STEP_IMAGE / $KSHOT_JOB_IMAGE (or $KSHOT_IMAGE for both) name the images compiled in.
# Extra arguments go to every `kshot pipeline run` (e.g. --experiment NAME, --set epochs=50).
set -euo pipefail

if [[ $# -lt 1 ]]; then
  echo "usage: $0 K_VALUES [kshot pipeline run options ...]" >&2
  exit 2
fi
k_list="${1//[[:space:]]/}"
shift
: "${KFP_HOST:?set KFP_HOST to the Kubeflow Pipelines endpoint}"
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

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
package="$scratch/pipeline.yaml"
"$python" -m kshot.cli pipeline compile --output "$package"

revision="${GITHUB_SHA:-local}"
for k in "${k_values[@]}"; do
  KF_PIPELINES_TOKEN="${KFP_TOKEN:-}" "$python" -m kshot.cli pipeline run \
    --host "$KFP_HOST" --package "$package" --run-name "kshot-nas-k${k}-${revision:0:7}" \
    --set "k=${k}" "$@"
done
