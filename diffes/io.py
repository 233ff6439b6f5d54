"""Atomic writes of files and folders, and reads that fail in one line. Nothing is ever left half-written.

A run directory must stay readable by Ray workers running as another user, so everything written here gets
the mode that ``open()`` and ``mkdir()`` give under the process umask (0644 and 0755 with umask 022), even
where a library would make it owner-only (``mkstemp``, ``mkdtemp`` and safetensors all give 0600/0700).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from diffes.errors import CheckpointError, ConfigError
from diffes.schema import CORRUPT, validate

__all__ = [
    "atomic_path",
    "atomic_dir",
    "remove_stale_temps",
    "check_folder_path",
    "check_file_path",
    "write_json",
    "read_json",
    "write_tensors",
    "read_tensors",
    "TEMP_PREFIX",
]

TEMP_PREFIX = ".diffes-tmp-"
# A temp folder written from another machine (shared storage) whose writer we cannot ask about: no write of
# one folder takes a day, so one that old was abandoned.
FOREIGN_STALE_AFTER_S = 24 * 3600


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: its files are owner-only (0600). Created here with mode 0666, the umask applies as it
    # would to open().
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"


def _temp_for(target: Path) -> Path:
    # .diffes-tmp-<host>-<pid>-<random>-<name>: the host and pid say whether the writer can still be alive
    return target.parent / f"{TEMP_PREFIX}{_host()}-{os.getpid()}-{secrets.token_hex(4)}-{target.name}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return pid > 0  # alive, as another user
    return True


def _is_stale(entry: Path) -> bool:
    host, pid, _ = entry.name[len(TEMP_PREFIX) :].split("-", 3)[:3]
    if host == _host():
        # our own pid can only be a write of this process that failed to clean up: writes to one target
        # are never concurrent
        return int(pid) == os.getpid() or not _pid_alive(int(pid))
    return time.time() - entry.lstat().st_mtime > FOREIGN_STALE_AFTER_S


def remove_stale_temps(target: str | os.PathLike[str]) -> list[Path]:
    """Remove the temp folders a killed writer left beside ``target``: ours (``.diffes-tmp-...-<name>``),
    for this target, whose writer is gone (a dead pid on this host, or a day old from another host)."""
    target = Path(target)
    pattern = re.compile(rf"^{re.escape(TEMP_PREFIX)}[A-Za-z0-9]+-\d+-[0-9a-f]+-{re.escape(target.name)}$")
    try:
        entries = [e for e in target.parent.iterdir() if pattern.match(e.name)]
    except OSError:
        return []
    stale = [e for e in entries if _is_stale(e)]
    for entry in stale:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    return stale


def _umask_modes(folder: Path) -> None:
    """Give every file and folder under ``folder`` the mode open()/mkdir() give (``folder`` was made by
    ``os.mkdir(0o777)``, so its own mode is the umask's folder mode)."""
    dir_mode = stat.S_IMODE(folder.stat().st_mode)
    file_mode = dir_mode & 0o666
    for root, dirs, files in os.walk(folder):
        for name, mode in [(d, dir_mode) for d in dirs] + [(f, file_mode) for f in files]:
            path = os.path.join(root, name)
            st = os.lstat(path)
            if not stat.S_ISLNK(st.st_mode) and stat.S_IMODE(st.st_mode) != mode:
                os.chmod(path, mode)


@contextmanager
def atomic_dir(target: str | os.PathLike[str], replace: bool = False) -> Iterator[Path]:
    """Yield an empty temp folder beside ``target``; on success it becomes ``target``, else it is removed.

    ``target`` must be absent or empty, unless ``replace``: then an existing ``target`` is swapped out and
    removed, so readers see the old folder or the new one, whole. Temp folders of earlier writes to
    ``target`` that were killed (SIGKILL, power loss) are removed first; see ``remove_stale_temps``.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    tmp = _temp_for(target)
    os.mkdir(tmp)  # not mkdtemp: its 0700 would keep other users out
    old: Path | None = None
    try:
        yield tmp
        _umask_modes(tmp)
        if replace and (target.exists() or target.is_symlink()):
            old = _temp_for(target)
            os.replace(target, old)
        elif target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        try:
            os.replace(tmp, target)
        except OSError:
            if old is not None:
                os.replace(old, target)
            raise
    finally:
        for path in (tmp, old):
            if path is not None and os.path.lexists(path):
                shutil.rmtree(path, ignore_errors=True)


def _blocking_file(field: str, path: Path) -> Path | None:
    """The first existing ancestor of ``path`` that is not a folder (so nothing can be created under it)."""
    if "\0" in str(path):
        raise ConfigError(field, str(path), "a path cannot hold a NUL character")
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def check_folder_path(field: str, path: str | os.PathLike[str]) -> Path:
    """``path`` can become a folder: it is not a file, and no ancestor is a file."""
    path = Path(path)
    blocker = _blocking_file(field, path)
    if blocker is not None:
        raise ConfigError(field, str(path), f"{blocker} is a file, not a folder; choose another path")
    if path.exists() and not path.is_dir():
        raise ConfigError(field, str(path), "that is a file; give a folder path")
    return path


def check_file_path(field: str, path: str | os.PathLike[str]) -> Path:
    """``path`` can be written as a file: it is not a folder, and no ancestor is a file."""
    path = Path(path)
    blocker = _blocking_file(field, path)
    if blocker is not None:
        raise ConfigError(field, str(path), f"{blocker} is a file, not a folder; choose another path")
    if path.is_dir():
        raise ConfigError(field, str(path), "that is a folder; give a file name such as grid.png")
    return path


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def read_json(path: str | os.PathLike[str], schema: Any = None, fix: str = CORRUPT) -> Any:
    """The JSON value in ``path``, validated against ``schema`` (see ``diffes.schema``) when one is given.
    Every way the file can be missing, unreadable or malformed is a one-line CheckpointError."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file is missing; the run or export is incomplete") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror or e}); {fix}") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path}: not UTF-8 text (byte {e.start}); {fix}") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); {fix}") from None
    except (ValueError, RecursionError) as e:  # an integer too long to convert, arrays nested too deeply
        raise CheckpointError(f"{path}: not valid JSON ({type(e).__name__}); {fix}") from None
    return data if schema is None else validate(schema, data, path, fix)


def write_tensors(
    path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        mode = stat.S_IMODE(os.stat(tmp).st_mode)  # what the umask gave the temp file
        save_file(flat, str(tmp), metadata=metadata)
        os.chmod(tmp, mode)  # safetensors recreates the file owner-only


def read_tensors(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: file is missing; the run or export is incomplete")
    try:
        return load_file(str(path), device=str(device))
    except Exception as e:  # safetensors raises its own SafetensorError for truncated files
        reason = " ".join(str(e).split())[:120]
        raise CheckpointError(f"{path}: not a readable safetensors file ({reason}); the file is corrupt") from None
