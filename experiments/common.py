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


def release_compiled() -> None:
    """Drop JAX's compiled programs. Each XLA:CPU executable holds memory mappings while cached; a long
    run that compiles thousands of programs passes Linux's ``vm.max_map_count`` and the next compile
    fails ("LLVM compilation error: Cannot allocate memory", then a segfault)."""
    import gc

    import jax

    jax.clear_caches()
    gc.collect()


def study_main(study: Callable[..., StudyResult], name: str, doc: str, argv: list[str] | None = None) -> None:
    """``python -m experiments.<name> [--full] [--out results/<name>]``: run one study at the report's
    default sizes (``--full``: larger sweeps) and write ``<name>.md`` and ``<name>.json``."""
    import argparse
    import time

    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="larger sweeps")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("results") / name)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    result = study(args.out, quick=not args.full)
    write_text_atomic(args.out / f"{name}.md", f"# {result.title}\n\n{result.markdown}\n\n"
                      + "\n".join(f"![{p}]({p})" for p in result.plots) + "\n")
    write_json_atomic(args.out / f"{name}.json", result.figures)
    print(result.markdown)
    print(f"{time.perf_counter() - start:.1f} s")


class Sweep:
    """A resumable sweep: each point is computed once and stored in a JSON file at ``path``; a progress
    bar (named after the file, out of ``total`` points when given) counts the points as they come."""

    def __init__(self, path: pathlib.Path, *, total: int | None = None):
        self.path = pathlib.Path(path)
        self.points = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.total = total
        self._bar = None

    def get_or_compute(self, key: str, fn: Callable[[], Any]) -> Any:
        """The stored value of ``key``, or ``fn()`` computed now and stored before returning."""
        if self._bar is None:
            from tqdm import tqdm
            self._bar = tqdm(desc=self.path.stem.split("_")[0], total=self.total, unit="point")
        self._bar.set_postfix_str(key, refresh=True)
        if key not in self.points:
            self.points[key] = jsonable(fn())
            write_json_atomic(self.path, self.points)
            release_compiled()
        self._bar.update(1)
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
