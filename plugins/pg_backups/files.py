"""Owner-only files and directories for the tools' configuration (they hold S3 keys)."""

from __future__ import annotations

import os
import pwd
from pathlib import Path


def chown_to(path: str | os.PathLike, os_user: str | None) -> None:
    """Give ``path`` to the tool's OS user when we run as root (the tool must own what it writes)."""
    if os_user and os.geteuid() == 0:
        pw = pwd.getpwnam(os_user)
        os.chown(path, pw.pw_uid, pw.pw_gid)


def write_private(path: str | os.PathLike, text: str, os_user: str | None, mode: int = 0o600) -> None:
    """Write a file only its owner (the tool's OS user) can read, atomically."""
    path = Path(path)
    if not path.parent.exists():
        ensure_dir(path.parent, None, 0o755)
    tmp = path.with_name(f".{path.name}.tmp")
    # A leftover temporary file keeps its old mode through O_TRUNC (the secrets would be readable
    # until the chmod), and a symlink planted there would make root write them elsewhere: start anew.
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(tmp, mode)
    chown_to(tmp, os_user)
    chown_to(path.parent, os_user)
    os.replace(tmp, path)


def ensure_dir(directory: str | os.PathLike, os_user: str | None, mode: int = 0o750) -> None:
    """``directory`` owned by the tool's user with ``mode``, whatever the caller's umask: the
    parents it creates get 0755, so the tool's user can reach it (a umask of 077 made them 0700
    root, and pgBackRest then failed with a permission error)."""
    directory = Path(directory)
    missing = [p for p in (directory, *directory.parents) if not p.exists()]
    directory.mkdir(parents=True, exist_ok=True)
    for created in missing[1:]:
        os.chmod(created, 0o755)
    os.chmod(directory, mode)
    chown_to(directory, os_user)
