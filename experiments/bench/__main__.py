"""``python -m experiments.bench [--quick] [--only NAME ...]``: print the benchmark table.

Each module in ``MODULES`` exposes ``rows(quick=False) -> list[dict]``; every figure is a ratio or a
count measured inside one run, so machine noise cancels. JAX gets one CPU device per core
(:mod:`experiments.bench.devices`); benchmarks use device 0 unless a row says it splits its batch.
The table is also written (atomically) to ``results/bench.md`` and ``results/bench.json``.
"""

from __future__ import annotations

import argparse
import importlib
import pathlib

from experiments.bench.devices import use_every_core
from experiments.common import markdown_table, write_json_atomic, write_text_atomic

MODULES = [
    "experiments.bench.core",
    "experiments.bench.weights",
    "experiments.bench.search",
    "experiments.bench.refine",
    "experiments.bench.decode",
    "experiments.bench.token_search",
    "experiments.bench.width",
    "experiments.bench.sequences",
]

COLUMNS = ["bench", "case", "value", "unit", "target", "ok", "note"]


def collect(quick: bool, only: list[str] | None = None) -> list[dict]:
    """Rows of every registered module (or of those whose name ends with one of ``only``)."""
    from tqdm import tqdm

    names = [m for m in MODULES if not only or any(m.endswith(o) for o in only)]
    rows = []
    for name in tqdm(names, desc="bench", unit="module"):
        rows += importlib.import_module(name).rows(quick=quick)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats")
    parser.add_argument("--only", nargs="*", help="module names (suffixes) to run")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("results"))
    args = parser.parse_args(argv)
    use_every_core()
    rows = collect(args.quick, args.only)
    table = markdown_table(rows, COLUMNS)
    print(table)
    write_text_atomic(args.out / "bench.md", table)
    write_json_atomic(args.out / "bench.json", rows)


if __name__ == "__main__":
    main()
