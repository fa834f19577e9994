"""Writing files safely: outputs are checked before any work, written under temporary names, and renamed into place.

Every front door calls `check_outputs` first, so a run that could not save its results fails in one line before it
computes anything. A single file is written with `atomic_output`: to a temporary file beside its destination,
renamed into place when complete (`os.replace` is atomic on one file system). A command's set of outputs is
written with `staged_files` or `staged_folder`: into a hidden staging folder that is moved into place only when
every file in it is complete, so an error or Ctrl-C leaves no partial set behind.

Temporary names are recognisable, `.<name>.sync-splat-tmp-<pid>-<random><suffix>` beside the destination `<name>`.
A process killed outright (SIGKILL, power loss) cannot remove its temporaries, so the next write to the same
destination removes those whose process is gone. Finished files get the mode a normal new file gets
(`0o666 & ~umask`; folders `0o777 & ~umask`), not the private 0600 of `tempfile`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from sync_splat.errors import InputError, note_written

TEMP_MARK = ".sync-splat-tmp-"
"""What every temporary name of ours contains, after `.<destination name>`."""


def check_outputs(*paths: str | os.PathLike[str], flag: str = "--out") -> None:
    """Before any work: raise `InputError` unless every one of `paths` can be written as a new file or folder.

    An output must not exist yet (outputs are never overwritten), and the folder it goes into must exist or be
    creatable: its nearest existing ancestor must be a folder in which this process can create files (tried for
    real, since permission bits do not bind root and read-only file systems ignore them).

    Args:
        paths: the files or folders the command will write.
        flag: the command-line option the paths came from, for the message.
    """
    for path in map(Path, paths):
        if path.exists() or path.is_symlink():
            raise InputError(f"{path} already exists: choose another {flag} or remove it first (outputs are never "
                             "overwritten)")  # fmt: skip
    checked: set[Path] = set()
    for path in map(Path, paths):
        folder = _nearest_existing(path.parent)
        if folder in checked:
            continue
        if not folder.is_dir():
            raise InputError(f"{flag} {path}: {folder} is a file, not a folder: choose an {flag} in a folder")
        _probe_writable(folder, path, flag)
        checked.add(folder)


def refuse_existing(*paths: str | os.PathLike[str]) -> None:
    """Outputs are never overwritten: raise `InputError` before any work when one of `paths` already exists."""
    for path in map(Path, paths):
        if path.exists():
            raise InputError(f"{path} already exists: choose another --out or remove it first (outputs are never "
                             "overwritten)")  # fmt: skip


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write to; on success it is renamed to `path`, on error it is removed.

    The temporary file keeps `path`'s suffix, so writers that pick a format from the extension still work. Stale
    temporaries of `path` left by killed processes are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp_name = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
        if not any(TEMP_MARK in part for part in path.parts):  # a staged file counts once its set is in place
            note_written(path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def staged_files(*paths: str | os.PathLike[str]) -> Iterator[tuple[Path, ...]]:
    """Write a set of files that share one folder all together, or not at all.

    Yields one path per output, with the same file name, in a hidden staging folder beside them; write each there.
    On success every file is renamed into place (creating the folder if needed) and the staging folder removed; on
    error or Ctrl-C the staging folder is removed and nothing appears.

    Raises:
        InputError: the paths are in different folders, or one of them appeared while the command ran.
    """
    paths = tuple(map(Path, paths))
    parents = {path.parent for path in paths}
    if len(parents) != 1:
        raise ValueError(f"staged_files: the outputs must share one folder, got {sorted(map(str, parents))}")
    (parent,) = parents
    with _staging_folder(parent, paths[0].name) as staging:
        yield tuple(staging / path.name for path in paths)
        with _interrupt_after(paths):
            for path in paths:
                _refuse_appeared(path)
            for path in paths:
                os.rename(staging / path.name, path)
                note_written(path)


@contextlib.contextmanager
def staged_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Write a new folder of outputs all together, or not at all.

    Yields a path (not yet created) inside a hidden staging folder beside `path`; create it and write into it. On
    success it is renamed to `path`; on error or Ctrl-C the staging folder is removed and nothing appears.
    """
    path = Path(path)
    with _staging_folder(path.parent, path.name) as staging:
        folder = staging / path.name
        yield folder
        with _interrupt_after((path,)):
            _refuse_appeared(path)
            os.chmod(folder, 0o777 & ~_umask())
            os.rename(folder, path)
            note_written(path)


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporaries of `path` (files or staging folders, our naming only) whose process is gone.

    Returns:
        The removed paths.
    """
    path = Path(path)
    pattern = re.compile(re.escape(path.name + TEMP_MARK) + r"(\d+)-[a-z0-9_]+" + r"(\.[^/]*)?")
    removed = []
    with contextlib.suppress(OSError):
        for entry in path.parent.iterdir():
            match = pattern.fullmatch(entry.name[1:]) if entry.name.startswith(".") else None
            if match is None or _process_alive(int(match.group(1))):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


# ---------------------------------------------------------------------------------------------------------------------


def _temp_prefix(path: Path) -> str:
    return f".{path.name}{TEMP_MARK}{os.getpid()}-"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _nearest_existing(folder: Path) -> Path:
    """`folder` or its closest ancestor that exists (a dangling link counts: creating through it would fail)."""
    folder = Path(os.path.abspath(folder))
    while not (folder.exists() or folder.is_symlink()) and folder.parent != folder:
        folder = folder.parent
    return folder


def _probe_writable(folder: Path, path: Path, flag: str) -> None:
    """Create and remove a temporary file in `folder`; an OSError becomes the user's one line."""
    try:
        fd, probe = tempfile.mkstemp(prefix=_temp_prefix(path), dir=folder)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise InputError(
            f"{flag} {path}: cannot create files in {folder} ({reason}): choose an {flag} in a folder you can write to"
        ) from None
    os.close(fd)
    os.unlink(probe)


@contextlib.contextmanager
def _staging_folder(parent: Path, name: str) -> Iterator[Path]:
    """A hidden folder of our naming in `parent` (created if needed), removed on the way out whatever happens."""
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(parent / name)
    staging = Path(tempfile.mkdtemp(prefix=_temp_prefix(parent / name), dir=parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _refuse_appeared(path: Path) -> None:
    if path.exists() or path.is_symlink():
        raise InputError(f"{path} appeared while this command ran: its results were not saved (outputs are never "
                         "overwritten); run it again with another --out")  # fmt: skip


@contextlib.contextmanager
def _interrupt_after(paths: tuple[Path, ...]) -> Iterator[None]:
    """Hold Ctrl-C back while a set of outputs is renamed into place, then deliver it: the set is whole or absent."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)
    if caught:
        raise KeyboardInterrupt
