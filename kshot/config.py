"""The run configuration: every hyper-parameter in one place, with where its default comes from.

A :class:`Config` is flat so that each field is one pipeline parameter, one ``--set key=value`` and
one YAML key. Defaults are the paper's (Su et al., ICML 2021) where it gives a number, NAS-Bench-201's
own recipe (Dong & Yang, ICLR 2020) for that space's training, and otherwise a documented choice.
:func:`load_config` validates every value before any expensive work starts and names the key and the
source (file, ``--set``, pipeline parameter) of a bad value.

**Run identity.** Each field's ``result`` metadata names the stages whose result the key changes
when the stage reads it (``()``: an execution setting such as ``num_threads``, ``workers``,
``device``, ``compile``, ``eval_batch_size`` or ``checkpoint_every_steps``, which leave the
numbers as they are). :func:`result_keys` reads it: a stage's outputs and checkpoints record these
keys, so that an output folder holding another run's work is refused, naming the keys that
differ, and a rerun of the same run resumes it. What a stage's inputs hold (the split, the
checkpoint it continues or scores, the search results) is part of the identity through their
digests, not through the keys that made them.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import math
import os
import re
import types
import typing
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

__all__ = [
    "Config",
    "ConfigError",
    "load_config",
    "read_config_file",
    "resolve_config_file",
    "shipped_configs",
    "parse_overrides",
    "FIELD_HELP",
    "result_keys",
    "is_quantity",
    "is_positive_quantity",
    "QUEUE_LABEL",
    "PRIORITY_LABEL",
]

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
"""The label by which Kueue queues a job (config key ``queue_name``)."""
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
"""The label naming a job's Kueue WorkloadPriorityClass (config key ``priority_class``)."""
# A Kubernetes resource quantity, as the API server's (and the Kubeflow CRDs') schemas spell it.
_QUANTITY = re.compile(
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
# What a label value (and so a LocalQueue or WorkloadPriorityClass name given as one) may be.
_LABEL_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_LABEL_VALUE_MAX = 63


def is_quantity(text: str) -> bool:
    """Whether ``text`` is a Kubernetes resource quantity."""
    return bool(_QUANTITY.match(text))


def is_positive_quantity(text: str) -> bool:
    """Whether ``text`` is a Kubernetes quantity above zero (``"2"``, ``"500m"``, ``"8Gi"``)."""
    match = _QUANTITY.match(text)
    return bool(match) and match.group(1) != "-" and float(match.group(2)) > 0


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key and where the value came from."""


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


# The stages each result-affecting key reaches (see "Run identity" above).
_ALL = ("split", "warmup", "train", "search", "recalibrate", "rank", "retrain", "standalone")
_SUPERNET = ("warmup", "train", "search", "recalibrate", "rank")  # the K-shot supernet's stages
_NETWORK = (*_SUPERNET, "retrain", "standalone")  # the stages that build a network
_SUPERNET_TRAINING = ("warmup", "train")
_TRAINING = (*_SUPERNET_TRAINING, "retrain", "standalone")
_STANDALONE_TRAINING = ("retrain", "standalone")
_SCORING = ("search", "recalibrate", "rank")


@dataclass(frozen=True)
class Config:
    # ---- data
    dataset: str = _f(
        "digits",
        "dataset URI: 'digits' (built in), a CIFAR pickle folder, a "
        "parquet file/folder, a class-folder tree or ImageNet16 pickles; local or gs://",
        result=_ALL,
    )
    data_loading: str = _f(
        "memory",
        "memory: decode the dataset once into RAM (CIFAR-size data); stream: read a sharded "
        "dataset (kshot data shard) or class-folder images in DataLoader workers every step, with "
        "RandomResizedCrop and flip (ImageNet); the "
        "validation and test images are still held in RAM as uint8",
        choices=("memory", "stream"),
        result=_ALL,
    )
    loader_workers: int = _f(8, "stream: DataLoader worker processes per rank", ge=0)
    valid_size: int = _f(
        0,
        "images held out of the training part as local validation, seeded (ImageNet recipe: "
        "50,000); 0: use valid_fraction",
        ge=0,
        result=("split",),
    )
    valid_fraction: float = _f(
        0.5,
        "share of the training images held out as local validation "
        "(NAS-Bench-201's cifar10-valid split: 25k / 25k)",
        gt=0.0,
        lt=1.0,
        result=("split",),
    )
    augment: bool = _f(
        True,
        "random crop (pad 4) and horizontal flip while training (CIFAR recipe); "
        "flips are skipped for 1-channel data such as digits",
        result=_TRAINING,
    )
    seed: int = _f(
        0,
        "base seed: the split, every sampled path and every batch derive from it",
        ge=0,
        le=2**63 - 1,
        result=_ALL,
    )
    train_subset: int = _f(
        0,
        "split only this many images of the training part, seeded (0: all)",
        ge=0,
        result=("split",),
    )
    resolution: int = _f(
        0,
        "resize images to resolution x resolution (0: native); a multiple "
        "of 4, as the two reductions halve it twice",
        ge=0,
        result=_ALL,
    )

    # ---- search space and supernet
    search_space: str = _f(
        "nb201",
        "search space: nb201 (NAS-Bench-201 cells) or mbv2 (the paper's ImageNet space: "
        "MobileNetV2 blocks with width search)",
        choices=("nb201", "mbv2"),
        result=_NETWORK,
    )
    k: int = _f(
        8, "K, the number of supernets (paper: K = 8 in Tables 7 and 9)", ge=1, result=_SUPERNET
    )
    channels: int = _f(
        16, "C, channels of the first stage (NAS-Bench-201: 16)", ge=1, result=_NETWORK
    )
    cells: int = _f(5, "N, cells per stage (NAS-Bench-201: 5)", ge=1, result=_NETWORK)
    width_mult: float = _f(
        1.0,
        "mbv2: scales every layer's channels (paper: 1.0; tests use tiny values)",
        gt=0.0,
        result=_NETWORK,
    )
    channel_divisor: int = _f(
        8,
        "mbv2: layer channels are rounded to multiples of it (MobileNetV2: 8)",
        ge=1,
        result=_NETWORK,
    )
    channel_search: bool = _f(
        True,
        "mbv2: search the width factor of every layer jointly with the operations (an ablation: "
        "off = every layer at width 1.0)",
        result=_NETWORK,
    )
    simplex_hidden: int = _f(
        64, "hidden units of the simplex-net's MLP (paper: not stated)", ge=1, result=_SUPERNET
    )

    # ---- supernet training (Algorithms 1 and 2)
    epochs: int = _f(
        200,
        "total supernet epochs, warmup included (NAS-Bench-201 schedule: 200; "
        "paper, ImageNet: 120)",
        ge=1,
        result=_SUPERNET_TRAINING,
    )
    warmup_epochs: int = _f(
        5,
        "T_w: epochs of uniform single-path training with λ = 1/K (paper, ImageNet: 5)",
        ge=0,
        result=_SUPERNET_TRAINING,
    )
    batch_size: int = _f(
        256,
        "global batch size b (NAS-Bench-201: 256; paper, ImageNet: 1024)",
        ge=1,
        result=_SUPERNET_TRAINING,
    )
    lr: float = _f(
        0.1,
        "supernet SGD learning rate, cosine-annealed per step (NAS-Bench-201: 0.1; "
        "paper, ImageNet: 0.12 at batch 1024)",
        gt=0.0,
        result=_SUPERNET_TRAINING,
    )
    momentum: float = _f(
        0.9, "SGD momentum, Nesterov (paper: 0.9)", ge=0.0, lt=1.0, result=_SUPERNET_TRAINING
    )
    weight_decay: float = _f(
        5e-4, "supernet weight decay (NAS-Bench-201: 5e-4)", ge=0.0, result=_SUPERNET_TRAINING
    )
    lr_min: float = _f(
        0.0,
        "supernet lr at the end of the cosine schedule (0: anneal to zero; NAS-Bench-201's "
        "weight-sharing recipe: 0.001 from lr 0.025)",
        ge=0.0,
        result=_SUPERNET_TRAINING,
    )
    lambda_mode: str = _f(
        "learned",
        "λ of a path after warmup: learned by the simplex-net (K-shot), or Table 6's ablations: "
        "fixed 1/K, or random: one code per path drawn once from the uniform distribution on the "
        "simplex with the seed, never changed, and scored with",
        choices=("learned", "fixed", "random"),
        result=("train",),
    )
    budget: str = _f(
        "iterations",
        "how the learned K-shot run's budget is counted: iterations (the paper's Algorithm 2: "
        "supernet and simplex-net steps alternate within epochs x iterations, so Θ gets half "
        "the updates of K = 1) or supernet_steps (as many Θ updates as K = 1, each simplex-net "
        "step extra, the cosine schedule indexed by Θ updates); the same for runs without "
        "simplex-net steps",
        choices=("iterations", "supernet_steps"),
        result=("train",),
    )
    m: int = _f(
        16,
        "paths per simplex-net step; the batch is split into m groups (paper: 16)",
        ge=1,
        result=("train",),
    )
    simplex_lr: float = _f(
        1e-3,
        "simplex-net Adam learning rate (the paper does not name the "
        "optimiser; Adam as for other architecture parameters, e.g. DARTS)",
        gt=0.0,
        result=("train",),
    )
    alpha: float = _f(
        1.0,
        "α, weight of the channel regulariser r_c (paper: 1; 0 switches r_c off)",
        ge=0.0,
        result=("train",),
    )
    tau: float = _f(0.3, "τ, temperature of r_c (paper: 0.3)", gt=0.0, result=("train",))
    rc_threshold: float = _f(
        0.3,
        "r_c: two paths of a simplex-net step are positives when their mean per-layer width "
        "difference ‖c_i − c_k‖₁ / 24 is below this (the paper gives no value; 0.3 makes about a "
        "third of random pairs positive)",
        gt=0.0,
        result=("train",),
    )
    checkpoint_every_steps: int = _f(0, "also checkpoint every N steps (0: only every epoch)", ge=0)

    # ---- search (NSGA-II) and BN recalibration
    population: int = _f(50, "NSGA-II population (paper: 50)", ge=2, result=("search",))
    generations: int = _f(
        20, "NSGA-II generations (paper: 20, i.e. 1,000 evaluated paths)", ge=1, result=("search",)
    )
    parents: int = _f(
        20, "top paths by accuracy that breed each generation (paper: 20)", ge=2, result=("search",)
    )
    mutation_prob: float = _f(
        0.1, "per-choice mutation probability (SPOS: 0.1)", gt=0.0, le=1.0, result=("search",)
    )
    flops_budget: float = _f(
        0.0,
        "hard FLOPs budget in MFLOPs of the stand-alone network (0: no budget)",
        ge=0.0,
        result=("search",),
    )
    bn_images: int = _f(
        2048,
        "training images used to recalibrate BN before scoring a path (paper: 2,048)",
        ge=1,
        result=_SCORING,
    )
    bn_batch_size: int = _f(
        2048,
        "micro-batch of the recalibration pass (paper: one batch of 2,048)",
        ge=1,
        result=_SCORING,
    )
    eval_batch_size: int = _f(1024, "batch size when scoring paths on the validation split", ge=1)
    eval_images: int = _f(
        0,
        "validation images used to score a path (0: the whole split)",
        ge=0,
        result=("search", "rank"),
    )

    # ---- ranking against ground truth
    ranking: bool = _f(
        True,
        "evaluate the supernet's ranking (the standalone and rank stages); off, both only record "
        "that ranking was skipped, with no job: for searches without ground truth (ImageNet)",
        result=("rank", "standalone"),
    )
    rank_paths: int = _f(
        0, "paths scored by the rank stage (0: all 15,625)", ge=0, result=("rank",)
    )
    top_n: list[int] = _f(
        [10, 50, 100, 500], "n of the top-group Kendall τ (paper Fig. 5)", result=("rank",)
    )
    ground_truth: str = _f(
        "",
        "ground truth of the ranking: 'nb201' (NAS-Bench-201's table, shipped with kshot: columns "
        "cifar10_test, cifar100_test, imagenet16_test), a CSV URI (arch + accuracy columns, .csv or "
        ".csv.gz) or the benchmark's own file; empty: use the standalone stage's table",
        result=("rank",),
    )
    ground_truth_column: str = _f(
        "cifar10_test", "accuracy column of the ground-truth table", result=("rank",)
    )

    # ---- retraining and stand-alone ground truth (NAS-Bench-201 recipe)
    retrain_epochs: int = _f(
        200, "epochs of retraining the found path (NAS-Bench-201: 200)", ge=1, result=("retrain",)
    )
    retrain_lr: float = _f(
        0.1,
        "retraining SGD lr, Nesterov, cosine (NAS-Bench-201: 0.1)",
        gt=0.0,
        result=_STANDALONE_TRAINING,
    )
    retrain_batch_size: int = _f(
        256, "retraining batch size (NAS-Bench-201: 256)", ge=1, result=_STANDALONE_TRAINING
    )
    retrain_weight_decay: float = _f(
        5e-4, "retraining weight decay (NAS-Bench-201: 5e-4)", ge=0.0, result=_STANDALONE_TRAINING
    )
    retrain_recipe: str = _f(
        "nb201",
        "nb201: SGD Nesterov, cosine lr, per NAS-Bench-201; imagenet: the paper's RMSProp "
        "(momentum 0.9) with lr warmed up linearly from 0 over retrain_warmup_epochs, then × "
        "retrain_lr_decay every retrain_decay_epochs, and an EMA of the weights",
        choices=("nb201", "imagenet"),
        result=_STANDALONE_TRAINING,
    )
    retrain_warmup_epochs: float = _f(
        5.0,
        "imagenet recipe: epochs of linear lr warmup from 0 (paper: 5)",
        ge=0.0,
        result=_STANDALONE_TRAINING,
    )
    retrain_lr_decay: float = _f(
        0.97,
        "imagenet recipe: lr factor every retrain_decay_epochs (paper: 0.97)",
        gt=0.0,
        le=1.0,
        result=_STANDALONE_TRAINING,
    )
    retrain_decay_epochs: float = _f(
        2.4,
        "imagenet recipe: epochs between lr decays (paper: 2.4)",
        gt=0.0,
        result=_STANDALONE_TRAINING,
    )
    retrain_ema_decay: float = _f(
        0.9999,
        "imagenet recipe: decay of the EMA of the weights that is evaluated and exported "
        "(paper: 0.9999; 0: no EMA)",
        ge=0.0,
        lt=1.0,
        result=_STANDALONE_TRAINING,
    )
    standalone_paths: int = _f(
        16, "paths the standalone stage trains from scratch", ge=2, result=("standalone",)
    )
    standalone_epochs: int = _f(
        12, "epochs of each stand-alone training (short budget)", ge=1, result=("standalone",)
    )

    # ---- execution
    workers: int = _f(1, "processes (local) or pods (PyTorchJob) of the distributed stages", ge=1)
    gpus_per_worker: int = _f(0, "GPUs per worker pod (0: CPU)", ge=0)
    device: str = _f("auto", "torch device: auto, cpu or cuda", choices=("auto", "cpu", "cuda"))
    precision: str = _f(
        "auto",
        "forward passes under bf16 autocast (bf16) or in fp32; auto: bf16 on GPUs with native bf16 "
        "(Ampere and later), else fp32. "
        "Weights, their K-slot merge, BN and optimiser state stay fp32",
        choices=("auto", "fp32", "bf16"),
        result=_NETWORK,
    )
    compile: bool = _f(
        False,
        "train the supernet through its path-masked forward (every operation runs, the path's "
        "one-hot code keeps its own), whose graph is the same for every path, captured once by "
        "torch.compile (on CUDA with CUDA graphs); the same updates as the eager step. nb201 only",
    )
    num_threads: int = _f(0, "torch CPU threads per process (0: torch's default)", ge=0)
    job_cpu: str = _f(
        "2",
        "CPU request of each PyTorchJob / TrainJob pod, a Kubernetes quantity (its GPUs are "
        "gpus_per_worker's); a documented choice that keeps the pods out of the BestEffort class, "
        "first to be evicted: raise it for data_loading stream (loader_workers per GPU)",
        quantity=True,
    )
    job_memory: str = _f(
        "8Gi",
        "memory request of each PyTorchJob / TrainJob pod, a Kubernetes quantity (a documented "
        "choice, as job_cpu; /dev/shm counts against it)",
        quantity=True,
    )
    queue_name: str = _f(
        "",
        f"Kueue LocalQueue of the jobs (label {QUEUE_LABEL} on each PyTorchJob / TrainJob): Kueue "
        "admits all of a job's pods at once, when the queue's quota holds them (gang admission), "
        "and the launcher waits while the job is queued; empty: not queued",
        label=True,
    )
    priority_class: str = _f(
        "",
        f"Kueue WorkloadPriorityClass of the jobs (label {PRIORITY_LABEL}): their order in the "
        "queue and which admitted workloads they may preempt; needs queue_name; empty: the "
        "queue's default",
        label=True,
    )

    def __post_init__(self) -> None:
        _validate(self, {})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> Config:
        return load_config(self.to_dict(), changes)


FIELD_HELP: dict[str, str] = {f.name: f.metadata["help"] for f in dataclasses.fields(Config)}
_FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def result_keys(*stages: str) -> tuple[str, ...]:
    """The config keys that change the result of any of ``stages`` (in field order): what their
    outputs' and checkpoints' identity records."""
    return tuple(
        name for name, f in _FIELDS.items() if set(f.metadata.get("result", ())) & set(stages)
    )


def _coerce(key: str, value: Any, source: str) -> Any:
    """Convert ``value`` to the type of field ``key``; strings (from --set) are parsed as YAML."""
    hint = typing.get_type_hints(Config)[key]
    if isinstance(value, str) and hint is not str:
        value = yaml.safe_load(value) if value.strip() else value
    origin = typing.get_origin(hint)
    bad = ConfigError(f"config key {key!r} from {source}: {value!r} is not a valid {_name(hint)}")
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise bad
        return [_scalar(item, v, bad) for v in value]
    return _scalar(hint, value, bad)


def _scalar(hint: Any, value: Any, bad: ConfigError) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise bad
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if hint is str:
        if isinstance(value, (dict, list)) or value is None:
            raise bad
        return str(value)
    raise TypeError(hint)


def _name(hint: Any) -> str:
    if isinstance(hint, types.GenericAlias):
        return str(hint)
    return getattr(hint, "__name__", str(hint))


def _validate(cfg: Config, sources: Mapping[str, str]) -> None:
    def fail(key: str, why: str) -> None:
        src = sources.get(key, "defaults")
        raise ConfigError(f"config key {key!r} from {src}: {getattr(cfg, key)!r} {why}")

    for name, f in _FIELDS.items():
        v = getattr(cfg, name)
        md = f.metadata
        if any(
            isinstance(x, float) and not math.isfinite(x)
            for x in (v if isinstance(v, list) else [v])
        ):
            fail(name, "must be a finite number")
        if "choices" in md and v not in md["choices"]:
            fail(name, f"is not one of {', '.join(md['choices'])}")
        if "ge" in md and v < md["ge"]:
            fail(name, f"must be >= {md['ge']}")
        if "gt" in md and v <= md["gt"]:
            fail(name, f"must be > {md['gt']}")
        if "le" in md and v > md["le"]:
            fail(name, f"must be <= {md['le']}")
        if "lt" in md and v >= md["lt"]:
            fail(name, f"must be < {md['lt']}")
        if md.get("quantity") and not is_positive_quantity(v):
            fail(name, "is not a positive Kubernetes quantity (e.g. '4', '500m', '16Gi')")
        if md.get("label") and v and not (len(v) <= _LABEL_VALUE_MAX and _LABEL_NAME.match(v)):
            fail(
                name,
                f"is not a name a label can hold ({_LABEL_VALUE_MAX} characters at most: lower "
                "case letters, digits, '-' and '.', starting and ending with a letter or digit)",
            )
    if cfg.lr_min > cfg.lr:
        fail("lr_min", f"exceeds lr = {cfg.lr}: the cosine schedule anneals from lr down to it")
    if cfg.warmup_epochs > cfg.epochs:
        fail("warmup_epochs", f"exceeds epochs = {cfg.epochs} (epochs counts the warmup)")
    if cfg.compile and cfg.search_space != "nb201":
        fail("compile", f"applies to search_space nb201 only, not {cfg.search_space!r}")
    if cfg.lambda_mode == "learned" and cfg.k > 1 and cfg.batch_size % cfg.m:
        fail(
            "m",
            f"does not divide batch_size = {cfg.batch_size}: each of the m paths of a "
            "simplex-net step needs b/m images",
        )
    if not cfg.dataset.strip():
        fail("dataset", "is empty: name a dataset ('digits', a local path or gs:// URI)")
    if cfg.resolution % 4:
        fail("resolution", "must be a multiple of 4")
    if cfg.data_loading == "stream" and not cfg.resolution:
        fail(
            "data_loading",
            "needs config key 'resolution' (e.g. 224): streamed images are cropped to it",
        )
    if cfg.search_space == "mbv2" and cfg.channel_search and cfg.m < 2 and cfg.alpha > 0:
        fail("m", "must be >= 2 for r_c, which compares the m paths of a simplex-net step")
    if cfg.parents > cfg.population:
        fail("parents", f"exceeds population = {cfg.population}")
    if cfg.rank_paths == 1:
        fail("rank_paths", "must be 0 (all) or at least 2: a ranking needs 2 paths")
    if any(n < 1 for n in cfg.top_n):
        fail("top_n", "must hold positive group sizes")
    if cfg.priority_class and not cfg.queue_name:
        fail("priority_class", "orders jobs in a Kueue queue: set queue_name too")


def parse_overrides(pairs: Iterable[str], source: str = "--set") -> dict[str, str]:
    """``["k=4", "epochs=2"]`` → ``{"k": "4", "epochs": "2"}``; values stay strings (YAML-parsed later)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{source} {pair!r}: expected key=value")
        out[key.strip()] = value
    return out


class _DuplicateKey(yaml.YAMLError):
    """A mapping that names one key twice (PyYAML would keep the last silently)."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise _DuplicateKey(f"key {key!r} is given twice (lines {seen[key]} and {line})")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def shipped_configs() -> list[str]:
    """The names of the configs packaged in ``kshot/configs`` (``digits-tiny``, …), sorted."""
    files = importlib.resources.files("kshot.configs").iterdir()
    return sorted(f.name.removesuffix(".yaml") for f in files if f.name.endswith(".yaml"))


def resolve_config_file(value: str, source: str = "--config") -> str:
    """The path or URI of the config file that ``value`` names.

    A URI (``gs://``, ``s3://``, ``minio://``) or an existing local file is itself; otherwise a
    shipped config's name (``digits-tiny``, or ``digits-tiny.yaml``) is its packaged file, so that
    one command reads the same file in a clone, an installed package and the images.

    Raises:
        ConfigError: ``value`` is neither, naming it, ``source`` and the shipped names.
    """
    if "://" in value or os.path.exists(value):
        return value
    shipped = shipped_configs()
    name = value.removesuffix(".yaml")
    if name in shipped:
        return str(importlib.resources.files("kshot.configs") / f"{name}.yaml")
    stem = os.path.basename(name)
    hint = f" (did you mean {stem!r}?)" if stem in shipped else ""
    raise ConfigError(
        f"config file {value!r} from {source} not found, and it is not the name of a shipped "
        f"config{hint}; shipped: {', '.join(shipped)}"
    )


def read_config_file(uri: str, source: str = "--config") -> dict[str, Any]:
    """The mapping of a YAML config file, its keys not yet checked.

    ``uri`` is a local path, a ``gs://`` / ``s3://`` / ``minio://`` URI or a shipped config's name
    (:func:`resolve_config_file`); ``source`` says where it came from, for error messages.

    Raises:
        ConfigError: the file is missing, not UTF-8, not YAML or not a mapping, naming it.
    """
    from kshot import storage

    uri = resolve_config_file(uri, source)
    try:
        data = yaml.load(storage.read_text(uri), Loader=_UniqueKeyLoader)
    except FileNotFoundError as e:
        raise ConfigError(f"config file {uri!r} not found") from e
    except _DuplicateKey as e:
        raise ConfigError(f"config file {uri!r}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {uri!r} is not valid YAML: {e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {uri!r} is not UTF-8 text: {e}") from e
    if data is None:  # a truncated copy or a wrong path: never read as "all defaults"
        raise ConfigError(f"config file {uri!r} is empty: it sets no key")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {uri!r} must hold a mapping of keys to values")
    return data


def load_config(*layers: Mapping[str, Any] | str | None, sources: Iterable[str] = ()) -> Config:
    """Build a :class:`Config` from layers applied in order (later wins).

    Each layer is a mapping or a path / URI of a YAML file; ``sources`` names the layers in error
    messages (defaults: the file name, or ``layer N``).
    """
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    names = list(sources)
    for i, layer in enumerate(layers):
        if layer is None:
            continue
        name = names[i] if i < len(names) else (layer if isinstance(layer, str) else f"layer {i}")
        if isinstance(layer, str):
            layer = read_config_file(layer)
        for key, value in layer.items():
            if key not in _FIELDS:
                close = [
                    k for k in _FIELDS if k.replace("_", "") == str(key).lower().replace("_", "")
                ]
                close = close or difflib.get_close_matches(str(key).lower(), _FIELDS, 1, 0.75)
                close = close or [k for k in _FIELDS if k.startswith(f"{str(key).lower()}_")]
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"unknown config key {key!r} from {name}{hint}")
            values[key] = _coerce(key, value, name)
            origin[key] = name
    try:
        cfg = Config.__new__(Config)
        for name_, f in _FIELDS.items():
            default = (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            )
            object.__setattr__(cfg, name_, values.get(name_, default))
    except TypeError as e:  # pragma: no cover - defensive
        raise ConfigError(str(e)) from e
    _validate(cfg, origin)
    ignored = [
        k
        for k in _OTHER_SPACE_KEYS[cfg.search_space]
        if k in origin and getattr(cfg, k) != _FIELDS[k].default
    ]
    if ignored:
        given = ", ".join(f"{k!r} (from {origin[k]})" for k in ignored)
        warnings.warn(
            f"config keys {given} do not apply to search_space {cfg.search_space!r} "
            f"(from {origin.get('search_space', 'defaults')}), which ignores them",
            stacklevel=2,
        )
    return cfg


# Shape keys of one search space, which the other one ignores.
_OTHER_SPACE_KEYS = {
    "nb201": ("width_mult", "channel_divisor", "channel_search", "rc_threshold"),
    "mbv2": ("channels", "cells"),
}
