"""Entry point of every distributed process: ``torchrun … -m kshot.worker STAGE …``.

Joins the process group torchrun describes (gloo on CPU, NCCL on GPU), runs the stage on its
artifact URIs and leaves the group. Rank 0 writes the stage's outputs; the others compute their share.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from kshot.config import ConfigError, load_config, parse_overrides
from kshot.launch.local import die_with_parent
from kshot.stages import STAGES, run_stage

__all__ = ["main"]

# The launcher (torchrun's agent), read before torch is imported: if it dies while this worker
# still starts up, the parent-death signal is armed too late, and this pid tells.
_LAUNCHER_PID = os.getppid()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kshot.worker", description=__doc__)
    p.add_argument("stage", choices=STAGES)
    p.add_argument("--config-json", default="{}", help="the run configuration as JSON")
    p.add_argument("--input", action="append", default=[], metavar="NAME=URI")
    p.add_argument("--output", action="append", default=[], metavar="NAME=URI")
    p.add_argument(
        "--overwrite", action="store_true", help="remove the outputs first and start over"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # End this worker when its launcher dies, even by SIGKILL, so that a restarted stage never
    # races an orphan writing to the same output.
    die_with_parent(_LAUNCHER_PID)
    from kshot import distributed as dist

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
        result = run_stage(args.stage, cfg, inputs, outputs, overwrite=args.overwrite)
    except BaseException:
        dist.shutdown(completed=False)
        raise
    dist.shutdown()
    if main_rank:
        print(json.dumps({"stage": args.stage, "result": result}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
