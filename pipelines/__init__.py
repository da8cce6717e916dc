"""The fedge CLIs as one pipeline: ingest -> validate -> train -> quantize -> register -> deploy.

:mod:`pipelines.steps` is the one list of steps and their command lines; :mod:`pipelines.kfp`
compiles it into a Kubeflow Pipelines (kfp v2) YAML of container steps, and
:mod:`pipelines.local` runs the same commands in order as local processes. This package
imports no other fedge package: the steps are the tools' command lines, run as processes.
"""
