"""Records on disk: the only results posttrain trusts.

Every JSON file is written atomically (temporary file, fsync, rename) so a crash leaves either
the old file or the new one, never half of each. JSONL files grow one complete line at a time;
a torn last line (a kill mid-write) is dropped on read and redone on resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, default=str)


def _write_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path``, fsync, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as pretty JSON atomically."""
    return _write_atomic(path, json.dumps(obj, ensure_ascii=False, sort_keys=True, indent=2, default=str) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write a whole JSONL file atomically (one line per row, in the given order)."""
    return _write_atomic(path, "".join(_dumps(r) + "\n" for r in rows))


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def append_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Append rows, each as one complete line, and fsync so a finished row survives a crash.

    A torn last line left by a killed writer (bytes after the last newline) is cut first, so the
    new rows start on a line of their own instead of being glued onto the fragment.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(_dumps(r) + "\n" for r in rows).encode("utf-8")
    if not data:
        return
    with open(path, "a+b") as f:  # appends always go to the end; reads may seek
        _cut_torn_tail(f)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _cut_torn_tail(f: Any, block: int = 1 << 16) -> None:
    """Truncate a file opened "a+b" after its last newline (a no-op when it ends with one)."""
    pos = f.seek(0, os.SEEK_END)
    while pos > 0:
        start = max(0, pos - block)
        f.seek(start)
        chunk = f.read(pos - start)
        nl = chunk.rfind(b"\n")
        if nl >= 0:
            if start + nl + 1 != f.seek(0, os.SEEK_END):
                f.truncate(start + nl + 1)
            return
        pos = start
    f.truncate(0)  # no newline at all: the only line is torn


def read_jsonl(path: str | Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """Read a JSONL file; a torn last line (no newline, or not JSON) is dropped.

    With ``repair=True`` the torn tail is also cut from the file, so the next append starts
    on a clean line. A bad line that is *not* the last one is corruption, not a crash
    artefact, and raises with its line number.
    """
    path = Path(path)
    if not path.exists():
        return []
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    # Everything after the last newline is an unfinished line.
    complete, tail = lines[:-1], lines[-1]
    rows: list[dict[str, Any]] = []
    good_bytes = 0
    for i, line in enumerate(complete, start=1):
        if not line.strip():
            good_bytes += len(line) + 1
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if i == len(complete) and not tail:
                break  # torn final line that happened to end with a newline
            raise ValueError(f"{path}:{i}: corrupt JSONL line ({exc}); move the file away to start over") from exc
        good_bytes += len(line) + 1
    if repair and good_bytes != len(raw):
        with open(path, "r+b") as f:
            f.truncate(good_bytes)
    return rows


def iter_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    yield from read_jsonl(path)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_dir(path: str | Path, patterns: tuple[str, ...] = ("*",)) -> str:
    """Content hash of the files in a folder (names and bytes, sorted; not recursive)."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted({p for pat in patterns for p in path.glob(pat) if p.is_file()})
    for p in files:
        h.update(p.name.encode() + b"\0" + sha256_file(p).encode() + b"\0")
    return h.hexdigest()


class RunFolderLocked(RuntimeError):
    pass


class RunLock:
    """An exclusive lock on a run folder, so two jobs never write the same records."""

    def __init__(self, run_dir: str | Path):
        from filelock import FileLock

        self.path = Path(run_dir) / ".posttrain.lock"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(self.path))

    def __enter__(self) -> RunLock:
        from filelock import Timeout

        try:
            self._lock.acquire(timeout=0)
        except Timeout as exc:
            raise RunFolderLocked(
                f"another posttrain job is writing {self.path.parent}; wait for it or choose another "
                "hydra.run.dir (nothing was loaded or spent)"
            ) from exc
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()
