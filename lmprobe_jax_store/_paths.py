"""Every path a store reads or writes stays inside the store.

A manifest names files by relative paths, and a manifest can be edited by anyone who can write the
directory. So a relative path is checked before it is joined (no absolute paths, no ``..``, no empty or
``.`` parts, no backslashes or NUL), every directory on the way down is checked not to be a symbolic
link, and the file itself is opened with ``O_NOFOLLOW``. A store never reads or writes through a link
inside itself; the root a user names may itself be a link.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


def check_relative(relative: object, where: object = "the store") -> str:
    """``relative`` if it is a plain relative path (``a/b.safetensors``), else ValueError."""
    if not isinstance(relative, str) or not relative or "\\" in relative or "\0" in relative:
        raise ValueError(f"Corrupted store: {relative!r} in {where} is not a file name inside the store.")
    parts = relative.split("/")
    if relative.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"Corrupted store: {relative!r} in {where} points outside the store.")
    return relative


def confined(root: Path, relative: str, *, make_dirs: bool = False) -> Path:
    """``root / relative``, after checking ``relative`` and that no directory between ``root`` and the
    file is a symbolic link (or not a directory). ``make_dirs`` creates the missing ones."""
    check_relative(relative)
    current = Path(root)
    for part in relative.split("/")[:-1]:
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            if not make_dirs:
                continue  # opening the file will fail with "missing", which is the right message
            os.mkdir(current)
            mode = os.lstat(current).st_mode
        if stat.S_ISLNK(mode):
            raise ValueError(f"{current} is a symbolic link: a store never reads or writes through links.")
        if not stat.S_ISDIR(mode):
            raise ValueError(f"Corrupted store: {current} should be a directory.")
    return Path(root) / relative


def open_nofollow(path: Path, flags: int = os.O_RDONLY, mode: int = 0o644) -> int:
    """``os.open`` that refuses a symbolic link as the last component (ValueError)."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ValueError(f"{path} is a symbolic link: a store never reads or writes through links.") from None
        raise


def read_bytes(root: Path, relative: str) -> bytes:
    fd = open_nofollow(confined(root, relative))
    try:
        with os.fdopen(os.dup(fd), "rb") as handle:
            return handle.read()
    finally:
        os.close(fd)


def sibling(root: Path, suffix: str) -> Path:
    """``<parent>/.<name>.<suffix>``: where a store keeps its lock, its staging directory while it is
    written, and the previous version while it is replaced (beside the store, not inside it, so that the
    store directory can be swapped whole)."""
    return root.parent / f".{root.name}.{suffix}"


def staging_path(root: Path) -> Path:
    """The directory a store is written in before it is renamed to ``root``."""
    return sibling(root, "partial")


def fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_name(path: Path) -> Path:
    """The name a file is written under before it is renamed to ``path``; its owner's pid is in it, so a
    cleanup can tell it from a finished file."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write(root: Path, relative: str, data: bytes) -> None:
    """Write ``root / relative`` so that readers see the old file or the whole new one, never a part:
    a temporary file in the same directory, fsynced, then renamed over the target."""
    path = confined(root, relative, make_dirs=True)
    tmp = temporary_name(path)
    fd = open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
