"""Atomic writes: every output appears under its final name only once it is complete."""

from __future__ import annotations

import datetime as dt
import glob
import hashlib
import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pandas as pd


def utc_timestamp() -> str:
    """Now, to the second, in UTC: when a file that outlives its run was written."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@contextmanager
def atomic_path(path: str | os.PathLike, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds.

    The temporary file sits in the same folder so that the final ``os.replace`` is atomic
    on one filesystem, and it keeps the suffix so writers that look at it still work. Its name
    is ``temporary_pattern(path)``'s. With ``fsync`` the finished file's contents are flushed to
    the disk before the rename, so that after a crash of the machine the final name holds the
    new contents or the old ones, never an empty file (a killed process needs no fsync).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{_short(path.name)}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        # mkstemp creates the file private (0600); a finished output gets the mode any new file
        # would, so that the group can read the results on a shared cluster
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def temporary_pattern(path: str | os.PathLike) -> str:
    """The glob pattern, relative to ``path``'s folder, of the temporary files :func:`atomic_path`
    makes for ``path``: what a process killed mid-write leaves behind."""
    path = Path(path)
    return f".{glob.escape(_short(path.name))}.*.tmp{glob.escape(path.suffix)}"


def _short(name: str) -> str:
    """A file name cut so that its temporary name, about 20 characters longer, stays within the
    255 most file systems allow: a name the system takes must not fail for its temporary one."""
    return name[:200]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_parquet(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def write_csv(frame: pd.DataFrame, path: str | os.PathLike, **kwargs: Any) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, **kwargs)


def write_json(data: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_strict(data), indent=2, sort_keys=False, allow_nan=False, default=_jsonable) + "\n")


def write_text(text: str, path: str | os.PathLike, *, fsync: bool = False) -> None:
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_text(text)


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def file_sha256(path: str | os.PathLike) -> str:
    """The file's SHA-256 (hex), recorded so that a result names the exact input it came from."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _strict(value: Any) -> Any:
    """NaN and infinities (an undefined r, an interval too few rows calibrate) as null: Python's
    NaN and Infinity are not JSON, and other readers (jq, JavaScript, R's jsonlite) refuse the file."""
    if isinstance(value, dict):
        return {key: _strict(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(item) for item in value]
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return _strict(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
