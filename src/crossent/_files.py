"""What a command writes appears whole or not at all, and replaces only crossent's own output.

The habits of git, rsync and SQLite (docs/failure-modes.md has what a user sees):

- **Claim first.** :func:`claimed` takes a lock on ``.crossent-lock.NAME`` beside the output
  (``flock``: the kernel releases it when the process ends, however it ends, so it is never
  stale), then checks that nothing is at the path or, with ``force``, that what is there is
  the command's own earlier output. The check and the claim are one step: of two commands
  racing for one path, one gets the lock and the other is refused. Before the caller's work
  starts, the output's folder is shown to be writable by writing a probe of 64 KiB.
- **Write aside.** The output is written under ``.crossent-XXXXXXXXXXXXXXXX.NAME`` (16 random
  hex digits) in the same folder, created with the umask's permissions, and fsynced.
- **Put in place in one step.** A new output is renamed into place with
  ``renameat2(RENAME_NOREPLACE)`` (or a hard link), an old file is replaced by ``rename``, and
  a new run folder is swapped with the old one by ``renameat2(RENAME_EXCHANGE)``. Where the
  exchange is missing (not Linux, or a file system without it) the old folder is first renamed
  to ``.crossent-old.NAME``; a kill between the two renames leaves it there, and the next claim
  of NAME puts it back.
- **Clean up after a kill.** The next claim of NAME removes what killed runs left beside it:
  no other process can be writing those names, since it holds the lock.

An error while writing becomes :class:`OutputError`, one line naming the path, with exit status
2 where the place was the user's choice (read-only, no permission) and 1 where the system
failed (disk full, I/O error).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# why an existing output is not one this command wrote, or None when it is
Recognise = Callable[[Path], "str | None"]

_PREFIX = ".crossent-"
_TEMPORARY = re.compile(r"\.crossent-[0-9a-f]{16}\.")
_PROBE_BYTES = 1 << 16
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_AT_FDCWD = -100
_UNSUPPORTED = {errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM}
_USERS_CHOICE = {  # the user can fix these by choosing another place
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.ENAMETOOLONG,
    errno.ELOOP,
}


class OutputError(Exception):
    """An output could not be written, and nothing was; ``status`` is the exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class OutputTaken(ValueError):
    """The output exists or another command is writing it, and ``force`` cannot replace it."""


def refusal(path: Path, option: str) -> str:
    """The words every command uses to refuse an existing output without ``--force``."""
    return f"{str(path)!r} already exists; pass --force to replace it, or choose another {option}"


@contextlib.contextmanager
def claimed(
    path: str | os.PathLike[str],
    *,
    folder: bool,
    force: bool,
    option: str,
    recognise: Recognise,
) -> Iterator[Path]:
    """Claim ``path`` and yield a temporary file (or folder) to write it into; when the block
    ends without an error, the temporary is put at ``path`` in one step.

    Without ``force`` an existing ``path`` is refused; with it, only what ``recognise`` accepts
    (or an empty file or folder) is replaced. ``option`` names the command-line option in
    messages. On any error or interruption nothing is left at ``path`` or beside it, and the
    missing parent folders that were created for it are removed again.
    """
    path = Path(path)
    if path.name in ("", ".", ".."):
        raise ValueError(f"{option} must name a file or folder of its own; got {str(path)!r}")
    made: list[Path] = []
    try:
        with _output_errors(path):
            _make_parents(path.parent, made)
            with _locked(path, option):
                _recover(path)
                if force:
                    _check_replaceable(path, folder, recognise, option)
                elif os.path.lexists(path):
                    raise OutputTaken(refusal(path, option))
                with _temporary(path, folder) as temporary:
                    yield temporary
                    _sync(temporary)
                    _put_in_place(temporary, path, folder, force, recognise, option)
    except BaseException:
        _remove_made(made)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary file beside ``path``, fsynced and renamed over ``path`` if the block succeeds.

    For library functions that write one file; a path that is itself a claimed temporary is
    written in place, since its claim puts it in place.
    """
    path = Path(path)
    if _TEMPORARY.match(path.name):
        yield path
        return
    with _temporary(path, folder=False, probe=False) as temporary:
        yield temporary
        _sync(temporary)
        os.replace(temporary, path)


def is_temporary(name: str) -> bool:
    """Whether ``name`` is one of the hidden names crossent writes under (a temporary, the
    lock, or an old folder being replaced)."""
    return name.startswith(_PREFIX)


# ---- the lock ----


@contextlib.contextmanager
def _locked(path: Path, option: str) -> Iterator[None]:
    """Hold the lock of ``path`` for the block; the lock file is removed at the end."""
    lock = path.with_name(f"{_PREFIX}lock.{path.name}")
    handle = _acquire(lock, path, option)
    try:
        yield
    finally:
        # removed while still held: a command that opened it meanwhile sees another file
        # at the lock's name when it gets the lock, and starts again (see _acquire)
        lock.unlink(missing_ok=True)
        os.close(handle)


def _acquire(lock: Path, path: Path, option: str) -> int:
    import fcntl

    while True:
        handle = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(handle, 32).decode(errors="replace").strip()
            os.close(handle)
            by = f" (process {holder})" if holder.isdigit() else ""
            raise OutputTaken(
                f"{str(path)!r} is being written by another crossent command{by}; wait for "
                f"it to finish, or choose another {option}"
            ) from None
        if _same_file(handle, lock):
            os.ftruncate(handle, 0)
            os.write(handle, f"{os.getpid()}\n".encode())
            return handle
        os.close(handle)


def _same_file(handle: int, path: Path) -> bool:
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(handle)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


# ---- under the lock: recovery, checks, the temporary, putting it in place ----


def _recover(path: Path) -> None:
    """Finish what a killed claim of ``path`` left: the old folder of a swap cut short goes
    back (or away, if the new one got in place), and temporaries are removed."""
    old = path.with_name(f"{_PREFIX}old.{path.name}")
    if os.path.lexists(old):
        if os.path.lexists(path):
            _remove(old)
        else:
            os.rename(old, path)
    mine = re.compile(rf"\.crossent-[0-9a-f]{{16}}\.{re.escape(path.name)}\Z")
    for name in os.listdir(path.parent):
        if mine.match(name):
            _remove(path.parent / name)


def _check_replaceable(path: Path, folder: bool, recognise: Recognise, option: str) -> None:
    """With ``--force``: what is at ``path`` must be this command's own output, or nothing."""
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        return
    reason = _not_replaceable(path, status, folder, recognise)
    if reason is not None:
        raise OutputTaken(
            f"{str(path)!r} {reason}; --force replaces only what crossent wrote, so it was "
            f"left untouched: remove it yourself or choose another {option}"
        )


def _not_replaceable(
    path: Path, status: os.stat_result, folder: bool, recognise: Recognise
) -> str | None:
    mode = status.st_mode
    if stat.S_ISLNK(mode):
        return "is a symbolic link"
    if folder and not stat.S_ISDIR(mode):
        return "is a file, not a folder"
    if not folder and stat.S_ISDIR(mode):
        return "is a folder, not a file"
    if not folder and not stat.S_ISREG(mode):
        return "is not a regular file"
    empty = not any(os.scandir(path)) if folder else status.st_size == 0
    return None if empty else recognise(path)


@contextlib.contextmanager
def _temporary(path: Path, folder: bool, *, probe: bool = True) -> Iterator[Path]:
    """A new temporary file or folder beside ``path``, removed unless renamed away."""
    temporary = path.with_name(f"{_PREFIX}{secrets.token_hex(8)}.{path.name}")
    if folder:
        os.mkdir(temporary, 0o777)  # the umask applies, as it does to every file inside
    else:
        os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        if probe:
            _probe(temporary / ".probe" if folder else temporary)
        yield temporary
    finally:
        _remove(temporary)


def _probe(path: Path) -> None:
    """Write and fsync 64 KiB at ``path``, then take them back: the place can hold a file."""
    handle = os.open(path, os.O_WRONLY | os.O_CREAT, 0o666)
    try:
        written = 0
        while written < _PROBE_BYTES:  # a write may stop short of a limit; the next one fails
            written += os.write(handle, bytes(_PROBE_BYTES - written))
        os.fsync(handle)
        os.ftruncate(handle, 0)
    finally:
        os.close(handle)
    if path.name == ".probe":
        path.unlink()


def _sync(path: Path) -> None:
    """fsync a file, or every file and folder in a folder, so a crash cannot lose them."""
    if not path.is_dir():
        _fsync(path)
        return
    for folder, _, files in os.walk(path):
        for name in files:
            _fsync(Path(folder, name))
        _fsync(Path(folder))


def _fsync(path: Path) -> None:
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _put_in_place(
    temporary: Path, path: Path, folder: bool, force: bool, recognise: Recognise, option: str
) -> None:
    """Rename the finished temporary to ``path``: never over anything but a replaceable
    output of this command, and never leaving a moment with nothing at ``path``."""
    if os.path.lexists(path) and force:
        _check_replaceable(path, folder, recognise, option)  # it may have changed meanwhile
        if folder:
            _swap(temporary, path)
        else:
            os.replace(temporary, path)
    else:
        try:
            _rename_new(temporary, path, folder)
        except FileExistsError:
            raise OutputTaken(refusal(path, option)) from None
    _fsync(path.parent)


def _rename_new(source: Path, target: Path, folder: bool) -> None:
    """Rename ``source`` to ``target``; FileExistsError if ``target`` exists."""
    if _renameat2(source, target, _RENAME_NOREPLACE):
        return
    if not folder:
        with contextlib.suppress(PermissionError, NotImplementedError):  # no hard links here
            os.link(source, target)
            os.unlink(source)
            return
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))
    os.rename(source, target)


def _swap(new: Path, path: Path) -> None:
    """Put folder ``new`` at ``path`` in place of the old one, then remove the old one."""
    if _renameat2(new, path, _RENAME_EXCHANGE):
        _remove(new)  # which now holds the old folder
        return
    old = path.with_name(f"{_PREFIX}old.{path.name}")
    os.rename(path, old)  # killed before the next rename, the next claim puts it back
    try:
        os.rename(new, path)
    except OSError:
        os.rename(old, path)
        raise
    _remove(old)


def _renameat2(source: Path, target: Path, flags: int) -> bool:
    """Linux's renameat2; False where the system or the file system does not have it."""
    function = _libc_renameat2()
    if function is None:
        return False
    if function(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in _UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code), str(target))


@functools.cache
def _libc_renameat2() -> Any:
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    function.argtypes.append(ctypes.c_uint)
    function.restype = ctypes.c_int
    return function


# ---- removal, parent folders and errors ----


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _make_parents(folder: Path, made: list[Path]) -> None:
    """Create ``folder`` and its missing parents, adding each one created to ``made``."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for created in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(created)
            made.append(created)


def _remove_made(made: list[Path]) -> None:
    for folder in reversed(made):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only if still empty


@contextlib.contextmanager
def _output_errors(path: Path) -> Iterator[None]:
    """Turn an OSError of the output into one line that names it: nothing was written."""
    try:
        yield
    except OSError as error:
        if error.filename is not None and not _about_output(str(error.filename), path):
            raise  # another file's error (an input, say): not this output's
        code = error.errno if error.errno is not None else _errno_in(str(error))
        reason = os.strerror(code) if code is not None else str(error)
        status = 2 if code in _USERS_CHOICE else 1
        message = f"cannot write {str(path)!r}: {reason}; nothing was written"
        raise OutputError(message, status) from None


def _about_output(filename: str, path: Path) -> bool:
    """Whether an error's file is the output, a folder above it, or one of its temporaries."""
    named = Path(os.path.abspath(filename))
    output = Path(os.path.abspath(path))
    return named in (output, *output.parents) or any(map(is_temporary, named.parts))


def _errno_in(text: str) -> int | None:
    """The errno in pyarrow's messages ("... [errno 28] No space left on device")."""
    found = re.search(r"\[errno (\d+)\]", text, re.IGNORECASE)
    return int(found.group(1)) if found else None
