"""The library imports no Kubeflow code (only kshot.components and kshot.pipeline do), and its lower
layers import nothing above them."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import kshot


def test_library_modules_do_not_import_kfp():
    library = [
        m.name
        for m in pkgutil.walk_packages(kshot.__path__, "kshot.")
        if not m.name.startswith(("kshot.components", "kshot.pipeline"))
    ]
    assert "kshot.stages.train" in library and "kshot.launch.kube" in library
    code = (
        "import importlib, sys\n"
        f"for name in {library!r}:\n"
        "    importlib.import_module(name)\n"
        "assert 'kfp' not in sys.modules, sorted(m for m in sys.modules if m.startswith('kfp'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


# Package → the kshot modules it may import: itself and the layers below it. A search space is pure
# encoding, sampling and cost facts; the supernets (kshot.nn) are built on it, never the reverse.
# The data (kshot.data) reads the store and draws from the run's seeds, and knows nothing of the
# stages, the trainer or the launchers that use it. Training and evaluation are libraries the stages
# call; the experiments (kshot.experiments) and the launchers sit above the stages, and nothing
# below imports them; the stages import neither, nor the command line. The launchers run stages
# and read the config, never the command line that calls them (kshot.cli).
LOWER_LAYERS: dict[str, tuple[str, ...]] = {
    "kshot.storage": ("kshot.storage",),
    "kshot.config": ("kshot.config", "kshot.storage"),
    "kshot.spaces": ("kshot.config", "kshot.seeds", "kshot.spaces"),
    "kshot.nn": ("kshot.config", "kshot.seeds", "kshot.spaces", "kshot.nn"),
    "kshot.data": ("kshot.seeds", "kshot.storage", "kshot.data"),
    "kshot.eval": (
        "kshot.config",
        "kshot.seeds",
        "kshot.storage",
        "kshot.spaces",
        "kshot.nn",
        "kshot.eval",
    ),
    "kshot.train": (
        "kshot.config",
        "kshot.seeds",
        "kshot.storage",
        "kshot.distributed",
        "kshot.progress",
        "kshot.data",
        "kshot.spaces",
        "kshot.nn",
        "kshot.train",
    ),
    "kshot.stages": (
        "kshot.config",
        "kshot.seeds",
        "kshot.storage",
        "kshot.lease",
        "kshot.distributed",
        "kshot.progress",
        "kshot.data",
        "kshot.spaces",
        "kshot.nn",
        "kshot.train",
        "kshot.search",
        "kshot.eval",
        "kshot.export",
        "kshot.stages",
    ),
    "kshot.launch": ("kshot.config", "kshot.storage", "kshot.stages", "kshot.launch"),
}


def _kshot_imports(path: Path) -> set[str]:
    """Every kshot module a source file imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            if node.module == "kshot":  # from kshot import seeds
                found.update(f"kshot.{a.name}" for a in node.names)
            else:
                found.add(node.module)
    return {name for name in found if name == "kshot" or name.startswith("kshot.")}


def test_lower_layers_do_not_import_upward():
    root = Path(kshot.__file__).parent
    upward = []
    for package, allowed in LOWER_LAYERS.items():
        folder = root.joinpath(*package.split(".")[1:])
        files = sorted(folder.glob("*.py"))
        assert files, package
        for path in files:
            for name in sorted(_kshot_imports(path)):
                if not any(name == a or name.startswith(f"{a}.") for a in allowed):
                    upward.append(f"{path.relative_to(root.parent)} imports {name}")
    assert not upward, upward
