"""``saecli`` in a process of its own, without paying its imports each time.

A test that must kill a run for real (SIGKILL at a crash point) needs a process of its own; started
with ``python -m saecli`` it spends ~6 s of CPU importing TransformerLens and SAELens before it does
a thing, most of such a test's time. :func:`saecli_process` forks it instead from a
``multiprocessing`` fork server that imported them once (the server never runs torch, so the forked
child starts clean, unlike a fork of the test process and its thread pools). The child is a real
process: its own pid, environment, working folder and file descriptors 1 and 2, killed by the signal
a crash point sends; what it returns reads as ``subprocess.run``'s result does.

The children take the one torch thread the suite's environment gives (``OMP_NUM_THREADS``, set by
conftest). Tests that check how saecli starts (which modules a command imports, ``python -m saecli``,
what a pipe receives) and scripts that set their own threads keep ``subprocess``."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path

PRELOAD = ["transformer_lens", "sae_lens", "saecli.cli", "saecli.runner", "saecli.engine", "saecli.models"]
_context = None


def _server():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def _main(args: Sequence[str], env: Mapping[str, str], cwd: str | None, out: str, err: str, prelude: str) -> None:
    """The child: ``saecli ARGS``, as its own process would run it."""
    os.environ.clear()
    os.environ.update(env)
    if cwd is not None:
        os.chdir(cwd)
    for fd, path in ((1, out), (2, err)):
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(handle, fd)
        os.close(handle)
    sys.argv = ["saecli", *args]
    code = 1
    try:
        exec(prelude, {})
        from saecli.cli import main

        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(code)


def saecli_process(args: Sequence[str], env: Mapping[str, str] | None = None, *, cwd: Path | None = None,
                   whole_env: bool = False, prelude: str = "", timeout: float = 300) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """``saecli ARGS`` in a forked process with this environment plus ``env`` (with ``whole_env``,
    ``env`` alone), after the Python statements ``prelude`` (e.g. a module setting changed): its exit
    code (minus the signal that killed it), stdout and stderr."""
    command = ["saecli", *args]
    with tempfile.TemporaryDirectory(prefix="saecli-process-") as folder:
        out, err = os.path.join(folder, "stdout"), os.path.join(folder, "stderr")
        environ = dict(env or {}) if whole_env else {**os.environ, **(env or {})}
        child = _server().Process(target=_main, args=(list(args), environ, str(cwd) if cwd else None, out, err, prelude))
        child.start()
        child.join(timeout)
        if child.exitcode is None:
            child.kill()
            child.join()
            raise subprocess.TimeoutExpired(command, timeout)
        read = lambda path: Path(path).read_text(errors="replace")  # noqa: E731
        return subprocess.CompletedProcess(command, child.exitcode, read(out), read(err))
