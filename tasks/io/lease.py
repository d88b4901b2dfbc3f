"""A lease on an output folder: one writing command at a time, on local disk and on object stores alike.

Every command that writes into an output (``run``, ``rerun``, ``calibrate``, ``import-review``,
``report``; ``publish`` on its destination) holds the output's lease while it writes. A second
writer is refused with one line naming the holder; readers (``export``, ``publish`` of the
output) refuse while a writer holds it, and check every manifest part against the pointer
(``manifest/_parts.json``) so a manifest being rewritten is never read half-replaced.

Protocol, under ``OUTPUT/_lease/`` (no rename, no lock service: only create-if-absent, which
local disks and S3 both give)::

    _lease/<generation:010d>.json   {"token", "owner": {command, host, pid, user}, "acquired_at",
                                     "expires_at", "released"}

* **acquire**: read the highest generation ``N``. If it is not released and not expired, the
  output is held: :class:`LeaseHeld` names its owner. Otherwise create ``N + 1`` if absent; of
  two takers only one creates it, the other reads the winner and is refused.
* **heartbeat**: the holder rewrites its own generation file with a later ``expires_at`` every
  ``ttl / 3`` seconds (only the holder writes that file). A process that dies stops renewing; its
  lease can be taken once it expires (``SEGFLOW_LEASE_TTL_S``, default 60 s), or at once from the same
  host when its process no longer exists (a crash or ``kill -9``, then ``segflow rerun`` right away).
* **check**: before a commit point a holder calls :meth:`Lease.check`; if another process has
  taken the lease meanwhile (ours expired: a stalled process), it stops with :class:`LeaseLost`
  instead of writing over the new holder's work.
* **release**: mark the generation file ``released: true``, then remove it (older generations were removed
  when it was taken), so a finished output keeps no ``_lease/`` files.

Within one process the lease is re-entrant: ``segflow run`` holds it, and the flow, finalize and
the report inside it share that one lease. Worker processes (Dask, Ray) never take it: shards
commit by create-if-absent (:mod:`segflow.tasks.shard.commit`), which needs no lease.
Expiry compares wall clocks of different machines: keep them in sync (NTP), as S3 itself needs.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TypedDict

from segflow.tasks.io.storage import create_exclusive, is_local, join, open_fs, redact, write_bytes

__all__ = ["Lease", "LeaseHeld", "LeaseLost", "current_holder", "hold", "require_no_writer"]

_DIR = "_lease"


class LeaseHeld(RuntimeError):
    """Another command holds the output's lease (the message names it and says what to do)."""


class LeaseLost(RuntimeError):
    """This command's lease expired and another command took the output: it stops before writing more."""


def _ttl() -> float:
    try:
        return max(1.0, float(os.environ.get("SEGFLOW_LEASE_TTL_S", "60")))
    except ValueError:
        return 60.0


def _key(output: str) -> str:
    return output.rstrip("/")


def _describe(record: LeaseRecord, output: str) -> str:
    owner = record.get("owner") or {}
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(record.get("acquired_at") or 0)))
    left = float(record.get("expires_at") or 0) - time.time()
    return (
        f"{redact(output)} is being written by `segflow {str(owner.get('command', '?'))[:40]}` "
        f"(host {str(owner.get('host', '?'))[:64]}, pid {str(owner.get('pid', '?'))[:12]}) since {since}; "
        f"try again when it finishes (its lease lapses {max(0, round(left))} s after its last heartbeat "
        "if that process is gone)"
    )


def _generations(fs: Any, root: str) -> list[int]:
    try:
        names = fs.ls(root, detail=False)
    except FileNotFoundError:
        return []
    out = []
    for n in names:
        base = n.rstrip("/").rsplit("/", 1)[-1]
        if base.endswith(".json") and base[:-5].isdigit() and len(base) == 15:
            out.append(int(base[:-5]))
    return sorted(out)


def _read(fs: Any, path: str) -> LeaseRecord | None:
    try:
        data = json.loads(fs.cat_file(path))
    except (FileNotFoundError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    record: LeaseRecord = data  # type: ignore[assignment]  # keys checked where read (LeaseRecord)
    return record


def _live(record: LeaseRecord | None) -> bool:
    """Held: not released, not expired, and -- when its owner ran on this host -- its process still exists."""
    if not record or record.get("released") or float(record.get("expires_at") or 0) <= time.time():
        return False
    owner = record.get("owner") or {}
    pid = owner.get("pid")
    if owner.get("host") == socket.gethostname() and isinstance(pid, int) and pid != os.getpid():
        try:
            os.kill(pid, 0)  # signal 0: does the process exist?
        except ProcessLookupError:
            return False  # killed (a crash, kill -9): its lease is free at once, not after its expiry
        except PermissionError:
            return True  # another user's live process
    return True


def current_holder(output: str) -> LeaseRecord | None:
    """The live lease record of ``output`` (not released, not expired), or None."""
    fs, root = open_fs(join(output, _DIR))
    gens = _generations(fs, root)
    if not gens:
        return None
    record = _read(fs, f"{root}/{gens[-1]:010d}.json")
    return record if _live(record) else None


class LeaseRecord(TypedDict, total=False):
    """A lease generation's file (``OUTPUT/_lease/<generation>.json``). Read from an output others can write:
    every key may be missing or of another type, so readers use ``.get`` and check."""

    token: str
    owner: dict[str, Any]  # command, host, pid, user
    acquired_at: float
    expires_at: float
    released: bool


@dataclass
class Lease:
    """A held lease (see the module docstring). Use :func:`hold`."""

    output: str
    command: str
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    generation: int = 0
    depth: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lost: bool = False

    def _record(self, released: bool = False) -> bytes:
        now = time.time()
        record: LeaseRecord = {
            "token": self.token,
            "owner": {
                "command": self.command,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "user": _user(),
            },
            "acquired_at": self._acquired,
            "expires_at": now + _ttl(),
            "released": released,
        }
        return json.dumps(record).encode()

    def _path(self) -> tuple[Any, str]:
        fs, root = open_fs(join(self.output, _DIR))
        return fs, f"{root}/{self.generation:010d}.json"

    def acquire(self) -> None:
        fs, root = open_fs(join(self.output, _DIR))
        self._acquired = time.time()
        for _ in range(3):
            gens = _generations(fs, root)
            top = gens[-1] if gens else 0
            if gens:
                record = _read(fs, f"{root}/{top:010d}.json")
                if record is not None and _live(record):
                    raise LeaseHeld(_describe(record, self.output))
            self.generation = top + 1
            if create_exclusive(fs, f"{root}/{self.generation:010d}.json", self._record()):
                for old in gens[:-1]:  # generations before the one we took over: history nobody needs
                    with contextlib.suppress(FileNotFoundError):
                        fs.rm_file(f"{root}/{old:010d}.json")
                self._thread = threading.Thread(target=self._beat, name="segflow-lease", daemon=True)
                self._thread.start()
                return
            winner = _read(fs, f"{root}/{self.generation:010d}.json")
            if winner is not None and _live(winner):
                raise LeaseHeld(_describe(winner, self.output))
        raise LeaseHeld(f"{redact(self.output)}: the lease changed hands three times while taking it; try again")

    def _beat(self) -> None:
        while not self._stop.wait(_ttl() / 3):
            try:
                self.check()
                fs, path = self._path()
                write_bytes(fs, path, self._record())
            except LeaseLost:
                self._lost = True
                return
            except OSError:  # a storage hiccup: try again at the next beat (the lease lasts 3 beats)
                continue

    def check(self) -> None:
        """Raise :class:`LeaseLost` unless this lease is still the output's newest and ours."""
        fs, root = open_fs(join(self.output, _DIR))
        gens = _generations(fs, root)
        record = _read(fs, f"{root}/{self.generation:010d}.json")
        if self._lost or not gens or gens[-1] != self.generation or (record or {}).get("token") != self.token:
            self._lost = True
            raise LeaseLost(
                f"{redact(self.output)}: this command's lease lapsed and another command took the output; "
                "nothing more was written: run the command again"
            )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._lost:
            return
        with contextlib.suppress(OSError, LeaseLost):
            self.check()
            fs, path = self._path()
            write_bytes(fs, path, self._record(released=True))  # a reader that listed it sees it released
            fs.rm_file(path)  # an output written to completion keeps no trace of its lease
            if is_local(fs):
                with contextlib.suppress(OSError):
                    os.rmdir(path.rsplit("/", 1)[0])


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "?"


_held: dict[str, Lease] = {}
_held_lock = threading.Lock()


@contextlib.contextmanager
def hold(output: str, command: str) -> Iterator[Lease]:
    """Hold ``output``'s lease for the block (re-entrant within this process).

    Raises:
      LeaseHeld: another command holds it.
    """
    key = _key(output)
    with _held_lock:
        lease = _held.get(key)
        if lease is None:
            lease = Lease(output, command)
            lease.acquire()
            _held[key] = lease
        lease.depth += 1
    try:
        yield lease
    finally:
        with _held_lock:
            lease.depth -= 1
            if lease.depth == 0:
                _held.pop(key, None)
                lease.release()


def held_here(output: str) -> Lease | None:
    """This process's lease on ``output``, if it holds one."""
    with _held_lock:
        return _held.get(_key(output))


def require_no_writer(output: str) -> None:
    """For readers: raise :class:`LeaseHeld` when another command is writing ``output`` (this process's own
    lease does not count)."""
    if held_here(output) is not None:
        return
    record = current_holder(output)
    if record is not None:
        raise LeaseHeld(_describe(record, output))
