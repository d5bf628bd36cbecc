"""``docs/hybrid.md`` maps every model class of the seed's table to a composition and its test: every row
but "neither axis" names a test file that exists, and every ``file::test`` it names is defined there."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]


def table_rows() -> list[list[str]]:
    lines = (ROOT / "docs" / "hybrid.md").read_text().splitlines()
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines if line.startswith("| ")]
    return [row for row in rows[1:] if len(row) == 4]


def test_every_runnable_row_names_tests_that_exist():
    rows = table_rows()
    assert len(rows) == 14
    for axis, model_class, composition, tests in rows:
        if axis == "neither axis":
            continue
        assert "not yet runnable" not in composition, model_class
        named = re.findall(r"`([^`]+)`", tests)
        assert named, f"{model_class}: no test named"
        current = None
        for name in named:
            path, _, function = name.partition("::")
            if path:
                current = ROOT / path
                assert current.exists(), f"{model_class}: {path} does not exist"
            if function:
                assert re.search(rf"^def {re.escape(function)}\(", current.read_text(), re.M), \
                    f"{model_class}: {current.name} has no test {function}"
