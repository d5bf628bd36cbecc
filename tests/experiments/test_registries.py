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
