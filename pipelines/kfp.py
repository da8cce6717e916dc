"""Compile :data:`pipelines.steps.STEPS` into a Kubeflow Pipelines v2 YAML (kfp SDK).

Each step is a container step of ``image`` running the fedge tool's console script with the
step's arguments: pipeline parameters as input values, files and folders passed between steps
as kfp artifacts (their paths), the registered version as a string parameter. Steps run in the
list's order. kfp is imported here only, when a pipeline is compiled.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

from pipelines.steps import PARAMETERS, STEPS, Input, Output, Param, Step

__all__ = ["PIPELINE_NAME", "compile_pipeline", "component_spec"]

PIPELINE_NAME = "fedge-train-and-deploy"
_KFP_TYPES = {str: "String", int: "Integer"}
_PARAMETERS = {p.name: p for p in PARAMETERS}


def _input_name(token: Input) -> str:
    return f"{token.step}_{token.name}"


def component_spec(step: Step, image: str) -> dict[str, Any]:
    """The step as a component specification (kfp's component YAML format)."""
    inputs: list[dict[str, Any]] = []
    outputs: list[dict[str, Any]] = []
    command: list[Any] = [step.program]
    for token in step.args:
        if isinstance(token, Param):
            kind = _KFP_TYPES[_PARAMETERS[token.name].kind]
            inputs.append({"name": token.name, "type": kind})
            command.append({"inputValue": token.name})
        elif isinstance(token, Input):
            name = _input_name(token)
            if token.value:
                inputs.append({"name": name, "type": "String"})
                command.append({"inputValue": name})
            else:
                inputs.append({"name": name})
                command.append({"inputPath": name})
        elif isinstance(token, Output):
            outputs.append({"name": token.name, **({"type": "String"} if token.value else {})})
            command.append({"outputPath": token.name})
        else:
            command.append(token)
    unique_inputs = list({item["name"]: item for item in inputs}.values())
    return {
        "name": step.name,
        "description": step.help,
        "inputs": unique_inputs,
        "outputs": outputs,
        "implementation": {"container": {"image": image, "command": command}},
    }


def compile_pipeline(out: Path, *, image: str) -> None:
    """Write the pipeline's YAML to ``out``."""
    from kfp import compiler, components, dsl

    factories = {
        step.name: components.load_component_from_text(
            json.dumps(component_spec(step, image))  # JSON is YAML
        )
        for step in STEPS
    }

    def _run_steps(values: dict[str, Any]) -> None:
        tasks: dict[str, Any] = {}
        previous = None
        for step in STEPS:
            arguments = {name: values[name] for name in step.params}
            for token in step.inputs:
                arguments[_input_name(token)] = tasks[token.step].outputs[token.name]
            task = factories[step.name](**arguments)
            task.set_display_name(step.name)
            task.set_caching_options(False)  # register and deploy change the registry
            if previous is not None:
                task.after(previous)
            tasks[step.name] = previous = task

    # The signature kfp reads: one argument per pipeline parameter (required ones first).
    ordered = sorted(PARAMETERS, key=lambda p: p.default is not None)

    def fedge_pipeline(*args: Any) -> None:  # kfp passes the parameters in signature order
        _run_steps({p.name: value for p, value in zip(ordered, args, strict=True)})

    fedge_pipeline.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter(
                p.name,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                annotation=p.kind,
                default=inspect.Parameter.empty if p.default is None else p.default,
            )
            for p in ordered
        ],
        return_annotation=None,
    )
    fedge_pipeline.__annotations__ = {p.name: p.kind for p in ordered}

    pipeline = dsl.pipeline(
        name=PIPELINE_NAME,
        description="ingest -> validate -> train -> quantize -> register -> deploy",
    )(fedge_pipeline)
    compiler.Compiler().compile(pipeline, str(out))
