"""A Hugging Face Hub cache written by hand, in huggingface_hub's layout (tests: offline).

Content goes in ``blobs/<sha256>``, the snapshot is relative symlinks ``snapshots/<commit>/<path>``
-> ``../../blobs/<sha256>``, and ``refs/main`` holds the commit, which is how an offline lookup of
revision "main" finds the snapshot. Symlinks are what a real cache has on Linux and macOS; where
they cannot be made the file is copied (as huggingface_hub itself does on Windows without
developer mode)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path


def commit_for(repo_id: str) -> str:
    """A fixed 40-hex revision per repo, the same on every run."""
    return hashlib.sha1(repo_id.encode()).hexdigest()


def add_repo(cache: Path, kind: str, repo_id: str, files: dict[str, bytes | str], *, refs: bool = True) -> Path:
    """Put ``files`` (repo path → content) into ``cache`` as repo ``{kind}--{owner}--{name}``
    (kind ``models`` or ``datasets``); returns the snapshot folder."""
    repo_dir = cache / f"{kind}--{repo_id.replace('/', '--')}"
    commit = commit_for(repo_id)
    snapshot = repo_dir / "snapshots" / commit
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    if refs:
        (repo_dir / "refs").mkdir(exist_ok=True)
        (repo_dir / "refs" / "main").write_text(commit)
    for rel, content in files.items():
        data = content.encode() if isinstance(content, str) else content
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        try:
            link.symlink_to(os.path.relpath(blob, link.parent))
        except OSError:
            shutil.copyfile(blob, link)
    return snapshot
