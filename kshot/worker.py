"""Entry point of every distributed process: ``torchrun … -m kshot.worker STAGE …``.

Joins the process group torchrun describes (gloo on CPU, NCCL on GPU), runs the stage on its
artifact URIs and leaves the group. Rank 0 writes the stage's outputs; the others compute their share.
"""

from __future__ import annotations

import argparse
import json
import sys

from kshot import distributed as dist
from kshot.config import ConfigError, load_config, parse_overrides
from kshot.stages import STAGES, run_stage

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kshot.worker", description=__doc__)
    p.add_argument("stage", choices=STAGES)
    p.add_argument("--config-json", default="{}", help="the run configuration as JSON")
    p.add_argument("--input", action="append", default=[], metavar="NAME=URI")
    p.add_argument("--output", action="append", default=[], metavar="NAME=URI")
    return p


def _die_with_parent() -> None:
    """Linux: end this worker when its launcher (torchrun's agent) dies, even by SIGKILL, so a
    restarted stage never races an orphan writing to the same checkpoint folder."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _die_with_parent()
    try:
        cfg = load_config(json.loads(args.config_json), sources=["--config-json"])
        inputs = parse_overrides(args.input, "--input")
        outputs = parse_overrides(args.output, "--output")
    except (ConfigError, json.JSONDecodeError) as e:
        print(f"kshot.worker: {e}", file=sys.stderr)
        return 2
    dist.init_from_env(cfg.device)
    main_rank = dist.is_main()  # after shutdown every process reads as rank 0
    try:
        result = run_stage(args.stage, cfg, inputs, outputs)
    finally:
        dist.shutdown()
    if main_rank:
        print(json.dumps({"stage": args.stage, "result": result}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
