"""The schema of a task's raw data: which columns are numeric, categorical, the label."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from fedge.errors import ConfigError

__all__ = ["Schema"]


@dataclass(frozen=True)
class Schema:
    """Names and kinds of a task's raw columns.

    Raw columns are numpy arrays whose first dimension is the example count:

    - numeric columns are ``float64`` with ``NaN`` for a missing value; a column may have a
      per-example shape (``shapes[name]``, e.g. ``(8, 8)`` for digits), scalar by default;
    - categorical columns are ``object`` arrays of ``str`` with ``None`` for a missing value.

    ``label`` names the label (int64 class ids ``0..num_classes-1``, kept apart from the
    feature columns); ``region`` the column used for per-slice metrics and natural clients;
    ``timestamp`` a numeric column (seconds since the epoch) used for spans and drift. Neither
    ``region`` nor ``timestamp`` needs to be a model feature.
    """

    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    label: str
    num_classes: int
    shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    region: str | None = None
    timestamp: str | None = None

    def __post_init__(self) -> None:
        names = self.numeric + self.categorical
        if not names:
            raise ConfigError("a schema needs at least one feature column")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"columns listed twice in the schema: {duplicates}")
        if self.label in names:
            raise ConfigError(f"the label {self.label!r} cannot also be a feature")
        if self.num_classes < 2:
            raise ConfigError(f"num_classes must be >= 2, got {self.num_classes}")
        unknown = sorted(set(self.shapes) - set(self.numeric))
        if unknown:
            raise ConfigError(f"shapes given for columns that are not numeric: {unknown}")
        object.__setattr__(
            self, "shapes", MappingProxyType({k: tuple(v) for k, v in self.shapes.items()})
        )

    @property
    def features(self) -> tuple[str, ...]:
        """Feature columns: numeric first, then categorical, in declaration order."""
        return self.numeric + self.categorical

    def shape_of(self, name: str) -> tuple[int, ...]:
        """Per-example shape of a numeric column (``()`` for a scalar)."""
        return tuple(self.shapes.get(name, ()))

    def to_dict(self) -> dict[str, object]:
        return {
            "numeric": list(self.numeric),
            "categorical": list(self.categorical),
            "label": self.label,
            "num_classes": self.num_classes,
            "shapes": {k: list(v) for k, v in self.shapes.items()},
            "region": self.region,
            "timestamp": self.timestamp,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Schema:
        try:
            shapes = data.get("shapes") or {}
            numeric, categorical = data["numeric"], data["categorical"]
            num_classes = data["num_classes"]
            if not (
                isinstance(shapes, Mapping)
                and isinstance(numeric, list | tuple)
                and isinstance(categorical, list | tuple)
                and isinstance(num_classes, int | str)
            ):
                raise TypeError("numeric/categorical must be lists, shapes a mapping")
            return cls(
                numeric=tuple(str(n) for n in numeric),
                categorical=tuple(str(n) for n in categorical),
                label=str(data["label"]),
                num_classes=int(num_classes),
                shapes={str(k): tuple(int(d) for d in v) for k, v in shapes.items()},
                region=None if data.get("region") is None else str(data["region"]),
                timestamp=None if data.get("timestamp") is None else str(data["timestamp"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"not a valid schema document: {exc}") from exc

    def to_json(self) -> str:
        """:meth:`to_dict` as JSON text (keys sorted)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Schema:
        """The schema of :meth:`to_json`'s text; ConfigError when it is not one."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"not a valid schema document: {exc}") from exc
        if not isinstance(data, Mapping):
            raise ConfigError("not a valid schema document: expected a JSON object")
        return cls.from_dict(data)
