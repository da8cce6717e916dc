"""The manual's reference pages are what the code gives: every CLI flag, config key, REST route
and gRPC message appears there, so a flag added without `make docs-gen` fails here, named."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fedge.cli import ArgumentParser
from tools import docgen

PAGES = docgen.render_all()


@pytest.mark.parametrize("page", sorted(str(p) for p in PAGES))
def test_checked_in_page_matches_the_code(page: str) -> None:
    path = docgen.DOCS / page
    assert path.exists(), f"docs/{page} is missing: run make docs-gen"
    text = path.read_text(encoding="utf-8")
    expected = PAGES[Path(page)]
    if page.startswith("reference/cli/"):
        name = Path(page).stem
        missing = [
            f"{f'{words} ' if words else ''}{flag}"
            for words, parser in docgen.tool_parsers(name)
            for flag in docgen.missing_flags(text, parser)
        ]
        assert not missing, f"docs/{page} lacks {', '.join(missing)}: run make docs-gen"
    assert text == expected, f"docs/{page} differs from the code: run make docs-gen"


@pytest.mark.parametrize("page", [name for name, _tool, _entries in docgen.CLI_TOOLS])
def test_every_flag_of_every_parser_is_on_its_page(page: str) -> None:
    text = (docgen.DOCS / "reference/cli" / f"{page}.md").read_text(encoding="utf-8")
    parsers = docgen.tool_parsers(page)
    flags = [flag for _words, parser in parsers for flag in docgen.parser_flags(parser)]
    assert "--help" in flags
    assert all(docgen.missing_flags(text, parser) == [] for _words, parser in parsers)


def test_a_flag_added_without_regenerating_is_named() -> None:
    text = (docgen.DOCS / "reference/cli/fedge-edge.md").read_text(encoding="utf-8")
    parser = docgen.tool_parsers("fedge-edge")[0][1]
    assert isinstance(parser, ArgumentParser)
    parser.add_argument("--brand-new-flag", help="not on the page")
    assert docgen.missing_flags(text, parser) == ["--brand-new-flag"]
    assert docgen.render_cli_page("fedge-edge") == text  # a fresh parser has no such flag


def test_subcommands_of_every_tool_are_documented() -> None:
    text = (docgen.DOCS / "reference/cli/fedge-coordinator.md").read_text(encoding="utf-8")
    words = [w for w, _parser in docgen.tool_parsers("fedge-coordinator") if w]
    assert {"serve", "models list", "enrollment create", "certs init"} <= set(words)
    for command in words:
        assert f"## fedge-coordinator {command}\n" in text
    simulate = (docgen.DOCS / "reference/cli/fedge-simulate.md").read_text(encoding="utf-8")
    assert "## fedge-simulate continuous\n" in simulate
    assert "## fedge-simulate async\n" in simulate


def test_config_rest_and_grpc_pages_name_their_sources() -> None:
    config = (docgen.DOCS / "reference/config.md").read_text(encoding="utf-8")
    for key in ("`clients_per_round`", "`min_rows`", "`dp_noise_multiplier`"):
        assert key in config
    rest = (docgen.DOCS / "reference/rest.md").read_text(encoding="utf-8")
    assert "## GET /v1/tasks/next" in rest
    assert "### RoundConfig { #schema-roundconfig }" in rest
    grpc = (docgen.DOCS / "reference/grpc.md").read_text(encoding="utf-8")
    assert "### service Fleet" in grpc
    assert "`UploadUpdate` | stream `UpdateChunk`" in grpc


def test_the_python_api_pages_document_every_public_name() -> None:
    pages = docgen.render_python_pages()
    assert sorted(p.stem for p in pages) == sorted(docgen.PYTHON_PACKAGES)
    for package in docgen.PYTHON_PACKAGES:
        text = pages[Path("reference/python") / f"{package}.md"]
        names = [name for name, _module in docgen._public_names(package)]
        assert names, package
        missing = [name for name in names if f"\n### {name}\n" not in text]
        assert not missing, f"{package}: {missing}"
        # Each name is found where it is defined (a bare `module.name` line means it was not).
        unresolved = [
            name for name in names if re.search(rf"### {name}\n\n`[\w.]+\.{name}`\n", text)
        ]
        assert not unresolved, f"{package}: no definition found for {unresolved}"
    # A class comes with where it is defined, its bases and its methods.
    coordinator = pages[Path("reference/python/coordinator.md")]
    assert "`class coordinator.errors.ConflictError(CoordinatorError)`" in coordinator
    assert "- `rollback_before(self, when: float" in coordinator
