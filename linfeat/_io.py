"""Atomic file writes: a killed run never leaves half a file (one helper for the project).

Every result file of linfeat (sweep checkpoints, `linfeat check` reports, experiment results
and figures) is written to a temporary file in the target directory and renamed over the
target, which POSIX makes atomic: readers see the old file or the new one, never a mix, and
a resumed run can trust every file it finds.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[str]:
    """Yields a temporary path next to `path`; renames it over `path` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=suffix)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp creates 0600 files
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_savez(path: str | os.PathLike, arrays: dict, *, compressed: bool = True) -> None:
    """Writes the arrays of `arrays` to an `.npz` file atomically."""
    save = np.savez_compressed if compressed else np.savez
    with atomic_path(path, ".npz.tmp") as tmp, open(tmp, "wb") as fh:
        save(fh, **{k: np.asarray(v) for k, v in arrays.items()})


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Writes `text` to `path` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        fh.write(text)
