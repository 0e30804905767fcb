"""The README's Python examples run as written, and its two commands are the real ones."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_python_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    blocks = _python_blocks()
    assert len(blocks) >= 3
    namespace: dict[str, object] = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    assert (tmp_path / "runs" / "tour" / "summary.json").exists()


def test_readme_commands_match_the_makefile_and_ci() -> None:
    text = README.read_text()
    top = text[: text.index("## A five-minute tour")]
    assert "make quickstart" in top and "make test" in top
    makefile = (README.parent / "Makefile").read_text()
    assert re.search(r"^quickstart:", makefile, flags=re.MULTILINE)
    assert re.search(r"^test:", makefile, flags=re.MULTILINE)
    assert "make test" in (README.parent / ".ci" / "run").read_text()
