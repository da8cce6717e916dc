"""Schema edits (``fedge-coordinator data schema``): each edit, its refusals, and the TFDV
workflow of turning reported anomalies into none by CLI."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2

from coordinator.cli import main
from coordinator.dataval import edit
from fedge.errors import ConfigError

TAXI_SCHEMA = Path(__file__).resolve().parents[2] / "fedge" / "datasets" / "taxi_schema.pbtxt"


def _schema_text() -> str:
    return """
feature { name: "payment_type" type: BYTES domain: "payment_type"
          presence { min_fraction: 1.0 min_count: 1 } }
feature { name: "company" type: BYTES string_domain { value: "A" value: "B" } }
feature { name: "fare" type: FLOAT }
feature { name: "trip_start_hour" type: INT int_domain { is_categorical: true } }
feature { name: "pickup_community_area" type: INT }
string_domain { name: "payment_type" value: "Cash" value: "Credit Card" }
"""


def _schema() -> schema_pb2.Schema:
    return text_format.Parse(_schema_text(), schema_pb2.Schema())


def test_add_domain_value_to_a_named_domain_and_an_inline_one() -> None:
    schema = _schema()
    message = edit.add_domain_value(schema, "payment_type", "Mobile")
    assert list(schema.string_domain[0].value) == ["Cash", "Credit Card", "Mobile"]
    assert "added 'Mobile'" in message
    edit.add_domain_value(schema, "company", "C")
    assert list(edit.find_feature(schema, "company").string_domain.value) == ["A", "B", "C"]
    again = edit.add_domain_value(schema, "company", "C")
    assert "nothing changed" in again
    assert list(edit.find_feature(schema, "company").string_domain.value) == ["A", "B", "C"]


def test_add_domain_value_refuses_a_feature_without_a_string_domain() -> None:
    with pytest.raises(ConfigError, match="'fare' has no string domain"):
        edit.add_domain_value(_schema(), "fare", "x")
    with pytest.raises(ConfigError, match="no feature 'tips'; its features: company, fare"):
        edit.add_domain_value(_schema(), "tips", "x")


def test_comparator_kind_follows_the_feature_type() -> None:
    schema = _schema()
    edit.set_drift(schema, "payment_type", 0.1)
    edit.set_drift(schema, "fare", 0.2)
    edit.set_skew(schema, "trip_start_hour", 0.3)
    edit.set_skew(schema, "pickup_community_area", 0.4)
    edit.set_skew(schema, "fare", 0.5, kind="infinity_norm")
    features = {f.name: f for f in schema.feature}
    assert features["payment_type"].drift_comparator.infinity_norm.threshold == 0.1
    assert features["fare"].drift_comparator.jensen_shannon_divergence.threshold == 0.2
    assert features["trip_start_hour"].skew_comparator.infinity_norm.threshold == 0.3
    pickup = features["pickup_community_area"].skew_comparator
    assert pickup.jensen_shannon_divergence.threshold == 0.4
    assert not pickup.HasField("infinity_norm")
    assert features["fare"].skew_comparator.infinity_norm.threshold == 0.5


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: edit.set_drift(s, "fare", -0.1), "threshold must be a finite number >= 0"),
        (lambda s: edit.set_skew(s, "fare", float("nan")), "threshold must be a finite"),
        (lambda s: edit.set_presence(s, "fare", 1.5), "min_fraction must be between 0 and 1"),
        (lambda s: edit.set_min_domain_mass(s, "company", -1), "min_domain_mass must be"),
        (lambda s: edit.set_drift(s, "fare", 0.1, kind="psi"), "comparator kind 'psi'"),
    ],
)
def test_out_of_range_edits_are_refused_and_change_nothing(call: object, message: str) -> None:
    schema = _schema()
    before = schema.SerializeToString()
    with pytest.raises(ConfigError, match=message):
        call(schema)  # type: ignore[operator]
    assert schema.SerializeToString() == before


def test_cli_edits_the_file_in_place(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "schema.pbtxt"
    path.write_text(_schema_text(), encoding="utf-8")
    assert main(["data", "schema", str(path), "set-presence", "fare", "0.9"]) == 0
    assert main(["data", "schema", str(path), "set-min-domain-mass", "company", "0.95"]) == 0
    out = capsys.readouterr().out
    assert "presence.min_fraction of 'fare' is 0.9" in out
    schema = text_format.Parse(path.read_text(encoding="utf-8"), schema_pb2.Schema())
    features = {f.name: f for f in schema.feature}
    assert features["fare"].presence.min_fraction == pytest.approx(0.9)
    assert features["company"].distribution_constraints.min_domain_mass == pytest.approx(0.95)
    assert [p.name for p in tmp_path.iterdir()] == ["schema.pbtxt"]  # no temporary left


def test_cli_refusal_leaves_the_file_unchanged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "schema.pbtxt"
    path.write_text(_schema_text(), encoding="utf-8")
    code = main(["data", "schema", str(path), "add-domain-value", "fare", "x"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("fedge-coordinator: error:")
    assert "'fare' has no string domain" in err
    assert path.read_text(encoding="utf-8") == _schema_text()
    assert main(["data", "schema", str(path), "set-drift", "fare", "much"]) == 2
    assert "invalid float value: 'much'" in capsys.readouterr().err


def test_the_taxi_schema_takes_a_new_payment_type(tmp_path: Path) -> None:
    source = TAXI_SCHEMA
    path = tmp_path / "schema.pbtxt"
    path.write_bytes(source.read_bytes())
    assert main(["data", "schema", str(path), "add-domain-value", "payment_type", "Mobile"]) == 0
    schema = text_format.Parse(path.read_text(encoding="utf-8"), schema_pb2.Schema())
    domain = next(d for d in schema.string_domain if d.name == "payment_type")
    assert "Mobile" in domain.value
    assert "Cash" in domain.value
    assert len(schema.feature) == len(
        text_format.Parse(source.read_text(encoding="utf-8"), schema_pb2.Schema()).feature
    )


# The TFDV workflow by CLI: stats -> infer-schema -> anomalies -> schema edits -> none -------


def _write_table(
    path: Path,
    *,
    seed: int,
    rows: int = 300,
    payments: tuple[str, ...] = ("Cash", "Credit Card"),
    rare_company: int = 0,
    fare_scale: float = 1.0,
) -> None:
    rng = np.random.default_rng(seed)
    companies = ["Flash Cab", "Taxi Affiliation", "Sun Taxi"]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["fare", "payment_type", "company", "tipped"])
        for i in range(rows):
            company = "Blue Ribbon" if i < rare_company else companies[i % 3]
            fare = round(float(rng.gamma(3.0, 4.0)) * fare_scale, 2)
            writer.writerow([fare, payments[i % len(payments)], company, ["no", "yes"][i % 2]])


def _anomalies(tmp_path: Path, stats: Path, schema: Path, *extra: str) -> dict[str, list[str]]:
    out = tmp_path / "anomalies.pbtxt"
    out.unlink(missing_ok=True)
    code = main(
        ["data", "anomalies", "--stats", str(stats), "--schema", str(schema), "--out", str(out),
         *extra]
    )  # fmt: skip
    anomalies = text_format.Parse(out.read_text(encoding="utf-8"), anomalies_pb2.Anomalies())
    found = {
        name: [r.short_description for r in info.reason]
        for name, info in anomalies.anomaly_info.items()
    }
    assert code == (1 if found else 0)
    return found


def _stats(tmp_path: Path, name: str, **table: object) -> Path:
    data, stats = tmp_path / f"{name}.csv", tmp_path / f"{name}.stats.pb"
    _write_table(data, **table)  # type: ignore[arg-type]
    argv = ["data", "stats", "--data", str(data), "--label-column", "tipped", "--out", str(stats)]
    assert main(argv) == 0
    return stats


def test_reported_anomalies_become_none_after_schema_edits_by_cli(tmp_path: Path) -> None:
    train = _stats(tmp_path, "train", seed=1)
    schema = tmp_path / "schema.pbtxt"
    assert main(["data", "infer-schema", "--stats", str(train), "--out", str(schema)]) == 0
    assert _anomalies(tmp_path, train, schema) == {}

    # A new payment type and a rare new company (2 rows of 300) in the next span.
    span = _stats(
        tmp_path, "span", seed=2, payments=("Cash", "Credit Card", "Mobile"), rare_company=2
    )
    found = _anomalies(tmp_path, span, schema)
    assert set(found) == {"payment_type", "company"}
    assert found["payment_type"] == ["Unexpected string values"]
    assert found["company"] == ["Unexpected string values"]
    assert main(["data", "schema", str(schema), "add-domain-value", "payment_type", "Mobile"]) == 0
    assert _anomalies(tmp_path, span, schema) == {"company": ["Unexpected string values"]}
    assert main(["data", "schema", str(schema), "set-min-domain-mass", "company", "0.99"]) == 0
    assert _anomalies(tmp_path, span, schema) == {}

    # Skew between training and serving fares (x1.5): reported over a tight threshold,
    # none once the threshold is relaxed above the measured divergence.
    serving = _stats(tmp_path, "serving", seed=3, fare_scale=1.5)
    assert main(["data", "schema", str(schema), "set-skew", "fare", "0.01"]) == 0
    skew = _anomalies(tmp_path, train, schema, "--serving", str(serving))
    assert skew == {
        "fare": ["High approximate Jensen-Shannon divergence between training and serving"]
    }
    assert main(["data", "schema", str(schema), "set-skew", "fare", "0.9"]) == 0
    assert _anomalies(tmp_path, train, schema, "--serving", str(serving)) == {}


def test_the_cli_offers_every_edit_and_comparator_kind() -> None:
    from coordinator.dataval import workflow

    assert workflow._COMPARATOR_KINDS == edit.COMPARATOR_KINDS
    assert set(workflow._EDIT_HELP) == set(edit.EDITS)
