#!/usr/bin/env bash
# Build the project's two images (images/README.md) with docker or podman, then print each one's
# build time and size.
#
# usage: images/build.sh [kshot|kshot-cpu ...]      (default: both)
#
#   KSHOT_ENGINE      the engine command (default: docker if its daemon answers, else podman),
#                     e.g. "podman --runtime runc --cgroup-manager cgroupfs"
#   KSHOT_BUILD_ARGS  more arguments for each build, e.g. "--network=host --pull=never"
#   REGISTRY          image name prefix (default: localhost)
#   TAG               image tag (default: test, which tests/test_images.py runs by default)
#
# The images are labelled with the repository URL (git remote origin), the commit and the version
# in pyproject.toml.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

if [[ -n "${KSHOT_ENGINE:-}" ]]; then
    read -r -a engine <<<"$KSHOT_ENGINE"
elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    engine=(docker)
elif command -v podman >/dev/null; then
    engine=(podman)
else
    echo "images/build.sh: neither a docker daemon nor podman is available (set KSHOT_ENGINE)" >&2
    exit 2
fi
read -r -a extra <<<"${KSHOT_BUILD_ARGS:-}"
registry="${REGISTRY:-localhost}"
tag="${TAG:-test}"
names=("$@")
[[ ${#names[@]} -gt 0 ]] || names=(kshot kshot-cpu)

source_url="$(git remote get-url origin 2>/dev/null || true)"
if [[ "$source_url" =~ ^git@([^:]+):(.+)$ ]]; then
    source_url="https://${BASH_REMATCH[1]}/${BASH_REMATCH[2]}"
fi
source_url="${source_url%.git}"
revision="$(git rev-parse HEAD)"
if [[ -n "$(git status --porcelain --untracked-files=no)" ]]; then
    revision="${revision}-dirty"
fi
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)"

for name in "${names[@]}"; do
    case "$name" in
        kshot) dockerfile=images/Dockerfile ;;
        kshot-cpu) dockerfile=images/Dockerfile.cpu ;;
        *) echo "images/build.sh: unknown image '$name' (kshot or kshot-cpu)" >&2; exit 2 ;;
    esac
    image="$registry/$name:$tag"
    start=$SECONDS
    "${engine[@]}" build "${extra[@]}" -f "$dockerfile" -t "$image" \
        --build-arg SOURCE="$source_url" --build-arg REVISION="$revision" \
        --build-arg VERSION="$version" .
    size="$("${engine[@]}" image inspect --format '{{.Size}}' "$image")"
    echo "built $image from $dockerfile in $((SECONDS - start)) s, $((size / 1000000)) MB"
done
