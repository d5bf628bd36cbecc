"""``python -m experiments.report [--full] [--out results]``: run every study, write the report.

Each study in ``STUDIES`` is a module exposing ``study(out_dir, *, quick) -> StudyResult`` on embedded
default tasks (analytic models, data shipped with packages, models trained here; no downloads). The
default runs each study's quick sizes (the whole report in 15 to 25 minutes on 2 cores from an empty
cache, training included); ``--full`` runs the larger sweeps.
Writes ``results/report.md`` (one section per study, PNG plots beside it) and ``results/figures.json``
(every figure), atomically. Sweeps inside studies resume where an interrupted run stopped.

The report opens with the machine, the JAX version, the run time and the headline table: the rows
``{claim, measured, holds}`` that studies return as ``figures["headline"]`` (the scaling study's seed
claims), each with its verdict.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pathlib
import platform
import time

from experiments.common import (StudyResult, markdown_table, release_compiled, write_json_atomic,
                                write_text_atomic)

STUDIES = [
    "experiments.tokens",
    "experiments.convergence",
    "experiments.search",
    "experiments.sequences",
    "experiments.scaling",
]


def run_studies(out_dir: pathlib.Path, quick: bool, only: list[str] | None = None) -> list[StudyResult]:
    """Run the registered studies (or those whose module name ends with one of ``only``)."""
    from tqdm import tqdm

    names = [s for s in STUDIES if not only or any(s.endswith(o) for o in only)]
    results = []
    for name in (bar := tqdm(names, desc="studies", unit="study")):
        bar.set_postfix_str(name.rsplit(".", 1)[-1])
        start = time.perf_counter()
        result = importlib.import_module(name).study(out_dir, quick=quick)
        release_compiled()
        results.append(result._replace(figures={**result.figures, "seconds": time.perf_counter() - start}))
    return results


def machine() -> str:
    """One line naming the machine and the software that produced the report."""
    import jax

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
            f"JAX {jax.__version__} on {jax.default_backend()} ({jax.device_count()} device(s)), "
            f"Python {platform.python_version()}")


def headline(results: list[StudyResult]) -> str:
    """The headline table: every study's ``figures["headline"]`` rows, each claim with its verdict."""
    rows = [{**row, "holds": "yes" if row["holds"] else "**no**"}
            for r in results for row in r.figures.get("headline", [])]
    return markdown_table(rows, ["claim", "measured", "holds"]).strip() if rows else ""


def render(results: list[StudyResult], quick: bool) -> str:
    """The markdown report: machine, run time and headline table, then each study's section and plots."""
    seconds = sum(r.figures.get("seconds", 0.0) for r in results)
    lines = ["# itscale report", "",
             f"Mode: {'default sizes' if quick else 'full (--full)'}. Machine: {machine()}. Run time: {seconds / 60:.1f} min "
             "(studies resumed from their sweep files count only what this run computed). Every number "
             "below is computed by the run that wrote this file; figures are also in `figures.json`.", ""]
    if not results:
        lines.append("No studies are registered yet.")
    if table := headline(results):
        lines += ["## Headline: the seeds' claims", "", table, ""]
    for r in results:
        lines += [f"## {r.title}", "", r.markdown.strip(), ""]
        lines += [f"![{p}]({p})" for p in r.plots] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", help="larger sweeps (about 40 minutes on 2 cores)")
    parser.add_argument("--only", nargs="*", help="study module names (suffixes) to run")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("results"))
    args = parser.parse_args(argv)
    quick = not args.full
    results = run_studies(args.out, quick, args.only)
    write_text_atomic(args.out / "report.md", render(results, quick))
    write_json_atomic(args.out / "figures.json", {r.title: r.figures for r in results})
    print(f"wrote {args.out / 'report.md'} ({len(results)} studies)")


if __name__ == "__main__":
    main()
