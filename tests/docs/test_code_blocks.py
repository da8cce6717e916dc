"""Every fenced code block of the manual either runs here or is marked ``<!-- excerpt -->``.

A page's runnable blocks run in order in one empty folder (later blocks use the files earlier
ones wrote), one test per page; the "simulate your own model" tutorial runs in
tests/docs/test_newcomer_path.py, which then checks what its run produced.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support import docblocks

FOLLOWED_ELSEWHERE = {"tutorials/own-model.md": "tests/docs/test_newcomer_path.py"}
# Pages whose `fedge-simulate --task digits --out OUT` finds the session's pretrained digits
# model in OUT/cache (its default cache), as a second run of the page would.
DIGITS_CACHE = {"tutorials/privacy.md": "sim-private/cache"}


def _name(page: Path) -> str:
    return page.relative_to(docblocks.DOCS).as_posix()


RUNNABLE_PAGES = [
    _name(page)
    for page in docblocks.pages()
    if _name(page) not in FOLLOWED_ELSEWHERE
    and _name(page) not in DIGITS_CACHE
    and any(block.runnable for block in docblocks.blocks(page))
]


def test_every_block_runs_or_is_an_excerpt() -> None:
    unrunnable = [
        block.where
        for page in docblocks.pages()
        for block in docblocks.blocks(page)
        if block.runnable and block.language not in ("python", *docblocks.RUNNERS)
    ]
    assert unrunnable == [], f"mark these {docblocks.EXCERPT} or make them sh/python"


def test_the_tutorials_have_runnable_blocks() -> None:
    for page in ("tutorials/demo.md", "tutorials/deploy.md", "tutorials/quantize.md"):
        assert page in RUNNABLE_PAGES
    for page in FOLLOWED_ELSEWHERE:
        assert any(b.runnable for b in docblocks.blocks(docblocks.DOCS / page))


def test_an_unmarked_text_block_is_refused(tmp_path: Path) -> None:
    page = docblocks.DOCS / "contributing.md"
    block = docblocks.Block(page=page, line=1, language="text", code="x\n", excerpt=False)
    with pytest.raises(AssertionError, match=r"contributing\.md:1: a text block"):
        docblocks.run_block(block, tmp_path)


@pytest.mark.parametrize("page", RUNNABLE_PAGES)
def test_runnable_blocks_of_page(page: str, tmp_path: Path) -> None:
    outputs = docblocks.run_page(docblocks.DOCS / page, tmp_path)
    assert outputs  # at least one block ran, and each exited 0 (run_block asserts it)


@pytest.mark.slow
def test_runnable_blocks_of_privacy_page(tmp_path: Path, digits_pretrained: Path) -> None:
    page = "tutorials/privacy.md"
    shutil.copytree(digits_pretrained, tmp_path / DIGITS_CACHE[page])
    outputs = docblocks.run_page(docblocks.DOCS / page, tmp_path)
    assert "secure aggregation (SecAgg+): 3 of 3 rounds" in "".join(outputs)
