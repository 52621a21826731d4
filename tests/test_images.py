"""What the images ship is what the suite tests, and the built images run.

The version tests run with the suite: the lock (images/constraints.txt), the Dockerfiles,
pyproject.toml and the installed packages the suite runs on name one torch release.

The tests marked ``image`` run in each built image (images/build.sh) as the pods do: uid 1000, a
read-only root file system, tmpfs on /tmp and $HOME. They need docker or podman and skip, saying
which, where neither or no built image is present; they import nothing but the standard library,
pytest and packaging, so a machine without the project installed runs them with
``python -m pytest --noconftest -m image tests/test_images.py`` (.github/workflows/images.yml).

    KSHOT_TEST_IMAGES         the images, space-separated (default: localhost/kshot:test
                              localhost/kshot-cpu:test, what images/build.sh tags); images
                              named here must be present: the tests fail instead of skipping
    KSHOT_ENGINE              the engine command (default: docker if its daemon answers, else podman)
    KSHOT_CONTAINER_RUN_ARGS  more arguments for each run (e.g. "--network=host")
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "images" / "constraints.txt"
GPU_DOCKERFILE = ROOT / "images" / "Dockerfile"
CPU_DOCKERFILE = ROOT / "images" / "Dockerfile.cpu"
# The installer's own tools: they come with the Python installation, not from the project's
# requirements (pip freeze leaves them out for the same reason).
INSTALLER_TOOLS = {"pip", "setuptools", "wheel"}
IMAGE_UID = 1000


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def pins(path: Path) -> dict[str, str]:
    """Package (canonical name) → pinned version of a requirements / constraints file."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", line
            found[canonicalize_name(requirement.name)] = specifier.version
    return found


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------------------------------------
# One set of versions: tested, locked, shipped


def test_the_suite_runs_on_the_locked_versions() -> None:
    """Every locked package that is installed here has the lock's release (a CPU or CUDA build of
    torch alike: the local version, e.g. ``+cpu``, is the build, not the release)."""
    lock = pins(LOCK)
    assert _installed("torch") and _installed("torchvision"), "the suite runs on torch"
    differ = {
        name: (version, installed)
        for name, version in lock.items()
        if name not in INSTALLER_TOOLS
        and (installed := _installed(name)) is not None
        and Version(installed).public != Version(version).public
    }
    assert not differ, (
        f"installed ≠ {LOCK.relative_to(ROOT)} (locked, installed): {differ}; install with "
        "`pip install --constraint images/constraints.txt -e '.[test]'`, or resolve the lock "
        "again (images/README.md) and commit it"
    )


def test_pyproject_claims_no_torch_older_than_the_tested_one() -> None:
    """The floors of torch and torchvision are the locked (tested) releases' minor versions."""
    lock = pins(LOCK)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for line in pyproject["project"]["dependencies"]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        if name in ("torch", "torchvision"):
            (floor,) = [s.version for s in requirement.specifier if s.operator == ">="]
            tested = Version(lock[name])
            assert Version(floor).release[:2] == tested.release[:2], (line, lock[name])


def test_no_dockerfile_names_a_torch_release_of_its_own() -> None:
    """The lock is the one place for torch's release: no torch-bearing base image, no pin."""
    for dockerfile in (GPU_DOCKERFILE, CPU_DOCKERFILE):
        steps = instructions(dockerfile)
        (base,) = [args for instruction, args in steps if instruction == "FROM"]
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", base), base
        for _, args in steps:
            assert not re.search(r"torch(vision)?\s*[=<>~!]=?\s*\d", args), (dockerfile, args)
    assert "--python-version 3.11" in LOCK.read_text()  # the bases' Python


def test_the_gpu_image_installs_the_locked_cuda_build_and_checks_it() -> None:
    steps = instructions(GPU_DOCKERFILE)
    (torch_install,) = [args for _, args in steps if re.search(r"pip install [^&]*torch", args)]
    assert "--constraint images/constraints.txt" in torch_install
    assert "--index-url" not in torch_install and "--extra-index-url" not in torch_install
    assert "sys.exit(None if torch.version.cuda else" in torch_install


def test_the_step_image_takes_only_the_cpu_build_and_fails_on_a_cuda_one() -> None:
    steps = instructions(CPU_DOCKERFILE)
    (torch_install,) = [args for _, args in steps if re.search(r"pip install [^&]*torch", args)]
    assert "--index-url https://download.pytorch.org/whl/cpu" in torch_install
    assert "--extra-index-url" not in torch_install  # no fallback to PyPI's CUDA wheels
    assert "--no-deps" in torch_install
    assert '"torch==${torch}+cpu" "torchvision==${torchvision}+cpu"' in torch_install
    assert "torch=\"$(sed -n 's/^torch==//p' images/constraints.txt)\"" in torch_install
    installs = [args for instruction, args in steps if "pip install" in args]
    assert re.search(r"if torch\.version\.cuda else", installs[-1]), installs[-1]


# ---------------------------------------------------------------------------------------------
# The built images, run as the pods run them


@cache
def _engine() -> list[str] | None:
    if os.environ.get("KSHOT_ENGINE"):
        return shlex.split(os.environ["KSHOT_ENGINE"])
    if shutil.which("docker"):
        answer = subprocess.run(["docker", "info"], capture_output=True, check=False)
        if answer.returncode == 0:
            return ["docker"]
    if shutil.which("podman"):
        return ["podman"]
    return None


IMAGES = os.environ.get("KSHOT_TEST_IMAGES", "localhost/kshot:test localhost/kshot-cpu:test")


def _labels(image: str) -> dict[str, str]:
    """The image's labels. Without an engine or the image the test skips, or fails where
    KSHOT_TEST_IMAGES names the images: then they were meant to be there."""
    missing = pytest.fail if "KSHOT_TEST_IMAGES" in os.environ else pytest.skip
    engine = _engine()
    if engine is None:
        missing("no container engine: neither a docker daemon nor podman (or KSHOT_ENGINE)")
    found = subprocess.run(
        [*engine, "image", "inspect", "--format", "{{json .Config.Labels}}", image],
        capture_output=True,
        text=True,
        check=False,
    )
    if found.returncode != 0:
        missing(f"image {image} is not built (images/build.sh, or set KSHOT_TEST_IMAGES)")
    return json.loads(found.stdout) or {}


def _run(image: str, *command: str, out: Path | None = None) -> subprocess.CompletedProcess:
    """``command`` in ``image`` as uid 1000 on a read-only root with tmpfs /tmp and $HOME, with
    ``out`` (if any) mounted read-write at /out."""
    mount = ["-v", f"{out}:/out"] if out else []
    return subprocess.run(
        [
            *_engine(),
            "run",
            "--rm",
            "--user",
            f"{IMAGE_UID}:{IMAGE_UID}",
            "--read-only",
            "--tmpfs",
            "/tmp",
            "--tmpfs",
            "/home/kshot",
            *mount,
            *shlex.split(os.environ.get("KSHOT_CONTAINER_RUN_ARGS", "")),
            image,
            *command,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


image_param = pytest.mark.parametrize("image", IMAGES.split())


@pytest.mark.image
@image_param
def test_the_image_is_labelled_and_runs_as_uid_1000_on_a_read_only_root(image: str) -> None:
    labels = _labels(image)
    assert labels.get("org.opencontainers.image.title") in ("kshot", "kshot-cpu"), labels
    assert labels.get("org.opencontainers.image.revision"), labels
    assert labels.get("org.opencontainers.image.version"), labels
    assert "org.opencontainers.image.source" in labels, labels
    probe = "id -u; touch /opt/kshot/x 2>/dev/null && echo writable || echo read-only; touch /tmp/x"
    done = _run(image, "sh", "-c", probe)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(IMAGE_UID), "read-only"]


@pytest.mark.image
@image_param
def test_the_image_holds_the_locked_torch_build_of_its_kind(image: str) -> None:
    """The locked torch release: the CUDA build in the GPU image, the CPU build in the step image."""
    gpu = _labels(image)["org.opencontainers.image.title"] == "kshot"
    done = _run(
        image,
        "python",
        "-c",
        "import json, torch, torchvision; print(json.dumps([torch.__version__, "
        "torch.version.cuda, torchvision.__version__]))",
    )
    assert done.returncode == 0, done.stderr
    torch_version, cuda, torchvision_version = json.loads(done.stdout)
    lock = pins(LOCK)
    assert Version(torch_version).public == lock["torch"]
    assert Version(torchvision_version).public == lock["torchvision"]
    assert (cuda is not None) == gpu, (image, torch_version, cuda)


@pytest.mark.image
@image_param
def test_the_cli_and_the_worker_entrypoint_start(image: str) -> None:
    _labels(image)
    done = _run(image, "kshot", "--help")
    assert done.returncode == 0, done.stderr
    assert "stage" in done.stdout and "pipeline" in done.stdout
    done = _run(image, "python", "-m", "kshot.worker", "--help")
    assert done.returncode == 0, done.stderr
    assert "{split,warmup,train," in done.stdout.replace(" ", "")


# Split, warmup and train on the tiny config, the worker entrypoint's split beside the CLI's, then
# the checkpoints read back in the image (torch.load with weights_only=True).
_STAGES = """
set -e
umask 000
kshot stage split --config digits-tiny --output split=/out/split.json
python -m kshot.worker split --config-json "$(python -c 'import json, yaml, importlib.resources as r
print(json.dumps(yaml.safe_load((r.files("kshot.configs") / "digits-tiny.yaml").read_text())))')" \
    --output split=/out/worker-split.json > /out/worker.json
kshot stage warmup --config digits-tiny --input split=/out/split.json --output checkpoint=/out/warmup
kshot stage train --config digits-tiny --input split=/out/split.json \
    --input checkpoint=/out/warmup --output checkpoint=/out/supernet --output curves=/out/curves.json
python -c 'import json
from kshot.train.checkpoint import load_latest
print(json.dumps({s: load_latest(f"/out/{s}")["step"] for s in ("warmup", "supernet")}))'
"""


@pytest.mark.image
@image_param
def test_split_warmup_and_train_run_on_the_tiny_config(image: str, tmp_path: Path) -> None:
    _labels(image)
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)  # written by uid 1000 in the container
    done = _run(image, "sh", "-c", _STAGES, out=out)
    assert done.returncode == 0, done.stdout + done.stderr
    steps = json.loads(done.stdout.strip().splitlines()[-1])
    # digits: 1,797 images, a quarter to test, valid_fraction 0.5 of the rest; batch 64
    split = json.loads((out / "split.json").read_text())
    assert [len(split[part]) for part in ("train", "valid", "test")] == [899, 449, 449]
    assert (out / "worker-split.json").read_bytes() == (out / "split.json").read_bytes()
    assert json.loads((out / "worker.json").read_text())["stage"] == "split"
    per_epoch = 899 // 64
    assert steps == {"warmup": 5 * per_epoch, "supernet": 60 * per_epoch}
    curves = json.loads((out / "curves.json").read_text())
    assert curves["warmup_epochs"] == 5
    assert curves["epoch"][-1] == 60
    losses = [v for v in curves["supernet_loss"] if v is not None]
    assert losses and losses[-1] < losses[0]


def test_every_package_of_the_tree_is_installed() -> None:
    """pyproject lists its packages by name (components/ and pipeline/ install under kshot.), so
    a new folder of kshot/ would be left out of a wheel, and out of the images, unless named."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    folders = {"kshot": ROOT / "kshot"} | {
        name: ROOT / folder for name, folder in setuptools["package-dir"].items()
    }
    found = {
        ".".join([name, *init.parent.relative_to(root).parts])
        for name, root in folders.items()
        for init in root.rglob("__init__.py")
    }
    assert found - listed == set(), "packages missing from pyproject's [tool.setuptools] packages"
