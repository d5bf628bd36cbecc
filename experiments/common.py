"""Shared plumbing for studies: atomic writes, resumable sweeps, figures.

Every file a study writes goes through :func:`write_text_atomic` (write to a temporary file in the same
folder, then ``os.replace``), so an interrupted run never leaves a half-written file; a
:class:`Sweep` stores each computed point at once, so a rerun resumes where the last one stopped.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import tempfile
from collections.abc import Callable
from typing import Any, NamedTuple


class StudyResult(NamedTuple):
    """What a study hands the report: a title, a markdown section, its figures and plot files."""

    title: str
    markdown: str
    figures: dict
    plots: list


def write_bytes_atomic(path: pathlib.Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temporary file in the same folder, fsync, ``os.replace``."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        pathlib.Path(tmp).unlink(missing_ok=True)


def write_text_atomic(path: pathlib.Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`write_bytes_atomic`)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def jsonable(value: Any) -> Any:
    """Plain JSON types from numpy/JAX scalars and arrays; non-finite floats become strings."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def write_json_atomic(path: pathlib.Path, value: Any) -> None:
    """Write ``value`` as indented JSON, atomically."""
    write_text_atomic(path, json.dumps(jsonable(value), indent=2, sort_keys=True) + "\n")


def save_figure(fig, path: pathlib.Path) -> str:
    """Save a matplotlib figure as PNG atomically; returns the file name."""
    import matplotlib.pyplot as plt

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        pathlib.Path(tmp).unlink(missing_ok=True)
        plt.close(fig)
    return path.name


class Sweep:
    """A resumable sweep: each point is computed once and stored in a JSON file at ``path``."""

    def __init__(self, path: pathlib.Path):
        self.path = pathlib.Path(path)
        self.points = json.loads(self.path.read_text()) if self.path.exists() else {}

    def get_or_compute(self, key: str, fn: Callable[[], Any]) -> Any:
        """The stored value of ``key``, or ``fn()`` computed now and stored before returning."""
        if key not in self.points:
            self.points[key] = jsonable(fn())
            write_json_atomic(self.path, self.points)
        return self.points[key]


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """A GitHub markdown table of ``rows`` (floats to 4 significant digits)."""
    if not rows:
        return "(no rows)\n"
    columns = columns or list(rows[0])

    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"
