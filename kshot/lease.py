"""One writer per output: a lease on an artifact URI, held while a stage writes it.

* **Local paths** — a lock file beside the output (``.<name>.lock``) under an exclusive
  ``flock``. The kernel releases the lock when its process ends however it ends, so a crashed
  writer never blocks the next one. The file holds the holder's host, pid and start time for the
  message a second writer gets; it is removed on release.
* **Object stores** (``gs://``, ``s3://``, ``minio://``) — a lease object
  ``<scheme>://<bucket>/.kshot-leases/<sha256 of the URI>.json`` in the output's bucket, created
  only if absent and renewed every third of its time to live, each write conditional on the
  version this holder wrote last (the generation on GCS, the ETag on S3;
  :func:`kshot.storage.create_if_absent`, :func:`~kshot.storage.replace_if_generation`,
  :func:`~kshot.storage.delete_if_generation`; each write carries its time, so its ETag, a digest
  of the content, changes too). A lease that stops being renewed has expired: a writer that finds
  one waits until it has seen it unchanged for the time to live (so it judges expiry by its own
  clock, never by another machine's), then takes it over; one whose holder renews it is refused at once. The objects live
  apart from the outputs, so a folder's listing holds only what the stage wrote. A holder that
  loses its lease (it could not renew in time and another writer took over) stops: the stage's
  main thread gets ``KeyboardInterrupt``.

An S3-compatible server that ignores the conditional headers (``If-None-Match``, ``If-Match``;
older MinIO releases do) cannot keep a second writer out: the first lease each process takes in
such a bucket finds out with a throw-away probe object, and the writer is warned, naming the
output, that a second writer would go unnoticed there.

The time to live is ``KSHOT_LEASE_TTL`` seconds (default 60).
"""

from __future__ import annotations

import _thread
import contextlib
import datetime
import errno
import fcntl
import hashlib
import json
import os
import signal
import socket
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from kshot import storage

__all__ = ["LEASE_TTL_ENV", "LeaseHeld", "hold", "lease_uri"]

LEASE_TTL_ENV = "KSHOT_LEASE_TTL"
_DEFAULT_TTL_S = 60.0
_LEASES_FOLDER = ".kshot-leases"
_CONDITIONS_HONOURED: dict[str, bool] = {}  # lease folder → whether its store refuses a 2nd create


class LeaseHeld(OSError):
    """Another writer holds the lease of an output; the message names it (host, pid, start)."""


def _ttl() -> float:
    raw = os.environ.get(LEASE_TTL_ENV, "")
    if not raw.strip():
        return _DEFAULT_TTL_S
    try:
        ttl = float(raw)
    except ValueError:
        ttl = -1.0
    if not ttl > 0:
        raise ValueError(f"environment variable {LEASE_TTL_ENV}={raw!r} must be seconds > 0")
    return ttl


def _holder(stage: str, output: str) -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "stage": stage,
        "output": output,
        "token": uuid.uuid4().hex,
    }


def _describe(holder: Any) -> str:
    if not isinstance(holder, dict):
        return "another process (not yet recorded)"
    return (
        f"stage {holder.get('stage')!r} on host {holder.get('host')}, pid {holder.get('pid')}, "
        f"started {holder.get('started')}"
    )


def _held_error(uri: str, holder: Any) -> LeaseHeld:
    return LeaseHeld(
        f"output {uri!r} is being written by {_describe(holder)}: one writer per output. Wait for "
        "it, or give this run another output"
    )


def lease_uri(uri: str) -> str:
    """Where the lease of output ``uri`` lives (a lock file, or a lease object)."""
    parsed = storage.Uri.parse(uri)
    if parsed.is_remote:
        digest = hashlib.sha256(uri.rstrip("/").encode()).hexdigest()
        return str(parsed.bucket_uri.join(_LEASES_FOLDER, f"{digest}.json"))
    path = Path(uri.rstrip("/") or uri).absolute()
    return str(path.parent / f".{path.name}.lock")


@contextlib.contextmanager
def hold(uris: Iterable[str], stage: str) -> Iterator[None]:
    """Hold the lease of every output in ``uris`` (in sorted order) until the block ends.

    Raises:
        LeaseHeld: another live writer holds one of them (those taken so far are released).
    """
    with contextlib.ExitStack() as stack:
        for uri in sorted(set(uris)):
            lease = _ObjectLease if storage.Uri.parse(uri).is_remote else _LocalLease
            stack.enter_context(lease(uri, _holder(stage, uri)))
        yield


class _LocalLease:
    """An exclusive ``flock`` on ``.<name>.lock`` beside the output."""

    def __init__(self, uri: str, holder: dict[str, Any]) -> None:
        self.uri, self.holder, self.path = uri, holder, Path(lease_uri(uri))
        self.fd = -1

    def __enter__(self) -> _LocalLease:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                raise _held_error(self.uri, _read_json(self.path)) from None
            # The holder before us may have removed the file between our open and our lock: then
            # we locked a file nobody else will see. Lock the one at the path.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(self.holder).encode())
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # while still locked: no one can have locked this file meanwhile
        os.close(self.fd)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text() or "null")
    except (OSError, ValueError):
        return None


def _honours_conditions(object_uri: str) -> bool:
    """Whether the store of the lease object ``object_uri`` refuses to create an object that
    exists (``If-None-Match: *``). GCS always does; an S3-compatible store is probed once per
    process and bucket with a throw-away object in the bucket's lease folder."""
    if storage.Uri.parse(object_uri).scheme == "gs":  # GCS always does
        return True
    folder = object_uri.rsplit("/", 1)[0]  # <scheme>://<bucket>/.kshot-leases
    if folder not in _CONDITIONS_HONOURED:
        probe = storage.join(folder, f"probe-{uuid.uuid4().hex}.json")
        storage.create_if_absent(probe, b"{}")
        try:
            _CONDITIONS_HONOURED[folder] = storage.create_if_absent(probe, b"{}") is None
        finally:
            storage.delete(probe)
    return _CONDITIONS_HONOURED[folder]


class _ObjectLease:
    """A lease object renewed by a background thread (see the module's notes)."""

    def __init__(self, uri: str, holder: dict[str, Any]) -> None:
        self.uri, self.holder, self.object = uri, holder, lease_uri(uri)
        self.ttl = _ttl()
        self.generation: storage.Generation = 0
        self.stopped = threading.Event()
        self.lost = False  # another writer holds it now: never delete theirs
        self.thread: threading.Thread | None = None
        self._restore_sigint: Callable[[], None] = lambda: None

    def _body(self) -> bytes:
        renewed = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
        return json.dumps({**self.holder, "renewed": renewed, "ttl_s": self.ttl}).encode()

    def _mine(self, found: tuple[bytes, storage.Generation] | None) -> bool:
        """Whether ``found`` is our own write (a retried request whose first attempt landed)."""
        if found is None:
            return False
        try:
            return json.loads(found[0]).get("token") == self.holder["token"]
        except (ValueError, AttributeError):
            return False

    def _acquire(self) -> storage.Generation:
        seen: tuple[storage.Generation, float] | None = None  # (generation, when first seen)
        while True:
            generation = storage.create_if_absent(self.object, self._body())
            if generation is not None:
                return generation
            found = storage.read_versioned(self.object)
            if found is None:
                continue  # released meanwhile: try again
            if self._mine(found):
                return found[1]
            data, generation = found
            now = time.monotonic()
            if seen is None or seen[0] != generation:
                if seen is not None:  # renewed while we watched: its holder is alive
                    raise _held_error(self.uri, _loads(data))
                seen = (generation, now)
            elif now - seen[1] >= self.ttl:  # unchanged for a whole time to live: expired
                taken = storage.replace_if_generation(self.object, self._body(), generation)
                if taken is not None:
                    return taken
                if self._mine(storage.read_versioned(self.object)):
                    return storage.read_versioned(self.object)[1]  # type: ignore[index]
                seen = None
                continue
            time.sleep(min(1.0, self.ttl / 10))

    def __enter__(self) -> _ObjectLease:
        if not _honours_conditions(self.object):
            warnings.warn(
                f"{self.uri}: the store ignores conditional writes (If-None-Match / If-Match), "
                "so its lease cannot keep a second writer out and one would go unnoticed; run "
                "one writer per output there, or use a store that honours them (current MinIO, "
                "SeaweedFS, AWS S3, GCS)",
                stacklevel=2,
            )
        self.generation = self._acquire()
        self._restore_sigint = _interruptible()
        self.thread = threading.Thread(target=self._renew, name="kshot-lease", daemon=True)
        self.thread.start()
        return self

    def _renew(self) -> None:
        last_renewal = time.monotonic()
        while not self.stopped.wait(self.ttl / 3):
            try:
                generation = storage.replace_if_generation(
                    self.object, self._body(), self.generation
                )
                if generation is None and self._mine(found := storage.read_versioned(self.object)):
                    generation = found[1]  # type: ignore[index]
            except OSError as e:  # the store did not answer: try again until the lease expires
                if time.monotonic() - last_renewal < self.ttl:
                    continue
                generation, why = None, f"could not renew it for {self.ttl:g} s ({e})"
            else:
                why = "another writer took it over"
            if generation is None:
                self.lost = True
                print(
                    f"kshot: lost the lease on output {self.uri!r}: {why}; stopping this writer",
                    file=sys.stderr,
                    flush=True,
                )
                _thread.interrupt_main()
                return
            self.generation, last_renewal = generation, time.monotonic()

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        if self.thread is not None:
            self.thread.join()
        self._restore_sigint()
        if self.lost:
            return
        with contextlib.suppress(OSError):  # an unreleased lease expires by itself
            storage.delete_if_generation(self.object, self.generation)


def _interruptible() -> Callable[[], None]:
    """Let the renewal thread stop the main thread: ``_thread.interrupt_main`` does nothing while
    SIGINT is ignored or left to the OS, as in a process that a shell started in the background
    (``cmd &`` ignores SIGINT), so Python's own handler is put in place while the lease is held.
    Returns what restores the previous handler."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGINT)
    if previous not in (signal.SIG_IGN, signal.SIG_DFL):
        return lambda: None
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return lambda: signal.signal(signal.SIGINT, previous)


def _loads(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None
