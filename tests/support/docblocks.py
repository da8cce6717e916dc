"""The manual's fenced code blocks: found, and run in order in a working directory.

A block runs unless the line right before its opening fence is ``<!-- excerpt -->``;
``sh``/``bash`` blocks run with ``bash -euo pipefail``, ``python`` blocks with the
project's Python, each in the page's working directory, so later blocks see the files
earlier ones wrote (docs/contributing.md states the rule).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
EXCERPT = "<!-- excerpt -->"
RUNNERS = {"sh": ("bash", "-euo", "pipefail", "-c"), "bash": ("bash", "-euo", "pipefail", "-c")}
_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")


@dataclass(frozen=True)
class Block:
    """One fenced block of a page: where it starts, its language, its text."""

    page: Path
    line: int
    language: str
    code: str
    excerpt: bool

    @property
    def where(self) -> str:
        return f"{self.page.resolve().relative_to(ROOT)}:{self.line}"

    @property
    def runnable(self) -> bool:
        return not self.excerpt


def pages() -> list[Path]:
    """Every markdown page of the manual."""
    return sorted(DOCS.rglob("*.md"))


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page``, in order."""
    found: list[Block] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        match = _FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        fence, language = match.group(2), match.group(3)
        previous = next((ln.strip() for ln in reversed(lines[:index]) if ln.strip()), "")
        body: list[str] = []
        index += 1
        while index < len(lines) and not lines[index].strip().startswith(fence):
            body.append(lines[index])
            index += 1
        found.append(
            Block(
                page=page,
                line=index - len(body),
                language=language,
                code="\n".join(body) + "\n",
                excerpt=previous == EXCERPT,
            )
        )
        index += 1
    return found


def environment() -> dict[str, str]:
    """The environment a reader has after ``make``: the project's tools on the PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["FEDGE_REPO"] = str(ROOT)
    env.pop("PYTHONPATH", None)
    return env


def run_block(block: Block, workdir: Path, *, timeout: float = 300) -> str:
    """Run one block in ``workdir``; its output, or AssertionError naming the block."""
    if block.language == "python":
        command: tuple[str, ...] = (sys.executable, "-c", block.code)
    elif block.language in RUNNERS:
        command = (*RUNNERS[block.language], block.code)
    else:
        raise AssertionError(
            f"{block.where}: a {block.language or 'plain'} block must be sh, bash or python, "
            f"or be marked {EXCERPT}"
        )
    done = subprocess.run(
        command,
        cwd=workdir,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, (
        f"{block.where} exited {done.returncode}:\n{block.code}\n--- output ---\n{output[-3000:]}"
    )
    return output


def run_page(page: Path, workdir: Path, *, timeout: float = 300) -> list[str]:
    """Run every runnable block of ``page`` in order; their outputs."""
    return [run_block(b, workdir, timeout=timeout) for b in blocks(page) if b.runnable]
