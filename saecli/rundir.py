"""Claiming a run folder: created and locked, atomically, before anything in it is read for
resumption, deleted or written, and before the model loads.

A claim is an exclusive ``flock`` on ``RUN_DIR/.saecli.lock``. The kernel drops it when the holding
process ends, however it ends (``kill -9``, the OOM killer, a closed lid), so a lock left by a
dead process, or whose recorded pid now belongs to another program, is simply taken over; no pid
is trusted. The file records who holds it, for the error message of the process that is refused.

What a claim guarantees:

* a new folder (``--out`` or the default ``runs/<UTC second>-<preset>``) is this process's alone:
  two runs into one ``--out`` give one run and one one-line refusal; two default names taken in the
  same second get two folders (``-2``, ``-3``, ... is appended);
* an existing folder is used only when empty, or with ``force`` (then :func:`clear_outputs` deletes
  only the files saecli writes, never the user's), or for ``resume``;
* a claim that ends before anything was written leaves nothing behind: the folders it created are
  removed again (bad input found after the claim loses nothing and creates nothing).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from saecli.errors import SaecliError
from saecli.io import MANIFEST_FILE, METRICS_FILE, REPORT_FILES, RESIDUALS_FILE, SAMPLES_FILE, remove_parts, remove_temporaries

LOCK_FILE = ".saecli.lock"
RUNS_ROOT = Path("runs")
MAX_SUFFIX = 1000


def run_stamp() -> str:
    """The UTC second a default run or bench folder is named after."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


@dataclass
class Claim:
    """A run folder held by this process (see the module docstring). Use as a context manager, or
    call :meth:`release` (success, or failure after writing) / :meth:`abandon` (failure)."""

    path: Path
    created: list[Path] = field(default_factory=list)
    """Folders this claim created, outermost first: removed again if nothing was written."""
    fd: int | None = None

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:
            self.release()
        else:
            self.abandon()

    def release(self) -> None:
        """Let go of the lock; the folder and everything written in it stay."""
        if self.fd is None:
            return
        # Unlink before unlocking: a process that opened the old file and then gets the lock sees
        # that its inode is no longer the folder's lock file and tries again (see _lock).
        (self.path / LOCK_FILE).unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = None

    def abandon(self) -> None:
        """Release, and remove the folders this claim created if nothing was written into them."""
        self.release()
        remove_empty(self.created)


def claim_run_dir(path: Path | None, *, preset_name: str, force: bool = False, resume: bool = False) -> Claim:
    """Create (or take) and lock the run folder ``path``; None is a new default folder.

    ``resume`` takes an existing run folder; ``force`` takes an existing folder whatever it holds
    (the caller then deletes saecli's old files with :func:`clear_outputs`); otherwise an existing
    folder must be empty.
    """
    if path is None:
        return _claim_new_default(RUNS_ROOT, preset_name)
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise SaecliError(
            f"output folder {path} is a symbolic link to {os.readlink(path)}, which does not exist",
            hint="remove the link or point it at a folder",
        )
    if path.exists() and not path.is_dir():
        raise SaecliError(f"output path {path} exists and is not a folder", hint="choose another --out")
    if resume and not path.is_dir():
        raise SaecliError(f"{path} is not a saecli run folder (it does not exist)", hint="give the folder of the run to continue")
    claim = Claim(path, created=make_folders(path))
    try:
        claim.fd = _lock(path)
        if resume:
            if not (path / MANIFEST_FILE).is_file():
                raise SaecliError(
                    f"{path} is not a saecli run folder (no {MANIFEST_FILE})", hint="give the folder of the run to continue"
                )
        elif not force:
            others = sorted(p.name for p in path.iterdir() if p.name != LOCK_FILE)
            if others:
                raise SaecliError(
                    f"output folder {path} already exists and is not empty (it holds {others[0]}"
                    + (f" and {len(others) - 1} more)" if len(others) > 1 else ")"),
                    hint="choose another --out, pass --force to replace saecli's files in it, or --resume to continue its run",
                )
    except BaseException:
        claim.abandon()
        raise
    return claim


def _claim_new_default(root: Path, preset_name: str) -> Claim:
    """``runs/<UTC second>-<preset>``, or the first free ``...-2``, ``...-3`` (see :func:`new_folder`)."""
    created = make_folders(root)
    try:
        path = new_folder(root, f"{run_stamp()}-{preset_name}")
    except BaseException:
        remove_empty(created)
        raise
    claim = Claim(path, created=[*created, path])
    try:
        claim.fd = _lock(path)
    except BaseException:
        claim.abandon()
        raise
    return claim


def new_folder(root: Path, base: str) -> Path:
    """Create ``root/base``, or the first free ``base-2``, ``base-3``, ...: ``mkdir`` is atomic, so two
    processes naming a folder after the same second never share it."""
    for n in range(1, MAX_SUFFIX + 1):
        candidate = root / (base if n == 1 else f"{base}-{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        except OSError as exc:
            raise not_writable(candidate, candidate.parent, exc) from None
        return candidate
    raise SaecliError(f"no free folder name under {root} for {base}", hint="pass --out")


def make_folders(path: Path) -> list[Path]:
    """Create ``path`` and its missing parents; the ones this call created, outermost first (for
    :func:`remove_empty`)."""
    missing = []
    for folder in [path, *path.absolute().parents]:
        if folder.is_dir():
            break
        if folder.exists() or folder.is_symlink():
            raise SaecliError(f"output folder {path} cannot be created: {folder} is a file", hint="choose another --out")
        missing.append(folder)
    created: list[Path] = []
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            continue  # another process made it in the meantime: it is not ours to remove
        except OSError as exc:
            remove_empty(created)
            raise not_writable(path, folder, exc) from None
        created.append(folder)
    return created


def remove_empty(created: list[Path]) -> None:
    """Remove folders made by :func:`make_folders` / :func:`new_folder`, innermost first, as long as
    they are empty: whatever was written in them stays."""
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            break


def not_writable(path: Path, where: Path, exc: OSError) -> SaecliError:
    """The one-line error for an output folder that refuses to be made or written."""
    reason = exc.strerror or str(exc)
    hint = "free some space, or choose another --out" if exc.errno == errno.ENOSPC else "choose another --out"
    return SaecliError(f"output folder {path} cannot be written ({where}: {reason})", hint=hint)


def _lock(folder: Path) -> int:
    """An exclusive lock on ``folder/.saecli.lock``, or a one-line refusal naming its holder."""
    path = folder / LOCK_FILE
    for _ in range(10):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise not_writable(folder, folder, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise SaecliError(
                f"another saecli process ({holder}) is writing to {folder}",
                hint="wait for it to finish; if you stop it, continue its run with --resume",
            ) from None
        except OSError as exc:  # a file system without locks
            os.close(fd)
            raise not_writable(folder, folder, exc) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the previous holder removed the file between our open and our lock
            os.close(fd)
            continue
        try:
            record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": run_stamp(), "argv": sys.argv[:6]})
            os.ftruncate(fd, 0)
            os.pwrite(fd, record.encode(), 0)
        except OSError as exc:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise not_writable(folder, folder, exc) from None
        return fd
    raise SaecliError(f"could not lock {folder}: its lock file keeps changing", hint="is another program deleting it?")


def _holder(fd: int) -> str:
    try:
        record = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {record['pid']} on {record['host']}, since {record['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown pid"


def clear_outputs(run_dir: Path) -> list[Path]:
    """For ``--force``: delete what saecli writes in a run folder (results, manifest, report files,
    part files and their temporaries) and nothing else; the files that were removed."""
    removed = []
    for name in (METRICS_FILE, MANIFEST_FILE, SAMPLES_FILE, RESIDUALS_FILE, *REPORT_FILES):
        path = run_dir / name
        if path.is_file():
            path.unlink()
            removed.append(path)
    removed += remove_temporaries(run_dir)
    removed += remove_parts(run_dir)
    return removed
