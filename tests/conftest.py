"""Shared fixtures: tiny configurations, the digits split, and the GCS emulator plugin."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["tests.gcs"]

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """A path under ``../shared/data``; skips the test when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: real data for this test lives in ../shared/data beside the "
                    "project (CI has it)")
    return path
