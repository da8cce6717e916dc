"""A table the project has never seen, as a user would bring it: numeric and categorical
columns, empty fields, a text label; written as CSV and as TFRecord."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from fedge.tfrecord import write_examples

__all__ = ["LABELS", "write_user_table", "write_user_tfrecord"]

LABELS = ("left", "stayed")


def write_user_table(path: Path, rows: int = 300, seed: int = 7) -> list[dict[str, str]]:
    """A churn table: age (numeric), income (numeric, unscaled, 10% empty), city
    (categorical, 10% empty), plan (categorical) and the text label ``churned``, which
    depends on age and plan."""
    rng = np.random.default_rng(seed)
    table = []
    for _ in range(rows):
        age = int(rng.integers(18, 80))
        plan = str(rng.choice(["basic", "pro"]))
        score = (age - 45) / 15 + (1.5 if plan == "pro" else -1.0) + rng.normal(0, 0.5)
        row = {
            "age": str(age),
            "income": f"{rng.normal(50_000, 15_000):.2f}" if rng.random() > 0.1 else "",
            "city": str(rng.choice(["Lyon", "Oslo", "Quito"])) if rng.random() > 0.1 else "",
            "plan": plan,
            "churned": LABELS[int(score > 0)],
        }
        table.append(row)
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    return table


def write_user_tfrecord(path: Path, table: list[dict[str, str]]) -> None:
    """The same rows as ``tf.train.Example`` records; an empty field is an absent feature."""
    examples = []
    for row in table:
        example: dict[str, list[float] | list[str]] = {}
        for name, value in row.items():
            if value and name in ("age", "income"):
                example[name] = [float(value)]
            elif value:
                example[name] = [value]
        examples.append(example)
    write_examples(path, examples)  # type: ignore[arg-type]
