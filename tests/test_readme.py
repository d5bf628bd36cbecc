"""Every Python block of the README runs as written, in order, as one session would."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_the_readme_has_python_blocks():
    assert len(_python_blocks()) >= 2


def test_every_readme_block_runs(capsys):
    namespace = {}
    for i, block in enumerate(_python_blocks()):
        try:
            exec(compile(block, f"README.md python block {i}", "exec"), namespace)
        except Exception as error:  # noqa: BLE001 - report which block failed
            pytest.fail(f"README python block {i} raised {type(error).__name__}: {error}\n{block}")
    assert "nan" not in capsys.readouterr().out.lower()
