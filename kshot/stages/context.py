"""One stage run as the stage sees it: its configuration and artifacts, checked once before any
work, and what it loads (the device, the split's data, the search space at the data's shape) made
on first use and then kept.

:func:`kshot.stages.run_stage` builds the context (torchtitan builds a run's parts once from its
spec the same way); a stage's ``run(ctx)`` reads ``ctx.inputs[...]`` and ``ctx.outputs[...]`` and
asks the context for the rest, in the order its work needs them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

import torch

from kshot import distributed as dist
from kshot import storage
from kshot.config import Config
from kshot.spaces import Space
from kshot.stages import ARTIFACTS, FOLDER_ARTIFACTS
from kshot.stages.data import load_train_data
from kshot.train.builders import space_of
from kshot.train.run_data import TrainData

__all__ = ["StageContext", "check_artifacts", "device_of"]


def check_artifacts(
    artifacts: Mapping[str, str], names: tuple[str, ...], stage: str, kind: str
) -> None:
    """Fail before any work when a stage is called without one of its artifact URIs, when an
    input does not exist or is of the other kind, or when an output could never be written.

    Raises:
        ValueError: naming the stage, the artifact and its URI.
        StorageError: the store did not answer (not a bad URI).
    """
    missing = [n for n in names if not artifacts.get(n)]
    if missing:
        flag = "--input" if kind == "input" else "--output"
        raise ValueError(
            f"stage {stage!r} needs {kind} artifact(s) {', '.join(missing)} "
            f"(e.g. {flag} {missing[0]}=URI)"
        )
    for name in names:
        uri = artifacts[name]
        try:
            check = storage.check_writable if kind == "output" else storage.check_readable
            check(uri, folder=name in FOLDER_ARTIFACTS)
        except storage.StorageError:
            raise
        except (ValueError, OSError) as e:
            raise ValueError(f"stage {stage!r}, {kind} artifact {name}={uri!r}: {e}") from e


def device_of(cfg: Config) -> torch.device:
    """This rank's device under config key ``device`` (and ``num_threads`` applied)."""
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    return dist.device_for_rank(cfg.device)


@dataclass
class StageContext:
    """A stage's configuration and artifact URIs, and what it loads, each made once.

    Attributes:
        stage: the stage's name.
        config: the run configuration.
        inputs: input artifact name → URI (the stage's required ones checked to exist).
        outputs: output artifact name → URI (the required ones checked to be writable).
    """

    stage: str
    config: Config
    inputs: Mapping[str, str] = field(default_factory=dict)
    outputs: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def checked(
        cls, stage: str, config: Config, inputs: Mapping[str, str], outputs: Mapping[str, str]
    ) -> StageContext:
        """The context of ``stage``, once every artifact it requires is given and usable.

        The checks that make store requests run on rank 0 alone; the other ranks wait for it at
        the stage's first step (:func:`kshot.stages.guard.run_guarded`), and fail with it.
        """
        if dist.is_main():
            wanted_in, wanted_out = ARTIFACTS[stage]
            for kind, given, wanted in (
                ("input", inputs, wanted_in),
                ("output", outputs, wanted_out),
            ):
                check_artifacts(given, tuple(n for n in wanted if not n.endswith("?")), stage, kind)
        return cls(stage, config, dict(inputs), dict(outputs))

    @cached_property
    def device(self) -> torch.device:
        """This rank's device (asked first by the training stages: a missing GPU fails at once)."""
        return device_of(self.config)

    @cached_property
    def data(self) -> TrainData:
        """The dataset's images cut by the input split."""
        return load_train_data(self.config, self.inputs["split"])

    @cached_property
    def space(self) -> Space:
        """The search space at the data's shape (its classes and resolution)."""
        return space_of(self.config, self.data)

    @cached_property
    def config_space(self) -> Space:
        """The search space as the config names it, before any data is read (to check a
        search's results or sample paths first)."""
        return space_of(self.config)
