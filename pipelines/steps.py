"""The pipeline's steps: each one fedge tool's command line, with placeholders.

A command is a tuple of tokens: plain strings, :class:`Param` (a pipeline parameter),
:class:`Output` (a file or folder the step writes, passed on to later steps) and
:class:`Input` (an earlier step's output). The Kubeflow compiler turns the placeholders into
kfp's input/output placeholders; the local runner into values and paths in its work folder.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PARAMETERS", "STEPS", "Input", "Output", "Param", "Parameter", "Step", "Token"]


@dataclass(frozen=True)
class Parameter:
    """A pipeline parameter: its name, type (``str`` or ``int``), default and meaning."""

    name: str
    kind: type
    help: str
    default: str | int | None = None


PARAMETERS: tuple[Parameter, ...] = (
    Parameter("data", str, "the table (.csv[.gz], .tfrecord[.gz]) as the steps see it"),
    Parameter("label_column", str, "the label column of the table"),
    Parameter("schema", str, "the schema (schema.pbtxt) the table is validated against"),
    Parameter("epochs", int, "training epochs", 5),
    Parameter("db", str, "the coordinator's state database (a path or a database URL)"),
    Parameter("artifacts", str, "the coordinator's artifact directory"),
)


@dataclass(frozen=True)
class Param:
    """The value of pipeline parameter ``name``."""

    name: str


@dataclass(frozen=True)
class Output:
    """A path the step writes: a file or folder (``value=False``, passed on as an artifact)
    or a small text value (``value=True``, passed on as a string parameter)."""

    name: str
    value: bool = False


@dataclass(frozen=True)
class Input:
    """Output ``name`` of the earlier step ``step``: its path, or its text for a value."""

    step: str
    name: str
    value: bool = False


Token = str | Param | Input | Output


@dataclass(frozen=True)
class Step:
    """One step: a fedge tool (its console script and its module) and its arguments."""

    name: str
    program: str
    module: str
    args: tuple[Token, ...]
    help: str

    @property
    def tool(self) -> str:
        """The console script and its command words, e.g. ``fedge-coordinator data stats``."""
        words = []
        for token in self.args:
            if not isinstance(token, str) or token.startswith("-"):
                break
            words.append(token)
        return " ".join([self.program, *words])

    @property
    def params(self) -> list[str]:
        return [t.name for t in self.args if isinstance(t, Param)]

    @property
    def inputs(self) -> list[Input]:
        return [t for t in self.args if isinstance(t, Input)]

    @property
    def outputs(self) -> list[Output]:
        return [t for t in self.args if isinstance(t, Output)]


_COORDINATOR = ("fedge-coordinator", "coordinator.cli")
_TARGET = ("--db", Param("db"), "--artifacts", Param("artifacts"))

STEPS: tuple[Step, ...] = (
    Step(
        "ingest",
        *_COORDINATOR,
        ("data", "stats", "--data", Param("data"), "--label-column", Param("label_column"),
         "--out", Output("statistics")),
        "the table's statistics (tensorflow-metadata, binary)",
    ),
    Step(
        "validate",
        *_COORDINATOR,
        ("data", "anomalies", "--stats", Input("ingest", "statistics"), "--schema",
         Param("schema"), "--out", Output("anomalies")),
        "the statistics against the schema: an anomaly fails the step and stops the pipeline",
    ),
    Step(
        "train",
        "fedge-train",
        "cloud_trainer.cli",
        ("--data", Param("data"), "--label-column", Param("label_column"), "--epochs",
         Param("epochs"), "--out", Output("model")),
        "the model trained on the table",
    ),
    Step(
        "quantize",
        "fedge-quantize",
        "quantize.cli",
        ("bundle", Input("train", "model"), "--out", Output("bundle")),
        "the edge bundle (int8 inference, trainable, weights, signed manifest)",
    ),
    Step(
        "register",
        *_COORDINATOR,
        ("models", "register", Input("quantize", "bundle"), *_TARGET, "--version-file",
         Output("version", value=True)),
        "the bundle as a candidate version of the coordinator's registry",
    ),
    Step(
        "deploy",
        *_COORDINATOR,
        ("models", "promote", Input("register", "version", value=True), *_TARGET),
        "the registered version made production: devices get it on their next poll",
    ),
)  # fmt: skip
