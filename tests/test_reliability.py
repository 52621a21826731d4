"""Reliability: runs on gs:// and s3:// equal runs on disk, killed workers resume, flaky storage is
survived.

These are the project's claims ("nothing half-written … a restarted one resumes from the last
complete one", object storage as good as a disk), checked against real servers (the GCS emulator
of ``tests/gcs.py``, the S3 server of ``tests/s3.py``, each test taking ``remote`` runs on both)
and a real ``SIGKILL``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from kshot import storage
from kshot.cli import main
from kshot.config import Config, load_config
from kshot.eval.ground_truth import write_ground_truth_csv
from kshot.launch.spec import LaunchSpec
from kshot.spaces import nb201
from kshot.stages import run_stage
from kshot.stages.data import load_train_data
from kshot.train import checkpoint as ckpt
from kshot.train.trainer import KShotTrainer, curves
from tests.conftest import TINY, spy_on_resume
from tests.gcs import FlakyProxy
from tests.object_stores import Remote

STEPS_PER_EPOCH = 899 // TINY["batch_size"]  # digits: 899 training images in the seed-0 split
GROUND_TRUTH = {  # made-up accuracies of a few paths: rank only needs a table to join against
    nb201.format_arch(nb201.from_index(i)): acc
    for i, acc in [(7, 61.0), (1234, 80.5), (5000, 72.25), (9876, 88.0), (15000, 55.5)]
}


# ----------------------------------------------------------------------------------- helpers


def _chain(cfg: Config, root: str) -> dict[str, str]:
    """split → warmup → train → search → rank with every artifact under ``root`` (a folder or a
    bucket prefix); split goes through the ``kshot stage`` command with its config file under
    ``root`` too. Returns the artifact URIs."""
    uri = {
        name: storage.join(root, name)
        for name in ("tiny.yaml", "split.json", "warm", "trained", "curves.json", "truth.csv")
        + ("search.json", "scores.csv", "rank.json")
    }
    storage.write_text(uri["tiny.yaml"], yaml.safe_dump(cfg.to_dict()))
    write_ground_truth_csv(uri["truth.csv"], GROUND_TRUTH)
    cli = ["stage", "split", "--config", uri["tiny.yaml"], "--output", f"split={uri['split.json']}"]
    assert main(cli) == 0
    split = {"split": uri["split.json"]}
    run_stage("warmup", cfg, split, {"checkpoint": uri["warm"]})
    run_stage(
        "train",
        cfg,
        {**split, "checkpoint": uri["warm"]},
        {"checkpoint": uri["trained"], "curves": uri["curves.json"]},
    )
    trained = {**split, "checkpoint": uri["trained"]}
    run_stage("search", cfg, trained, {"results": uri["search.json"]})
    run_stage(
        "rank",
        cfg,
        {**trained, "ground_truth": uri["truth.csv"]},
        {"scores": uri["scores.csv"], "metrics": uri["rank.json"]},
    )
    return uri


def _assert_same_weights(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Bitwise equality of the supernet and simplex-net of two checkpoints."""
    for net in ("supernet", "simplex"):
        assert a[net].keys() == b[net].keys()
        for name, tensor in a[net].items():
            assert torch.equal(tensor, b[net][name]), f"{net}.{name} differs"


def _assert_same_state(a: Any, b: Any, where: str) -> None:
    """Bitwise equality of nested optimiser / scheduler states."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            _assert_same_state(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _names(uris: list[str]) -> list[str]:
    return [u.rsplit("/", 1)[-1] for u in uris]


def _partials(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.name.endswith(".partial"))


def _step_of(uri: str) -> int:
    return int(uri.rsplit("-s", 1)[1].removesuffix(".pt"))


# ----------------------------------------------------------- object stores equal local disk


@pytest.fixture(scope="module")
def local_chain(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """:func:`_chain` on local disk (TINY config), the reference of the runs on object stores."""
    return _chain(load_config(TINY), str(tmp_path_factory.mktemp("local-chain") / "run"))


def test_a_run_on_an_object_store_gives_the_same_results_as_on_local_disk(
    tiny_cfg: Config, remote: Remote, local_chain: dict[str, str]
) -> None:
    """split → warmup → train → search → rank with every input and output on gs:// or s3://
    (config file included) writes the same search results, rank metrics and scores, the same
    checkpoints and bitwise the same final weights as the same run on local paths."""
    local = local_chain
    bucket = remote.bucket
    remote = _chain(tiny_cfg, storage.join(bucket, "run"))

    assert storage.read_json(remote["split.json"]) == storage.read_json(local["split.json"])
    assert storage.read_json(remote["search.json"]) == storage.read_json(local["search.json"])
    assert storage.read_json(remote["curves.json"]) == storage.read_json(local["curves.json"])
    assert storage.read_text(remote["scores.csv"]) == storage.read_text(local["scores.csv"])
    remote_rank, local_rank = (
        storage.read_json(remote["rank.json"]),
        storage.read_json(local["rank.json"]),
    )
    assert remote_rank.pop("ground_truth") == remote["truth.csv"]  # the only field that may differ
    assert local_rank.pop("ground_truth") == local["truth.csv"]
    assert remote_rank == local_rank and remote_rank["n_paths"] == len(GROUND_TRUTH)
    for folder in ("warm", "trained"):
        assert _names(ckpt.list_checkpoints(remote[folder])) == _names(
            ckpt.list_checkpoints(local[folder])
        )
        _assert_same_weights(ckpt.load_latest(remote[folder]), ckpt.load_latest(local[folder]))
    objects = storage.list_uris(bucket)
    assert objects and not [u for u in objects if u.endswith(".partial")]


# ------------------------------------------------------------------------ a killed worker


@pytest.fixture(scope="module")
def warm_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A split and a one-epoch warmup checkpoint on local disk (TINY config)."""
    d = tmp_path_factory.mktemp("warm-run")
    cfg = load_config(TINY)
    run_stage("split", cfg, {}, {"split": str(d / "split.json")})
    run_stage("warmup", cfg, {"split": str(d / "split.json")}, {"checkpoint": str(d / "warm")})
    return {"split": str(d / "split.json"), "checkpoint": str(d / "warm")}


def _kill_mid_epoch(command: list[str], out: Path, timeout_s: float = 120.0) -> str:
    """Start ``command`` in its own process group, and once its newest checkpoint in ``out`` lies
    after warmup and mid-epoch, SIGKILL the whole group. Returns that newest checkpoint's URI."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace")[-3000:] if proc.stderr else ""
                pytest.fail(f"the worker exited ({proc.returncode}) before it was killed:\n{err}")
            found = [u for u in ckpt.list_checkpoints(str(out)) if _step_of(u) > STEPS_PER_EPOCH]
            if found and _step_of(found[-1]) % STEPS_PER_EPOCH:
                os.killpg(proc.pid, signal.SIGSTOP)  # freeze it, then look again
                newest = ckpt.list_checkpoints(str(out))[-1]
                if _step_of(newest) % STEPS_PER_EPOCH:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=30)
                    return newest
                os.killpg(proc.pid, signal.SIGCONT)  # an epoch ended meanwhile: wait for more
            time.sleep(0.01)
        pytest.fail(f"no mid-epoch checkpoint appeared in {out} within {timeout_s} s")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        if proc.stderr:
            proc.stderr.close()


@pytest.mark.slow
def test_a_killed_worker_resumes_to_the_same_weights(
    warm_run: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A train worker (``python -m kshot.worker train``) SIGKILLed mid-epoch leaves only complete
    checkpoints; the restarted stage resumes from the newest (a mid-epoch one), cleans up what a
    kill during a save leaves behind, and ends with bitwise the weights of an uninterrupted run."""
    cfg = load_config(TINY, {"epochs": 3, "checkpoint_every_steps": 5})
    inputs = dict(warm_run)
    straight = tmp_path / "straight"
    run_stage("train", cfg, inputs, {"checkpoint": str(straight)})

    out = tmp_path / "killed"
    spec = LaunchSpec(
        stage="train", config=cfg.to_dict(), inputs=inputs, outputs={"checkpoint": str(out)}
    )
    killed_at = _kill_mid_epoch([sys.executable, "-m", "kshot.worker", *spec.worker_args()], out)

    left = ckpt.list_checkpoints(str(out))
    assert left and left[-1] == killed_at
    for uri in left:  # every checkpoint under its final name is whole
        assert torch.load(uri, weights_only=False)["step"] == _step_of(uri)
    # A kill in the middle of a save leaves the temporary file of that save: plant one for sure.
    stale = out / f".{Path(killed_at).name}.x1y2z3.partial"
    stale.write_bytes(Path(killed_at).read_bytes()[:1000])

    resumed_from = spy_on_resume(monkeypatch)
    run_stage("train", cfg, inputs, {"checkpoint": str(out)})

    assert resumed_from == [killed_at] and _step_of(killed_at) % STEPS_PER_EPOCH
    final, reference = ckpt.load_latest(str(out)), ckpt.load_latest(str(straight))
    assert final["step"] == reference["step"] == cfg.epochs * STEPS_PER_EPOCH
    _assert_same_weights(final, reference)
    for state in ("optimizer", "simplex_optimizer", "scheduler"):
        _assert_same_state(final[state], reference[state], state)
    assert _partials(out) == []
    assert _names(ckpt.list_checkpoints(str(out))) == _names(ckpt.list_checkpoints(str(straight)))
    assert curves(final["history"]) == curves(reference["history"])


def _count_train_steps(trainer: KShotTrainer) -> list[int]:
    """Wrap ``trainer.train_step``; the list returned collects the step each call started at."""
    started: list[int] = []
    original = trainer.train_step

    def counted() -> dict[str, torch.Tensor]:
        started.append(trainer.step)
        return original()

    trainer.train_step = counted  # type: ignore[method-assign]
    return started


def test_resuming_mid_epoch_keeps_the_epoch_curves(
    tiny_cfg: Config, warm_run: dict[str, str], tmp_path: Path
) -> None:
    """Resuming from a checkpoint in the middle of an epoch starts at the checkpoint's step, runs
    only the steps left, and gives the same weights and per-epoch curves as the uninterrupted run
    (which a restart from step 0 would give too: hence the step counts)."""
    cfg = tiny_cfg.replace(epochs=2, checkpoint_every_steps=5)
    data = load_train_data(cfg, warm_run["split"])
    straight = KShotTrainer(cfg, data, torch.device("cpu"))
    straight.fit(2, progress=False)

    first = KShotTrainer(cfg, data, torch.device("cpu"))
    first.fit(1, progress=False)
    for _ in range(10):  # stop 10 steps into epoch 2, as a kill would
        first.train_step()
    first.save(str(tmp_path / "mid"))
    resumed = KShotTrainer(cfg, data, torch.device("cpu"))
    assert resumed.resume(str(tmp_path / "mid")) == ckpt.list_checkpoints(str(tmp_path / "mid"))[-1]
    assert resumed.step == first.step == STEPS_PER_EPOCH + 10
    started = _count_train_steps(resumed)
    resumed.fit(2, progress=False)
    assert started == list(range(STEPS_PER_EPOCH + 10, 2 * STEPS_PER_EPOCH))

    _assert_same_weights(
        {"supernet": straight.supernet.state_dict(), "simplex": straight.simplex.state_dict()},
        {"supernet": resumed.supernet.state_dict(), "simplex": resumed.simplex.state_dict()},
    )
    assert curves(resumed.history) == curves(straight.history)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_the_warmup_stage_resumes_its_own_mid_epoch_checkpoint(
    where: str,
    warm_run: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    """A warmup stage restarted on an output folder (local, or in an S3 bucket) that holds a
    mid-epoch checkpoint (as a killed worker leaves) resumes from it: it trains only the steps
    left, and ends with bitwise the weights of the uninterrupted warmup."""
    cfg = load_config(TINY)
    if where == "local":
        out = str(tmp_path / "warm")
    else:
        out = storage.join(request.getfixturevalue("s3_bucket"), "warm")
    planted = KShotTrainer(cfg, load_train_data(cfg, warm_run["split"]), torch.device("cpu"))
    for _ in range(10):
        planted.train_step()
    planted.save(out)
    assert _names(ckpt.list_checkpoints(out)) == [ckpt.checkpoint_name(0, 10)]

    started: list[int] = []
    original_step = KShotTrainer.train_step

    def counted(self: KShotTrainer) -> dict[str, torch.Tensor]:
        started.append(self.step)
        return original_step(self)

    monkeypatch.setattr(KShotTrainer, "train_step", counted)
    result = run_stage("warmup", cfg, {"split": warm_run["split"]}, {"checkpoint": out})

    assert started == list(range(10, STEPS_PER_EPOCH))
    assert result == {"epoch": 1, "step": STEPS_PER_EPOCH}
    final = ckpt.load_latest(out)
    assert final["step"] == STEPS_PER_EPOCH
    _assert_same_weights(final, ckpt.load_latest(warm_run["checkpoint"]))


# --------------------------------------------------------------------------- flaky storage


def test_stages_finish_through_a_flaky_connection(
    flaky_remote: FlakyProxy, remote: Remote, warm_run: dict[str, str], tiny_cfg: Config
) -> None:
    """With 30% of storage requests failing (503 or a dropped connection), split → warmup on gs://
    or s3:// finish and write the same split and bitwise the same warmup checkpoint as on local
    disk."""
    flaky_proxy = flaky_remote
    flaky_proxy.fail_share = 0.3
    root = storage.join(remote.bucket, "flaky")
    split, warm = storage.join(root, "split.json"), storage.join(root, "warm")
    run_stage("split", tiny_cfg, {}, {"split": split})
    run_stage("warmup", tiny_cfg, {"split": split}, {"checkpoint": warm})

    assert flaky_proxy.failed >= 5, "the proxy should have failed some requests"
    assert flaky_proxy.failed >= 0.25 * (flaky_proxy.failed + flaky_proxy.forwarded)
    flaky_proxy.fail_share = 0.0
    assert storage.read_json(split) == storage.read_json(warm_run["split"])
    assert _names(ckpt.list_checkpoints(warm)) == _names(
        ckpt.list_checkpoints(warm_run["checkpoint"])
    )
    _assert_same_weights(ckpt.load_latest(warm), ckpt.load_latest(warm_run["checkpoint"]))


@pytest.mark.parametrize("faults_from", ["the start", "the first checkpoint"])
def test_faults_that_never_stop_fail_the_stage_clearly_and_write_nothing(
    faults_from: str,
    flaky_remote: FlakyProxy,
    remote: Remote,
    warm_run: dict[str, str],
    tiny_cfg: Config,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When every storage request fails (from the start, or from when training starts so that
    the checkpoint upload is what fails), warmup stops within the retry deadline with an error
    naming the URI and the deadline setting, and nothing is left at the output URI."""
    flaky_proxy = flaky_remote
    monkeypatch.setenv(storage.RETRY_DEADLINE_ENV, "1.5")
    out = storage.join(remote.bucket, "never", "warm")
    expected_uri = out
    if faults_from == "the start":
        flaky_proxy.fail_share = 1.0
    else:
        original_fit = KShotTrainer.fit

        def fit_then_break(self: KShotTrainer, *args: Any, **kwargs: Any) -> None:
            flaky_proxy.fail_share = 1.0
            original_fit(self, *args, **kwargs)

        monkeypatch.setattr(KShotTrainer, "fit", fit_then_break)
        expected_uri = storage.join(out, ckpt.checkpoint_name(1, STEPS_PER_EPOCH))

    started = time.monotonic()
    with pytest.raises(storage.StorageError) as failure:
        run_stage("warmup", tiny_cfg, {"split": warm_run["split"]}, {"checkpoint": out})
    assert time.monotonic() - started < 30
    message = str(failure.value)
    assert expected_uri in message and storage.RETRY_DEADLINE_ENV in message, message

    flaky_proxy.fail_share = 0.0
    assert storage.list_uris(storage.join(remote.bucket, "never")) == []
