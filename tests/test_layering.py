"""The library imports no Kubeflow code: only kshot.components and kshot.pipeline do."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

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
