"""Every code block of README.md and docs/*.md is run or checked, its links resolve, the
generated config reference is current, and the README's two commands are the real ones.

Blocks, by their fence's language:

- ``python``: run in order, one namespace per page, in a temporary directory that sees
  the repository's ``configs/``;
- ``yaml``: a run config validates (keys, registered names, searcher settings); a
  compare config (with a ``compare`` section) plans; after ``<!-- config-fragment -->``
  the block is merged into a minimal run config first;
- ``json``: parses;
- ``bash``: checked, not run: each ``searchprune`` command parses and the config it names
  exists and validates, each ``make`` target exists, each script run by Python exists;
  ``ray`` commands (a cluster) are accepted as they are;
- no language or ``text``: program output, not code;
- ``layers`` (docs/architecture.md): checked by tests/test_architecture.py.

A comment on the line right before a block marks it: ``<!-- not-run: REASON -->`` skips
it (reported as a skipped test with its reason); ``<!-- slow -->`` before a Python block
marks its page's Python test ``slow``.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"^<!--\s*(not-run:\s*\S.*?|slow|config-fragment)\s*-->$")
LANGUAGES = {"python", "yaml", "json", "bash", "text", ""}
CHECKED_ELSEWHERE = {"layers": "tests/test_architecture.py"}
MINIMAL_CONFIG = {"task": "digits-mlp", "budget": {"sparsity": 0.9}, "searcher": "ga"}


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    language: str
    code: str
    marker: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def not_run(self) -> bool:
        return self.marker.startswith("not-run")


def _blocks(page: Path) -> list[Block]:
    lines = page.read_text().splitlines()
    blocks, index = [], 0
    while index < len(lines):
        if lines[index].startswith("```"):
            start, language = index, lines[index][3:].strip()
            end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("```"))
            previous = next(
                (lines[i].strip() for i in range(start - 1, -1, -1) if lines[i].strip()), ""
            )
            marker = (
                previous[4:-3].strip()
                if previous.startswith("<!--") and previous.endswith("-->")
                else ""
            )
            blocks.append(
                Block(page, start + 1, language, "\n".join(lines[start + 1 : end]) + "\n", marker)
            )
            index = end
        index += 1
    return blocks


BLOCKS = [block for page in PAGES for block in _blocks(page)]


def _of(language: str) -> list[Any]:
    return [
        pytest.param(block, id=block.where)
        for block in BLOCKS
        if block.language == language and not block.not_run
    ]


def test_every_block_has_a_known_language_and_marker() -> None:
    assert len(BLOCKS) >= 20
    unknown = [b.where for b in BLOCKS if b.language not in LANGUAGES | CHECKED_ELSEWHERE.keys()]
    assert not unknown, f"blocks in a language this test does not check: {unknown}"
    markers = [b.where for b in BLOCKS if b.marker and not MARKER.match(f"<!-- {b.marker} -->")]
    assert not markers, f"unknown markers (use not-run: REASON, slow, config-fragment): {markers}"
    misplaced = [
        b.where
        for b in BLOCKS
        if (b.marker == "slow" and b.language != "python")
        or (b.marker == "config-fragment" and b.language != "yaml")
    ]
    assert not misplaced, f"markers on blocks they do not apply to: {misplaced}"


@pytest.mark.parametrize(
    "block", [pytest.param(b, id=b.where) for b in BLOCKS if b.not_run] or [None]
)
def test_not_run_blocks_are_skipped_explicitly(block: Block | None) -> None:
    if block is None:
        pytest.skip("no block is marked not-run")
    pytest.skip(f"{block.where} not run: {block.marker.partition(':')[2].strip()}")


def _python_pages() -> list[Any]:
    pages = []
    for page in PAGES:
        blocks = [b for b in BLOCKS if b.page == page and b.language == "python" and not b.not_run]
        if blocks:
            slow = any(b.marker == "slow" for b in blocks)
            marks = [pytest.mark.slow] if slow else []
            pages.append(pytest.param(blocks, id=str(page.relative_to(ROOT)), marks=marks))
    return pages


@pytest.mark.parametrize("blocks", _python_pages())
def test_python_blocks_run(
    blocks: list[Block], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for block in blocks:
        code = "\n" * (block.line) + block.code  # tracebacks show the page's line numbers
        exec(compile(code, str(block.page), "exec"), namespace)
    if blocks[0].page == README:
        assert (tmp_path / "runs" / "tour" / "summary.json").exists()


def _check_config(data: Any) -> None:
    from searchprune.compare import plan
    from searchprune.config import validate_config
    from searchprune.runner import check_names
    from searchprune.search import SEARCHERS

    assert isinstance(data, dict), "a config is a mapping of sections"
    if "compare" in data:
        plan(data)
        return
    config = validate_config(data)
    check_names(config)
    if config.searcher is not None and config.searcher.model_extra:
        SEARCHERS.get(config.searcher.name).Params.model_validate(config.searcher.model_extra)


@pytest.mark.parametrize("block", _of("yaml"))
def test_yaml_blocks_are_valid_configs(block: Block) -> None:
    data = yaml.safe_load(block.code)
    if block.marker == "config-fragment":
        data = {**MINIMAL_CONFIG, **data}
    _check_config(data)


@pytest.mark.parametrize("block", _of("json"))
def test_json_blocks_parse(block: Block) -> None:
    json.loads(block.code)


def _check_command(words: list[str]) -> None:
    from searchprune.cli import build_parser
    from searchprune.config import read_config_data

    program = Path(words[0]).name
    if program == "searchprune":
        try:
            args = build_parser().parse_args(words[1:])
        except SystemExit:
            pytest.fail(f"searchprune does not take: {shlex.join(words)}")
        if getattr(args, "config", None):
            assert (ROOT / args.config).is_file(), f"no config {args.config}"
            _check_config(read_config_data(ROOT / args.config, args.set))
    elif program == "make":
        makefile = (ROOT / "Makefile").read_text()
        for target in words[1:]:
            assert re.search(rf"^{re.escape(target)}:", makefile, flags=re.MULTILINE), target
    elif program == "python":
        assert (ROOT / words[1]).is_file(), f"no script {words[1]}"
    elif program != "ray":
        pytest.fail(f"a command this test does not know how to check: {shlex.join(words)}")


@pytest.mark.parametrize("block", _of("bash"))
def test_shell_commands_are_real(block: Block) -> None:
    commands = [
        shlex.split(line, comments=True) for line in block.code.replace("\\\n", " ").splitlines()
    ]
    commands = [words for words in commands if words]
    assert commands
    for words in commands:
        _check_command(words)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    return {_slug(m) for m in re.findall(r"^#+ (.*)$", text, flags=re.MULTILINE)}


def test_links_resolve() -> None:
    broken = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            name = str(file.relative_to(ROOT)) if file.is_relative_to(ROOT) else str(file)
            if not file.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} ({name} does not exist)")
            elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, broken


def test_every_docs_page_is_in_the_readme_map() -> None:
    text = README.read_text()
    missing = [p.name for p in PAGES[1:] if f"(docs/{p.name})" not in text]
    assert not missing, f"add a line for each page to the README's Documentation list: {missing}"


def test_config_reference_is_current() -> None:
    from searchprune.docgen import CONFIG_DOC, render

    assert (ROOT / CONFIG_DOC).read_text() == render(), (
        "docs/config.md is stale: regenerate it with `make docs` "
        "(.venv/bin/python -m searchprune.docgen) and commit it"
    )


def test_readme_commands_match_the_makefile_and_ci() -> None:
    text = README.read_text()
    top = text[: text.index("## A five-minute tour")]
    assert "make quickstart" in top and "make test" in top
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^quickstart:", makefile, flags=re.MULTILINE)
    assert re.search(r"^test:", makefile, flags=re.MULTILINE)
    assert "make test" in (ROOT / ".ci" / "run").read_text()
