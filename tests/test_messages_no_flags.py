"""Library errors name values as the library knows them, never by a command-line flag.

Only a CLI knows its flags: ``cli.py`` modules (and the CLI kit, :mod:`fedge.cli`) may say
``--data``; everywhere else in the product packages, the text of a raised error names the
setting, the field or the file (``data file /x.csv: no such file``). The scanner reads the
source with :mod:`ast` and checks every string constant and f-string part that can reach an
error's message:

- inside ``raise <expression>`` (the ``from`` cause excepted);
- behind a name that expression uses, through its assignments (and ``for`` targets) in the
  enclosing scopes (``what = f"--data {path}"`` then ``raise ConfigError(f"{what}: ...")``);
- the arguments of the ``fedge.validation`` checkers, which put their ``what`` in the
  message they raise.
"""

from __future__ import annotations

import ast
import re
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import REPO_ROOT

PACKAGES = ("fedge", "coordinator", "edge_client", "quantize", "cloud_trainer", "simulations")
VALIDATORS = frozenset({"check_int", "check_number", "check_positive", "check_fraction"})
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9]*(?:-[a-z0-9]+)*")

ALLOWED = {
    # About the argv list the caller passes (serve_args), not a flag of the caller's CLI:
    # the launcher refuses serve_args holding a flag it sets itself.
    *(
        ("coordinator/launch.py", flag)
        for flag in (
            "--port-file",
            "--grpc-port",
            "--grpc-port-file",
            "--tls-cert",
            "--tls-key",
            "--client-ca",
        )
    ),
}


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.text!r}"


_Scope = dict[str, list[ast.expr]]


def _assignments(body: list[ast.stmt]) -> _Scope:
    """Every ``name = value`` (plain, annotated, augmented, walrus, ``for`` target) in
    ``body``, outside nested functions and classes."""
    found: _Scope = {}
    stack: list[ast.AST] = list(body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            continue
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found.setdefault(target.id, []).append(node.value)
        elif (
            isinstance(node, ast.AnnAssign | ast.AugAssign | ast.NamedExpr)
            and isinstance(node.target, ast.Name)
            and node.value is not None
        ):
            found.setdefault(node.target.id, []).append(node.value)
        elif isinstance(node, ast.For | ast.AsyncFor):  # each target may take any item
            for name in ast.walk(node.target):
                if isinstance(name, ast.Name):
                    found.setdefault(name.id, []).append(node.iter)
        stack.extend(ast.iter_child_nodes(node))
    return found


def _strings(node: ast.AST) -> Iterator[ast.Constant]:
    for child in ast.walk(node):
        if isinstance(child, ast.Constant) and isinstance(child.value, str):
            yield child


def _names(node: ast.AST) -> Iterator[str]:
    for child in ast.walk(node):
        if isinstance(child, ast.Name) and isinstance(child.ctx, ast.Load):
            yield child.id


def _called_name(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


class _Scanner(ast.NodeVisitor):
    def __init__(self, path: str) -> None:
        self.path = path
        self.scopes: list[_Scope] = []
        self.findings: set[Finding] = set()

    def visit_Module(self, node: ast.Module) -> None:
        self._in_scope(node.body, node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._in_scope(node.body, node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._in_scope(node.body, node)

    def _in_scope(self, body: list[ast.stmt], node: ast.AST) -> None:
        self.scopes.append(_assignments(body))
        self.generic_visit(node)
        self.scopes.pop()

    def visit_Raise(self, node: ast.Raise) -> None:
        if node.exc is not None:
            self._check(node.exc)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        if _called_name(node) in VALIDATORS:
            for argument in [*node.args, *(k.value for k in node.keywords)]:
                self._check(argument)
        self.generic_visit(node)

    def _check(self, expression: ast.expr) -> None:
        pending, seen = [expression], set()
        while pending:
            current = pending.pop()
            if id(current) in seen:
                continue
            seen.add(id(current))
            for constant in _strings(current):
                if FLAG.search(constant.value):
                    self.findings.add(Finding(self.path, constant.lineno, constant.value))
            for name in _names(current):
                for scope in reversed(self.scopes):
                    if name in scope:
                        pending.extend(scope[name])
                        break


def flag_messages(source: str, path: str = "<source>") -> list[Finding]:
    """The string parts naming a ``--flag`` that can reach a raised error's message."""
    scanner = _Scanner(path)
    scanner.visit(ast.parse(source, filename=path))
    return sorted(scanner.findings, key=lambda f: (f.line, f.text))


def _library_modules() -> Iterator[Path]:
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            if path.name != "cli.py":  # the CLIs, the CLI kit (fedge/cli.py) among them
                yield path


# The scanner ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('raise ConfigError("--data needs --model")', ["--data needs --model"]),
        ('raise ConfigError(f"--rounds {n} is too many")', ["--rounds "]),
        (
            """
            def load(path):
                what = f"--data {path}"
                if not path:
                    raise ConfigError(f"{what}: no such file")
            """,
            ["--data "],
        ),
        (
            """
            def _load(source, what):
                raise ConfigError(what + ": no such file")

            def load(path):
                what = "--init " + path
                return _load(path, what)
            """,
            [],  # through a parameter: out of the scanner's sight (see the test below)
        ),
        ('error = ConfigError("give --rounds")\nraise error', ["give --rounds"]),
        ('check_int(settings.clients, "--clients", low=1)', ["--clients"]),
        (
            'for flag, rate in (("--learning-rate", lr), ("rate", r)):\n'
            "    check_positive(rate, flag)",
            ["--learning-rate"],
        ),
        ('validation.check_fraction(x, what="--holdout-fraction")', ["--holdout-fraction"]),
    ],
    ids=[
        "constant",
        "f-string",
        "through-a-name",
        "through-a-parameter",
        "raise-a-name",
        "checker",
        "checker-loop",
        "checker-keyword",
    ],
)
def test_scanner_finds_flags_in_error_messages(source: str, expected: list[str]) -> None:
    found = flag_messages(textwrap.dedent(source))
    assert [f.text for f in found] == expected


@pytest.mark.parametrize(
    "source",
    [
        'raise ConfigError("data file /x.csv: no such file")',
        'raise ConfigError(f"rounds must be >= 1, got {n}")',
        'raise ConfigError("a -- b, x--y, and -1 --- are not flags")',
        'command = ["serve", "--port", "0"]\nsubprocess.run(command)',
        'logger.info("pass --verbose for more")',
        'def f():\n    """Say ``--data``."""\n    raise ConfigError("data file missing")',
        'raise ProcessError("it failed", name="worker") from OSError("--y")',
    ],
)
def test_scanner_leaves_other_text_alone(source: str) -> None:
    assert flag_messages(source) == []


def test_scanner_reports_a_flag_in_a_sample_module() -> None:
    sample = textwrap.dedent(
        '''
        """A library module."""
        from fedge.errors import ConfigError

        def load_data(path: str) -> None:
            what = f"--data {path}"
            if not path.endswith(".csv"):
                raise ConfigError(f"{what}: expected a .csv file")
            if not path:
                raise ConfigError("data file: empty path")
        '''
    )
    found = flag_messages(sample, "sample.py")
    assert [str(f) for f in found] == ["sample.py:6: '--data '"]


# The product -----------------------------------------------------------------------------------


def test_library_errors_name_no_command_line_flag() -> None:
    modules = list(_library_modules())
    assert len(modules) > 50
    found = [
        finding
        for path in modules
        for finding in flag_messages(
            path.read_text(encoding="utf-8"), path.relative_to(REPO_ROOT).as_posix()
        )
        if (finding.path, finding.text) not in ALLOWED
    ]
    assert not found, "library errors that name a flag:\n" + "\n".join(map(str, found))


def test_every_allowed_message_still_exists() -> None:
    for path, text in ALLOWED:
        found = flag_messages((REPO_ROOT / path).read_text(encoding="utf-8"), path)
        assert text in [f.text for f in found], (path, text)
