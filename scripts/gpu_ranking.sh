#!/usr/bin/env bash
# One seed of the ranking experiment at the paper's scale, sized for a short slot on one GPU:
# arms A (one-shot, K = 1) and C (learned K = 8, equal supernet updates) of
# kshot/configs/ranking-full.yaml (NAS-Bench-201's C = 16, N = 5 on 32x32 CIFAR-10, its
# weight-sharing recipe, m = 16, BN recalibrated on 2,048 images) with as few epochs as fit, on the
# same 500 seeded paths, every metric beside counting parameters and FLOPs. One seed is a data
# point, not a verdict.
#
#   scripts/gpu_ranking.sh CIFAR10 OUT [kshot --set overrides …]
#
# CIFAR10 is a CIFAR-10 folder or parquet; OUT receives ranking_gpu.json (rewritten after each
# run), one record and one per-path CSV per run under OUT/ranking_gpu/, and the runs' artifacts
# under OUT/runs (a rerun resumes them). EPOCHS (default 6, 1 of them warmup) and PATHS (default
# 500) size the runs; extra arguments override config keys, e.g. to rehearse it on a CPU:
#
#   EPOCHS=1 PATHS=20 scripts/gpu_ranking.sh CIFAR10 /tmp/rehearsal --set device=cpu \
#       --set train_subset=640 --set channels=4 --set cells=1 --set bn_images=64 \
#       --set bn_batch_size=64 --set top_n=[5,10] --set num_threads=1
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: $0 CIFAR10 OUT [--set KEY=VALUE ...]" >&2
  exit 2
fi
data="$1"
out="$2"
shift 2
epochs="${EPOCHS:-6}"
paths="${PATHS:-500}"
for value in "$epochs" "$paths"; do
  if ! [[ "$value" =~ ^[1-9][0-9]*$ ]]; then
    echo "$0: EPOCHS and PATHS must be positive integers, got '$value'" >&2
    exit 2
  fi
done
config="$(python -c 'import kshot.configs, pathlib; print(pathlib.Path(kshot.configs.__file__).parent / "ranking-full.yaml")')"

kshot experiment ranking --config "$config" \
  --set dataset="$data" --set epochs="$epochs" --set warmup_epochs=1 \
  --set rank_paths="$paths" --set simplex_lr=0.01 \
  --arms A,C --seeds 0 --workdir "$out/runs" --out "$out/ranking_gpu.json" "$@"
