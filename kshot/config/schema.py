"""The run configuration's schema: every hyper-parameter in one place, with where its default
comes from.

A :class:`Config` is flat so that each field is one pipeline parameter, one ``--set key=value`` and
one YAML key. Defaults are the paper's (Su et al., ICML 2021) where it gives a number, NAS-Bench-201's
own recipe (Dong & Yang, ICLR 2020) for that space's training, and otherwise a documented choice.
Each field's metadata holds its help text and the rules its value obeys (``choices``, bounds,
``quantity``, ``label``), which :mod:`kshot.config.validation` applies; every :class:`Config` is
checked when made, and :mod:`kshot.config.loader` builds one from files and overrides.

**Run identity.** Each field's ``result`` metadata names the stages whose result the key changes
when the stage reads it (``()``: an execution setting such as ``num_threads``, ``workers``,
``device``, ``compile``, ``eval_batch_size`` or ``checkpoint_every_steps``, which leave the
numbers as they are). :func:`result_keys` reads it: a stage's outputs and checkpoints record these
keys, so that an output folder holding another run's work is refused, naming the keys that
differ, and a rerun of the same run resumes it. What a stage's inputs hold (the split, the
checkpoint it continues or scores, the search results) is part of the identity through their
digests, not through the keys that made them.

The module is one idea at some length: the length is the fields, each with its default's source.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from kshot.config.validation import validate

__all__ = ["Config", "FIELD_HELP", "FIELDS", "result_keys", "QUEUE_LABEL", "PRIORITY_LABEL"]

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
"""The label by which Kueue queues a job (config key ``queue_name``)."""
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
"""The label naming a job's Kueue WorkloadPriorityClass (config key ``priority_class``)."""


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
        validate(self, {})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> Config:
        from kshot.config.loader import load_config  # the loader builds on this module

        return load_config(self.to_dict(), changes)


FIELD_HELP: dict[str, str] = {f.name: f.metadata["help"] for f in dataclasses.fields(Config)}
FIELDS: dict[str, dataclasses.Field[Any]] = {f.name: f for f in dataclasses.fields(Config)}
"""The fields of :class:`Config` by name, in order."""


def result_keys(*stages: str) -> tuple[str, ...]:
    """The config keys that change the result of any of ``stages`` (in field order): what their
    outputs' and checkpoints' identity records."""
    return tuple(
        name for name, f in FIELDS.items() if set(f.metadata.get("result", ())) & set(stages)
    )
