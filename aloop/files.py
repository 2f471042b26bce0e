"""Small file helpers of the run folder: content digests and all-or-nothing writes (no torch)."""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def file_digest(path: str | Path) -> str:
    """The first 16 hex digits of the file's SHA-256."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator:
    """Write `path` all or nothing: the block writes to `path`.tmp, which replaces `path` only when
    the block ends without error (a killed process leaves the old file or the new one, never half)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, mode) as handle:
            yield handle
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)
