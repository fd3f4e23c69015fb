"""Dataset files: JSON Lines, written atomically.

Datasets are JSONL (one JSON object per line) because every stage (pretraining, SFT, RL, eval) streams rows and
a person can read them with `head`. Every write goes to a temporary file beside the target and is renamed over
it only once complete, so an interrupted `r1lab data make` or `r1lab tokenizer train` never leaves a
half-written file behind under the real name.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[TextIO]:
    """A text file that appears at `path` only when the block completes; on an error nothing is left behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(rows: Iterable[dict[str, Any]], path: str | os.PathLike) -> int:
    """Write rows to `path` atomically; returns how many were written.

    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "sub" / "rows.jsonl"
    >>> write_jsonl([{"a": 1}, {"b": "x"}], target), list(read_jsonl(target))
    (2, [{'a': 1}, {'b': 'x'}])
    """
    count = 0
    with atomic_write(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def read_jsonl(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Rows of a JSONL file, skipping blank lines; a malformed line raises ValueError naming file and line."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not a JSON object ({e.msg})") from None
