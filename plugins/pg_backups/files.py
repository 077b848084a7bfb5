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
    path.parent.mkdir(parents=True, exist_ok=True)
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
    Path(directory).mkdir(parents=True, exist_ok=True, mode=mode)
    chown_to(directory, os_user)
