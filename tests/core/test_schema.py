"""Schema validation and its JSON form."""

from __future__ import annotations

import pytest

from fedge.errors import ConfigError
from fedge.schema import Schema


def test_schema_round_trips_through_dict() -> None:
    schema = Schema(
        numeric=("pixels", "x"),
        categorical=("c",),
        label="y",
        num_classes=3,
        shapes={"pixels": (8, 8)},
        region="c",
    )
    again = Schema.from_dict(schema.to_dict())
    assert again == schema
    assert again.shape_of("pixels") == (8, 8)
    assert again.shape_of("x") == ()
    assert again.features == ("pixels", "x", "c")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"numeric": (), "categorical": ()}, "at least one feature"),
        ({"numeric": ("a", "a")}, "listed twice"),
        ({"numeric": ("y",)}, "cannot also be a feature"),
        ({"num_classes": 1}, "num_classes"),
        ({"shapes": {"c": (2,)}}, "not numeric"),
    ],
)
def test_schema_rejects_invalid_definitions(kwargs: dict[str, object], message: str) -> None:
    base: dict[str, object] = {
        "numeric": ("a",),
        "categorical": ("c",),
        "label": "y",
        "num_classes": 2,
    }
    base.update(kwargs)
    with pytest.raises(ConfigError, match=message):
        Schema(**base)  # type: ignore[arg-type]


def test_schema_from_dict_rejects_garbage() -> None:
    with pytest.raises(ConfigError, match="not a valid schema"):
        Schema.from_dict({"numeric": "abc", "categorical": [], "label": "y", "num_classes": 2})
    with pytest.raises(ConfigError, match="not a valid schema"):
        Schema.from_dict({"numeric": []})
