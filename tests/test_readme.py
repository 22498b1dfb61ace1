"""Every ```python block of the README runs as written."""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_has_snippets():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_snippet_runs(i, capsys):
    code = compile(BLOCKS[i], f"README.md[python block {i}]", "exec")
    exec(code, {"__name__": "readme"})  # noqa: S102 — running the README is the test
    assert capsys.readouterr().out.strip(), "each snippet prints something"
