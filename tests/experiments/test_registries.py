"""Every registered study and benchmark module imports (optional peers absent included) and has its entry."""

import importlib

import pytest

from experiments import report
from experiments.bench import __main__ as bench


@pytest.mark.parametrize("name", bench.MODULES)
def test_bench_modules_import_and_expose_rows(name):
    assert callable(importlib.import_module(name).rows)


@pytest.mark.parametrize("name", report.STUDIES)
def test_studies_import_and_expose_study(name):
    assert callable(importlib.import_module(name).study)


def test_the_report_opens_with_machine_run_time_and_headline_verdicts():
    rows = [{"claim": "cost is linear", "measured": "R² = 1.000", "holds": True},
            {"claim": "allocation saves 2x", "measured": "1.15x", "holds": False}]
    results = [report.StudyResult("A", "body a", {"headline": rows, "seconds": 90.0}, []),
               report.StudyResult("B", "body b", {"seconds": 30.0}, ["b.png"])]
    page = report.render(results, quick=True)
    assert "JAX " in page and "Run time: 2.0 min" in page
    head, rest = page.split("## Headline: the seeds' claims", 1)
    assert "## A" not in head and rest.index("| allocation saves 2x | 1.15x | **no** |") < rest.index("## A")
    assert "| cost is linear | R² = 1.000 | yes |" in rest and "![b.png](b.png)" in rest
