"""Writing files so that a reader (or a crash) never sees half of one: the one place for atomic writes."""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import shutil
import tempfile
from pathlib import Path

_UMASK = os.umask(0o022)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK  # what open() gives; mkstemp's 0600 would lock other users out of a shared folder
DIR_MODE = 0o777 & ~_UMASK  # what mkdir() gives; mkdtemp's 0700 likewise
ASSETS = Path(__file__).resolve().parent.parent / "assets"  # the embedded demo world, model and adapter


def _finite(obj):
    """JSON has no NaN/inf: write them as null rather than producing a file other tools cannot parse."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def read_json(path: Path, max_bytes: int) -> object:
    """A JSON file read only if it is at most `max_bytes` (checked before reading, so a huge file costs
    nothing); every failure is a ValueError naming the file. None when the file does not exist."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ValueError(f"{path}: {size} bytes, over the {max_bytes}-byte limit for this file.")
        with path.open("rb") as fh:
            data = fh.read(max_bytes + 1)  # the file may have grown since stat
    except FileNotFoundError:
        return None
    except OSError as err:
        raise ValueError(f"{path}: cannot be read ({err.strerror or err}).") from None
    if len(data) > max_bytes:
        raise ValueError(f"{path}: over the {max_bytes}-byte limit for this file.")
    try:
        return json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f"{path}: not readable JSON ({err}).") from None


def json_line(data: object) -> str:
    """One compact JSON line (NaN/inf as null), as records.jsonl holds them."""
    return json.dumps(_finite(data), separators=(",", ":")) + "\n"


def write_json_atomic(path: Path, data: object) -> None:
    """Write `data` as JSON to a temp file beside `path`, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        write_json_at(folder, path.name, data, path)
    finally:
        os.close(folder)


def write_json_at(folder: int, name: str, data: object, where: Path) -> None:
    """`write_json_atomic` into the directory open as `folder` (a job holds its run folder this way, so its
    files follow the folder if it is moved and never re-create the old path). An OSError names `where`."""
    tmp = f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666, dir_fd=folder)  # 0666 & ~umask
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(_finite(data), fh, indent=1, ensure_ascii=False)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=folder)
            raise
    except OSError as err:
        raise OSError(err.errno, err.strerror or str(err), str(where)) from None


def set_file_modes(folder: Path) -> None:
    """Give every file and folder under `folder` the modes open() and mkdir() give (some writers, safetensors
    among them, create files 0600), so a saved adapter, scorer or cache is as readable as everything beside it."""
    os.chmod(folder, DIR_MODE)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), DIR_MODE)
        for name in files:
            os.chmod(os.path.join(root, name), FILE_MODE)


def replace_dir(tmp: Path, dest: Path) -> None:
    """Move a finished folder into place, replacing whatever is at `dest`: a reader sees the old or the new one,
    never half of either. The old one is first moved aside into a fresh temp folder (safe if two processes race)."""
    if dest.exists():
        stale = Path(tempfile.mkdtemp(prefix=f".stale-{dest.name}-", dir=dest.parent))
        os.replace(dest, stale / "old")
        shutil.rmtree(stale, ignore_errors=True)
    os.replace(tmp, dest)
