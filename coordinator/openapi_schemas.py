"""The component schemas of the OpenAPI document (see :mod:`coordinator.openapi`).

OpenAPI 3.1 schemas are JSON Schema 2020-12. Response documents are closed
(``additionalProperties: false``) and list every field they always carry as required, so
a field added to :mod:`coordinator.views` without a line here fails the tests that
validate every response against this document.
"""

from __future__ import annotations

from typing import Any

from coordinator.config import COMPRESSIONS, GATE_METRICS, ROUND_LIMITS
from coordinator.intake import METRIC_BOUND
from fedge.messages import TASK_KINDS

__all__ = ["build_schemas", "ref"]

STRING: dict[str, Any] = {"type": "string"}
NUMBER: dict[str, Any] = {"type": "number"}
INTEGER: dict[str, Any] = {"type": "integer"}
BOOLEAN: dict[str, Any] = {"type": "boolean"}
TIME: dict[str, Any] = {"type": "string", "format": "date-time"}
OBJECT: dict[str, Any] = {"type": "object"}
METRICS: dict[str, Any] = {"type": "object", "additionalProperties": NUMBER}
SLICE_METRICS: dict[str, Any] = {"type": "object", "additionalProperties": METRICS}
SCALAR: dict[str, Any] = {"type": ["string", "number", "boolean"]}
CLASS_COUNTS: dict[str, Any] = {
    "type": "array",
    "items": {**INTEGER, "minimum": 0},
    "minItems": 1,
}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` or null (JSON Schema's way; 3.1 has no ``nullable``)."""
    return {**schema, "type": [schema["type"], "null"]}


def closed(*, optional: tuple[str, ...] = (), **properties: Any) -> dict[str, Any]:
    """An object with exactly ``properties``, all required but ``optional``."""
    return {
        "type": "object",
        "required": [name for name in properties if name not in optional],
        "properties": properties,
        "additionalProperties": False,
    }


def _message(kind: str) -> dict[str, Any]:
    """The header every message document carries (``type`` and ``version``)."""
    return {"type": "string", "const": kind}


def _messages() -> dict[str, Any]:
    """Task and reply messages (:mod:`fedge.messages`)."""
    column = {
        "type": "object",
        "required": ["name", "kind", "count", "missing"],
        "properties": {
            "name": STRING,
            "kind": {"enum": ["numeric", "categorical"]},
            "count": INTEGER,
            "missing": INTEGER,
        },
    }
    return {
        "TaskConfig": closed(
            optional=("max_examples", "options"),
            epochs={**INTEGER, "minimum": 1},
            batch_size={**INTEGER, "minimum": 1},
            learning_rate={**NUMBER, "exclusiveMinimum": 0},
            max_examples=nullable({**INTEGER, "minimum": 1}),
            options={"type": "object", "additionalProperties": SCALAR},
        ),
        "Task": closed(
            type=_message("task"),
            version=INTEGER,
            task_id=STRING,
            kind={"enum": list(TASK_KINDS)},
            round_id=nullable(INTEGER),
            model_version=STRING,
            config=ref("TaskConfig"),
            deadline={**NUMBER, "description": "seconds since the epoch"},
        ),
        "DatasetStats": {
            "type": "object",
            "description": "Mergeable statistics of a client's data (fedge.stats)",
            "required": ["format", "version", "num_rows", "label_counts", "columns"],
            "properties": {
                "format": {"const": "fedge.stats"},
                "version": INTEGER,
                "num_rows": INTEGER,
                "label_counts": {"type": ["array", "null"], "items": INTEGER},
                "columns": {"type": "array", "items": column},
            },
            "additionalProperties": False,
        },
        "PrivacyNote": {
            **closed(
                mechanism=STRING,
                epsilon={**NUMBER, "minimum": 0},
                delta={**NUMBER, "minimum": 0, "exclusiveMaximum": 1},
                mode={"enum": ["prototypes", "rows", "statistics"]},
            ),
            "description": "How the device noised a reply (differential privacy): the "
            "mechanism, the (epsilon, delta) it charged to its budget, and what the noise "
            "protects (per-class prototypes, single rows, or statistics)",
        },
        "StatsReport": closed(
            optional=("type", "version", "privacy"),
            type=_message("stats_report"),
            version=INTEGER,
            task_id=STRING,
            stats=ref("DatasetStats"),
            privacy=ref("PrivacyNote"),
        ),
        "EvalReport": closed(
            optional=(
                "type",
                "version",
                "personalized_metrics",
                "slice_metrics",
                "prediction_counts",
                "label_counts",
                "privacy",
            ),
            type=_message("eval_report"),
            version=INTEGER,
            task_id=STRING,
            model_version=STRING,
            num_examples={**INTEGER, "minimum": 0},
            metrics=METRICS,
            personalized_metrics=METRICS,
            slice_metrics=SLICE_METRICS,
            prediction_counts={
                **CLASS_COUNTS,
                "description": "per class id: how many evaluated rows the global model "
                "predicted as that class (noised when privacy says so)",
            },
            label_counts={
                **CLASS_COUNTS,
                "description": "per class id: how many evaluated rows carry that label "
                "(noised when privacy says so)",
            },
            privacy=ref("PrivacyNote"),
        ),
        "FeatureBatch": closed(
            optional=("type", "version", "privacy", "counts"),
            type=_message("feature_batch"),
            version=INTEGER,
            task_id=STRING,
            embeddings=closed(
                dtype={"const": "float32"},
                shape={"type": "array", "items": INTEGER, "minItems": 2, "maxItems": 2},
                data={**STRING, "contentEncoding": "base64"},
            ),
            labels={"type": "array", "items": INTEGER},
            privacy=ref("PrivacyNote"),
            counts={
                "type": "array",
                "items": {**INTEGER, "minimum": 0},
                "description": "per row: the noised number of rows behind a prototype",
            },
        ),
    }


def _round_config() -> dict[str, Any]:
    top = ROUND_LIMITS
    return {
        "type": "object",
        "description": "Round settings; in a request, overrides of the server's defaults. "
        "Every number has an upper bound, refused with 400 (invalid_config) before anything "
        "is stored; option values have magnitude at most "
        f"{top['option_magnitude']:g}. Intake refuses an update whose num_examples is outside "
        f"1..max_examples or whose metrics exceed magnitude {METRIC_BOUND:g} (an accuracy: "
        "outside [0, 1]) with 422.",
        "properties": {
            "clients_per_round": {
                **INTEGER,
                "minimum": 1,
                "maximum": int(top["clients_per_round"]),
                "description": "clients selected; a round that cannot find "
                "min_available_clients (default: this many) by its deadline fails with "
                "'too few clients'",
            },
            "min_clients": {**INTEGER, "minimum": 1, "maximum": int(top["min_clients"])},
            "min_available_clients": nullable(
                {**INTEGER, "minimum": 1, "maximum": int(top["min_available_clients"])}
            ),
            "deadline_seconds": {
                **NUMBER,
                "exclusiveMinimum": 0,
                "maximum": top["deadline_seconds"],
                "description": "how long an open round may wait for clients, and then how "
                "long it collects updates (at most 30 days)",
            },
            "epochs": {**INTEGER, "minimum": 1, "maximum": int(top["epochs"])},
            "batch_size": nullable({**INTEGER, "minimum": 1, "maximum": int(top["batch_size"])}),
            "learning_rate": {**NUMBER, "exclusiveMinimum": 0, "maximum": top["learning_rate"]},
            "aggregator": {
                **STRING,
                "description": "fedavg, median, trimmed_mean, krum, or a preset: fedavgm, "
                "fedadam, fedyogi (FedAvg with that server optimizer)",
            },
            "aggregator_options": METRICS,
            "server_optimizer": {
                **nullable(STRING),
                "description": "fedavg, fedavgm, fedadam, fedyogi; null: the aggregator's "
                "preset (fedavg for a plain aggregator)",
            },
            "server_optimizer_options": METRICS,
            "metrics_aggregation": {
                **STRING,
                "description": "how the clients' metrics combine: weighted_mean (by example "
                "count), mean, median",
            },
            "task_options": {"type": "object", "additionalProperties": SCALAR},
            "norm_bound": {**NUMBER, "exclusiveMinimum": 0, "maximum": top["norm_bound"]},
            "max_examples": {**INTEGER, "minimum": 1, "maximum": int(top["max_examples"])},
            "compression": {
                "enum": list(COMPRESSIONS),
                "description": "the codec of every update of the round: none (safetensors), "
                "q8 (8-bit stochastic quantization) or topk (the largest values with error "
                "feedback on the device); an upload with another codec is refused with 400 "
                "(codec_mismatch). The train task carries it in config.options "
                "(compression, compression_fraction, compression_block)",
            },
            "compression_options": {
                **METRICS,
                "description": "q8: block (values per quantization block; default one block "
                "per tensor); topk: fraction (in (0, 1], default 0.01); none: no options",
            },
            "continuous": BOOLEAN,
            "auto_promote": nullable(BOOLEAN),
            **_quarantine_config(),
            **_secure_config(),
            **_dp_config(),
            **_gate_config(),
            "mode": {
                "enum": ["sync", "async"],
                "description": "sync: rounds of selected clients; async: FedBuff buffers "
                "(any polling client gets a train task on production; an update staler "
                "than max_staleness is refused with 409 too_stale; buffer updates commit "
                "their 1/sqrt(1 + staleness)-weighted mean). Async refuses secure "
                "aggregation, DP, the gate, stats_every_round and non-fedavg strategies",
            },
            "buffer": {
                **INTEGER,
                "minimum": 1,
                "maximum": int(top["clients_per_round"]),
                "description": "async: updates per buffered commit (K)",
            },
            "max_staleness": {
                **INTEGER,
                "minimum": 0,
                "maximum": 1_000_000,
                "description": "async: the most versions an update's base may be behind",
            },
        },
        "additionalProperties": False,
    }


def _gate_config() -> dict[str, Any]:
    """The gate's settings of a round config (coordinator.gate)."""
    return {
        "gate": {
            **nullable(BOOLEAN),
            "description": "evaluate each candidate before promoting it; null: on when the "
            "round promotes on commit and a holdout exists (serve --holdout, or "
            "gate_clients > 0)",
        },
        "gate_margin": {
            **NUMBER,
            "minimum": 0,
            "maximum": 1,
            "description": "how much gate_metric (absolute) a candidate may lose against its "
            "parent, overall and in any region, and still be promoted",
        },
        "gate_metric": {"enum": list(GATE_METRICS)},
        "gate_clients": {
            **INTEGER,
            "minimum": 0,
            "maximum": int(ROUND_LIMITS["clients_per_round"]),
            "description": "federated holdout cohort: clients not selected for the round "
            "asked to evaluate the candidate and its parent (0: none)",
        },
        "gate_seconds": nullable(
            {
                **NUMBER,
                "exclusiveMinimum": 0,
                "maximum": ROUND_LIMITS["deadline_seconds"],
                "description": "how long the cohort has to report; null: deadline_seconds",
            }
        ),
        "gate_min_reports": {
            **INTEGER,
            "minimum": 1,
            "description": "cohort clients that must answer both evaluations, else the "
            "candidate is rejected",
        },
    }


def _dp_config() -> dict[str, Any]:
    """The differential-privacy settings of a round config (fedge.strategy.DPFedAvg)."""
    return {
        "dp_noise_multiplier": nullable(
            {
                **NUMBER,
                "minimum": 0,
                "maximum": 1e6,
                "description": "DP-FedAvg's noise multiplier z (null: no DP): updates clipped "
                "to dp_clip, summed with weight 1, N(0, (z dp_clip)^2) added per coordinate, "
                "divided by clients_per_round; needs the fedavg aggregator. In a secure round "
                "each client clips and adds N(0, (z dp_clip)^2 / clients_per_round) (task "
                "options dp_clip, dp_noise_stddev); secagg_clip must be >= dp_clip",
            }
        ),
        "dp_clip": {
            **NUMBER,
            "exclusiveMinimum": 0,
            "maximum": 1e6,
            "description": "L2 bound of one client's update (adaptive: the first round's)",
        },
        "dp_adaptive_clip": {
            **BOOLEAN,
            "description": "quantile clipping (Andrew et al. 2021); refused in a secure round",
        },
        "dp_target_quantile": {**NUMBER, "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "dp_clipped_count_stddev": nullable(
            {
                **NUMBER,
                "minimum": 0,
                "maximum": 1e6,
                "description": "noise of the clipped count adaptive clipping uses; null: "
                "clients_per_round / 20. It must exceed dp_noise_multiplier / 2 (the count "
                "spends part of the round's privacy)",
            }
        ),
        "dp_delta": nullable(
            {
                **NUMBER,
                "exclusiveMinimum": 0,
                "exclusiveMaximum": 1,
                "description": "the accountant's delta; null: 1 / n^1.1 for the n registered "
                "clients when the round starts",
            }
        ),
    }


def _quarantine_config() -> dict[str, Any]:
    """The quarantine settings of a round config (coordinator.quarantine)."""
    return {
        "quarantine": {
            **BOOLEAN,
            "description": "when the round closes, hold back (keep, not aggregate) the "
            "updates of clients whose latest statistics report shows anomalies against the "
            "base version's training statistics and schema",
        },
        "quarantine_numeric_threshold": {
            **NUMBER,
            "minimum": 0,
            "maximum": 1,
            "description": "Jensen-Shannon divergence of a numeric feature's histogram above "
            "which an inferred schema's skew comparator flags it",
        },
        "quarantine_categorical_threshold": {
            **NUMBER,
            "minimum": 0,
            "maximum": 1,
            "description": "L-infinity distance of a categorical feature's value shares "
            "above which an inferred schema's skew comparator flags it",
        },
        "stats_every_round": {
            **BOOLEAN,
            "description": "give each selected client a stats task with its train task "
            "(not in a secure round), so every update is judged by fresh statistics",
        },
    }


def _secure_config() -> dict[str, Any]:
    """The secure-aggregation settings of a round config (coordinator.secagg)."""
    return {
        "secure_aggregation": {
            **BOOLEAN,
            "description": "run the round with SecAgg+: the coordinator learns only the sum of "
            "the clipped, quantized deltas; needs the fedavg aggregator (any server "
            "optimizer), no topk compression and clients_per_round >= 3 (else 400)",
        },
        "secagg_clip": {**NUMBER, "exclusiveMinimum": 0, "maximum": 1e6},
        "secagg_quantization_bits": {
            **INTEGER,
            "minimum": 1,
            "maximum": 32,
            "description": "bits per quantized coordinate (8 when compression is q8)",
        },
        "secagg_example_cap": {**INTEGER, "minimum": 1},
        "secagg_degree": nullable(
            {**INTEGER, "minimum": 2, "description": "neighbours per client (even); null: O(log n)"}
        ),
        "secagg_threshold": nullable(
            {**INTEGER, "minimum": 2, "description": "shares to recover a secret; null: k/2+1"}
        ),
        "secagg_stage_seconds": nullable(
            {
                **NUMBER,
                "exclusiveMinimum": 0,
                "description": "deadline of each stage after training; null: deadline_seconds",
            }
        ),
    }


def _secagg() -> dict[str, Any]:
    """The secure-aggregation documents (fedge.secagg.codec) and the round summary."""
    blobs = {"type": "object", "additionalProperties": STRING}
    ids = {"type": "array", "items": {**INTEGER, "minimum": 0}}
    advertise = closed(
        type={"const": "secagg_advertise_keys"},
        client_id={**INTEGER, "minimum": 0},
        encryption_key={**STRING, "description": "base64 X25519 public key"},
        mask_key={**STRING, "description": "base64 X25519 public key"},
    )
    return {
        "SecAggAdvertiseKeys": advertise,
        "SecAggKeyRoster": closed(
            type={"const": "secagg_key_roster"},
            client_id=INTEGER,
            threshold=INTEGER,
            neighbours={"type": "array", "items": ref("SecAggAdvertiseKeys")},
        ),
        "SecAggShareKeys": closed(
            type={"const": "secagg_share_keys"},
            client_id=INTEGER,
            bundles={**blobs, "description": "neighbour id -> base64 sealed bundle"},
        ),
        "SecAggShareDelivery": closed(
            type={"const": "secagg_share_delivery"},
            client_id=INTEGER,
            bundles={**blobs, "description": "sender id -> base64 sealed bundle"},
        ),
        "SecAggUnmaskRequest": closed(
            type={"const": "secagg_unmask_request"},
            client_id=INTEGER,
            survivors=ids,
            dropped=ids,
        ),
        "SecAggUnmaskResponse": closed(
            type={"const": "secagg_unmask_response"},
            client_id=INTEGER,
            seed_shares={**blobs, "description": "surviving neighbour id -> base64 share"},
            key_shares={**blobs, "description": "dropped neighbour id -> base64 share"},
        ),
        "SecAggReceipt": closed(
            round_id=INTEGER,
            stage={"enum": ["advertise", "share", "mask", "unmask"]},
            client_id=STRING,
            duplicate=BOOLEAN,
        ),
        "SecAggSummary": {
            **closed(
                stage={"enum": ["advertise", "share", "mask", "unmask"]},
                clients=INTEGER,
                advertised=INTEGER,
                shared=INTEGER,
                survivors=INTEGER,
                degree=nullable(INTEGER),
                threshold=nullable(INTEGER),
            ),
            "description": "A secure round: its stage, the clients in the protocol, how many "
            "advertised keys and shared them (counted when the stage closed) and sent a masked "
            "input (counted when the mask stage closed), k and t",
        },
    }


def _serving() -> dict[str, Any]:
    """The predict route's documents (TensorFlow Serving's REST format)."""
    row = {
        "description": "a row: an object of raw column values by name (null: missing); "
        "with one feature column, the bare value; in the static mode, the bare key",
    }
    return {
        "PredictRequest": {
            "type": "object",
            "description": "exactly one of instances (rows) or inputs (columns)",
            "properties": {
                "instances": {"type": "array", "items": row, "minItems": 1},
                "inputs": {
                    "type": ["object", "array"],
                    "description": "an object of columns, each a list of one length",
                },
                "signature_name": {**STRING, "description": "accepted and ignored"},
            },
            "additionalProperties": False,
        },
        "Prediction": closed(
            class_id={**INTEGER, "minimum": 0},
            label={**STRING, "description": "the class's label name"},
            probabilities={"type": "array", "items": NUMBER},
            logits={"type": "array", "items": NUMBER, "description": "the model's scores"},
        ),
        "PredictResponse": closed(
            model_version={**STRING, "description": "the version that answered (vN)"},
            predictions={"type": "array", "items": ref("Prediction")},
        ),
    }


def _records() -> dict[str, Any]:
    """The documents of :mod:`coordinator.views`."""
    report_base: dict[str, Any] = {
        "report_id": INTEGER,
        "kind": {"enum": ["evaluation", "stats", "features"]},
        "client_id": STRING,
        "task_id": STRING,
        "model_version": nullable(STRING),
        "received_at": TIME,
    }
    round_config = ref("RoundConfig")
    return {
        "Client": closed(
            client_id=STRING,
            region=nullable(STRING),
            metadata={"type": "object", "additionalProperties": STRING},
            registered_at=TIME,
            revoked_at={
                **nullable(TIME),
                "description": "when an operator revoked it (its token no longer works)",
            },
        ),
        "ClientList": closed(clients={"type": "array", "items": ref("Client")}),
        "EnrollmentToken": closed(
            token_id=STRING,
            label=nullable(STRING),
            created_at=TIME,
            expires_at={**nullable(TIME), "description": "null: it never expires"},
            max_uses={**nullable(INTEGER), "description": "null: any number of clients"},
            uses={**INTEGER, "description": "clients registered with it"},
            revoked_at=nullable(TIME),
        ),
        "IssuedEnrollmentToken": closed(
            token_id=STRING,
            label=nullable(STRING),
            created_at=TIME,
            expires_at=nullable(TIME),
            max_uses=nullable(INTEGER),
            uses=INTEGER,
            revoked_at=nullable(TIME),
            token={**STRING, "description": "the token, shown only in this answer"},
        ),
        "TokenRotationRequest": closed(
            optional=("token",),
            token={
                "type": "string",
                "pattern": "^fedge_[A-Za-z0-9_-]{43}$",
                "description": "the new token the device made and stored before asking "
                "(without it the coordinator makes one); the same token again is a retry",
            },
        ),
        "EnrollmentTokenList": closed(
            enrollment_tokens={"type": "array", "items": ref("EnrollmentToken")}
        ),
        "EnrollmentTokenRequest": closed(
            optional=("label", "expires_in", "max_uses"),
            label=nullable(STRING),
            expires_in={
                **nullable({"type": "number", "exclusiveMinimum": 0}),
                "description": "seconds from now until it expires (null: never)",
            },
            max_uses={
                **nullable({"type": "integer", "minimum": 1}),
                "description": "how many clients it may register (null: any number)",
            },
        ),
        "TaskRecord": closed(
            task_id=STRING,
            kind={"enum": list(TASK_KINDS)},
            client_id=STRING,
            model_version=STRING,
            config=ref("TaskConfig"),
            created_at=TIME,
            deadline=TIME,
            round_id=nullable(INTEGER),
            status={"enum": ["pending", "completed", "expired", "declined"]},
            completed_at=nullable(TIME),
        ),
        "TaskList": closed(tasks={"type": "array", "items": ref("TaskRecord")}),
        "TaskDecline": closed(reason={"type": "string", "minLength": 1, "maxLength": 500}),
        "TaskDeclined": closed(task_id=STRING, status={"const": "declined"}),
        "UpdateReceipt": closed(
            round_id=INTEGER,
            client_id=STRING,
            task_id=STRING,
            sha256=STRING,
            num_examples=INTEGER,
            received_at=TIME,
            duplicate=BOOLEAN,
        ),
        "ReportReceipt": closed(**report_base),
        "FeatureSummary": closed(
            optional=("privacy", "counts"),
            task_id=STRING,
            num_rows=nullable(INTEGER),
            dim=nullable(INTEGER),
            sha256=nullable(STRING),
            privacy=ref("PrivacyNote"),
            counts={"type": "array", "items": {**INTEGER, "minimum": 0}},
        ),
        "Report": closed(
            **report_base,
            document={
                "description": "The report message as the codec encodes it; for features "
                "only task_id, num_rows, dim and the sha256 of the stored batch",
                "oneOf": [
                    {**ref("EvalReport"), "required": ["type", "version"]},
                    {**ref("StatsReport"), "required": ["type", "version"]},
                    ref("FeatureSummary"),
                ],
            },
        ),
        "ReportList": closed(reports={"type": "array", "items": ref("Report")}),
        "RoundConfig": _round_config(),
        "RoundUpdate": closed(
            round_id=INTEGER,
            client_id=STRING,
            task_id=STRING,
            num_examples=INTEGER,
            l2_norm=NUMBER,
            sha256=STRING,
            received_at=TIME,
            metrics=METRICS,
            quarantine={
                **nullable(STRING),
                "description": "why the update is held out of aggregation (its client's "
                "latest statistics showed anomalies); null: it never was",
            },
            released_at={
                **nullable(TIME),
                "description": "when an operator released the quarantined update (it counts "
                "again); null: not released",
            },
        ),
        "Round": closed(
            optional=("updates",),
            round_id=INTEGER,
            state={
                "enum": ["open", "collecting", "aggregating", "gating", "committed", "failed"],
                "description": "gating: the candidate (result_version) is being evaluated by "
                "the gate; a rejected candidate fails the round with the gate's reason",
            },
            config={**round_config, "required": list(_round_config()["properties"])},
            opened_at=TIME,
            base_version=nullable(STRING),
            collecting_at=nullable(TIME),
            deadline=nullable(TIME),
            closed_at=nullable(TIME),
            selected={"type": "array", "items": STRING},
            result_version=nullable(STRING),
            failure_reason=nullable(STRING),
            bytes_up={
                **INTEGER,
                "minimum": 0,
                "description": "bytes of the bodies the round's selected clients posted for "
                "it (updates, secure-aggregation messages), accepted or refused",
            },
            bytes_down={
                **INTEGER,
                "minimum": 0,
                "description": "bytes of the round's task documents and secure-aggregation "
                "payloads served, and of the base model files its selected clients downloaded "
                "while it was active",
            },
            measurements=METRICS,
            secagg={
                "oneOf": [ref("SecAggSummary"), {"type": "null"}],
                "description": "null for a plain round",
            },
            num_updates=INTEGER,
            updates={
                "type": "array",
                "items": ref("RoundUpdate"),
                "description": "Accepted updates (only when one round is shown)",
            },
        ),
        "RoundList": closed(rounds={"type": "array", "items": ref("Round")}),
        "ModelEvent": closed(
            kind={"enum": ["registered", "promoted", "rolled_back", "archived", "rejected"]},
            at=TIME,
            previous=nullable(STRING),
            detail=STRING,
            actor={
                **nullable(STRING),
                "description": "The operator's token id (admin:<first 12 hex of its "
                "sha256>) of a promotion or rollback an operator asked for; null for what "
                "the coordinator did itself",
            },
        ),
        "Model": closed(
            optional=("predictions",),
            version=STRING,
            seq=INTEGER,
            stage={
                "enum": ["candidate", "production", "archived", "rejected"],
                "description": "rejected: a round's candidate the gate refused (the reason is "
                "in gate.reason and the rejected event)",
            },
            created_at=TIME,
            parent=nullable(STRING),
            round_id=nullable(INTEGER),
            training_job=nullable(STRING),
            participants=nullable(INTEGER),
            data_fingerprint=nullable(STRING),
            stats_id=nullable(INTEGER),
            trainer_host=nullable(STRING),
            trainer_user=nullable(STRING),
            metrics=METRICS,
            slice_metrics=SLICE_METRICS,
            promoted_at=nullable(TIME),
            deployed_at=nullable(TIME),
            privacy={"oneOf": [ref("ModelPrivacy"), {"type": "null"}]},
            signing_key_id={
                **nullable(STRING),
                "description": "id of the Ed25519 key that signed this version's manifest",
            },
            signature={
                **nullable(STRING),
                "description": "<key id>:<base64 Ed25519 signature> over the manifest bytes",
            },
            gate={"oneOf": [ref("ModelGate"), {"type": "null"}]},
            artifacts={
                "type": "object",
                "description": "file name -> sha256",
                "additionalProperties": STRING,
            },
            events={"type": "array", "items": ref("ModelEvent")},
            predictions={
                **ref("ModelPredictions"),
                "description": "one version's document only (not in lists)",
            },
        ),
        "ModelList": closed(models={"type": "array", "items": ref("Model")}),
        **_gate_schemas(),
        "ClassDistribution": {
            **closed(
                model_version=STRING,
                reports={**INTEGER, "minimum": 1, "description": "reports with counts"},
                prediction_counts={"type": "array", "items": {**INTEGER, "minimum": 0}},
                label_counts={"type": "array", "items": {**INTEGER, "minimum": 0}},
                prediction_distribution=nullable({"type": "array", "items": NUMBER}),
                label_distribution=nullable({"type": "array", "items": NUMBER}),
            ),
            "description": "the summed per-class counts of a version's evaluation reports "
            "(as the devices sent them: noised under their policy) and their proportions",
        },
        "ModelPredictions": {
            **closed(
                distribution={"oneOf": [ref("ClassDistribution"), {"type": "null"}]},
                compared_with={
                    **nullable(STRING),
                    "description": "the latest earlier version whose reports carry counts",
                },
                previous_distribution={"oneOf": [ref("ClassDistribution"), {"type": "null"}]},
                prediction_drift={
                    **nullable({**NUMBER, "minimum": 0, "maximum": 1}),
                    "description": "L-infinity distance of the prediction distributions",
                },
                label_drift={
                    **nullable({**NUMBER, "minimum": 0, "maximum": 1}),
                    "description": "L-infinity distance of the label distributions",
                },
                threshold=NUMBER,
                min_examples=INTEGER,
                drifted={
                    **BOOLEAN,
                    "description": "a distance above threshold, both versions counting at "
                    "least min_examples rows (a prediction_drift alert is raised)",
                },
            ),
            "description": "prediction and label drift from the devices' evaluation reports",
        },
        "SigningKey": closed(
            key_id={**STRING, "description": "first 16 hex of sha256 of the raw public key"},
            public_key={**STRING, "description": "raw 32-byte Ed25519 public key, base64"},
            algorithm={"const": "ed25519"},
        ),
        "RotationStatement": closed(
            key_id=STRING,
            public_key=STRING,
            previous_key_id=STRING,
            signature={
                **STRING,
                "description": "the previous key's signature over "
                "'fedge-key-rotation-v1\\0' + the new raw public key, base64",
            },
        ),
        "SigningKeys": closed(
            current=ref("SigningKey"),
            rotations={"type": "array", "items": ref("RotationStatement")},
        ),
        "ModelPrivacy": {
            **closed(
                epsilon={
                    **nullable({**NUMBER, "minimum": 0}),
                    "description": "cumulative epsilon of the version's lineage at delta "
                    "(RDP accountant, Poisson-sampled Gaussian per round); null: no DP "
                    "guarantee (a round without DP, or without noise, in the lineage); 0 for "
                    "a version registered outside rounds (treated as public data)",
                },
                delta=nullable({**NUMBER, "minimum": 0, "exclusiveMaximum": 1}),
                noise_multiplier={
                    **nullable({**NUMBER, "minimum": 0}),
                    "description": "the noise multiplier of the round that made this version",
                },
                rounds={**INTEGER, "minimum": 0, "description": "rounds in the lineage"},
                sampling_rate={
                    **nullable({**NUMBER, "minimum": 0, "maximum": 1}),
                    "description": "clients_per_round / registered clients of that round",
                },
                events={
                    "type": "array",
                    "description": "the lineage's DP rounds, grouped: (noise_multiplier, "
                    "sampling_rate, rounds); what the accountant composes",
                    "items": closed(
                        noise_multiplier={**NUMBER, "minimum": 0},
                        sampling_rate={**NUMBER, "minimum": 0, "maximum": 1},
                        rounds={**INTEGER, "minimum": 1},
                    ),
                },
            ),
            "description": "the differential-privacy guarantee of a version",
        },
        "Alert": closed(
            alert_id=INTEGER,
            kind=STRING,
            severity=STRING,
            message=STRING,
            created_at=TIME,
            round_id=nullable(INTEGER),
            model_version=nullable(STRING),
            details=OBJECT,
        ),
        "AlertList": closed(alerts={"type": "array", "items": ref("Alert")}),
        "QuarantineList": closed(updates={"type": "array", "items": ref("RoundUpdate")}),
        "QuarantineRelease": closed(
            client_id=STRING,
            released={
                "type": "array",
                "items": ref("RoundUpdate"),
                "description": "the updates released now (empty: none was held)",
            },
        ),
        "RollbackRequest": closed(
            optional=("before",),
            before={
                **nullable(STRING),
                "description": "an ISO 8601 time (UTC unless it names its offset): the "
                "version that was production then becomes production again (absent or "
                "null: the previous production version)",
                "examples": ["2026-11-30T04:00:00Z"],
            },
        ),
    }


def _gate_schemas() -> dict[str, Any]:
    """The gate's evaluation of a round's candidate (ModelRecord.gate, coordinator.gate)."""
    evaluation = {
        "type": "object",
        "description": "gate_metric overall (e.g. accuracy), the examples behind it and the "
        "same per region",
        "properties": {
            "examples": INTEGER,
            "regions": {"type": "object", "additionalProperties": METRICS},
        },
        "additionalProperties": NUMBER,
    }
    pair = {
        "candidate": {
            **evaluation,
            "description": "the candidate's measurements (federated: with the reports count)",
        },
        "parent": {**evaluation, "description": "the parent's measurements"},
        "error": {**STRING, "description": "why the evaluation could not run"},
    }
    return {
        "ModelGate": {
            **closed(
                status={
                    "enum": ["pending", "passed", "rejected", "abandoned"],
                    "description": "abandoned: the round failed for another reason first",
                },
                round_id=INTEGER,
                candidate=STRING,
                parent=STRING,
                metric=STRING,
                margin=NUMBER,
                cloud={
                    "oneOf": [ref("GateCloud"), {"type": "null"}],
                    "description": "the cloud holdout; null without one",
                },
                federated={
                    "oneOf": [ref("GateFederated"), {"type": "null"}],
                    "description": "the federated holdout cohort; null when gate_clients is 0",
                },
                reason=nullable(STRING),
                decided_at=nullable(NUMBER),
            ),
            "description": "the gate's evaluation of a round's candidate against its parent",
        },
        "GateCloud": closed(optional=tuple(pair), **pair),
        "GateFederated": closed(
            optional=("candidate", "parent", "error"),
            candidate_clients={
                "type": "array",
                "items": STRING,
                "description": "the half of the cohort asked to evaluate the candidate",
            },
            parent_clients={
                "type": "array",
                "items": STRING,
                "description": "the half of the cohort asked to evaluate the parent",
            },
            deadline=NUMBER,
            min_reports={**INTEGER, "description": "reports needed for each version"},
            **{**pair, "error": nullable(STRING)},
        ),
    }


def build_schemas() -> dict[str, Any]:
    return {
        "Error": closed(
            error={**STRING, "description": "the check that failed, e.g. round_closed"},
            detail=STRING,
        ),
        "Health": closed(
            status={"enum": ["ok", "failing"]},
            model_version=nullable(STRING),
            checks={
                "type": "object",
                "description": "each check (store, artifacts): ok, or what is wrong",
                "additionalProperties": STRING,
            },
        ),
        "Registration": closed(
            optional=("signing_key",),
            client_id=STRING,
            token=STRING,
            token_type={"const": "Bearer"},
            signing_key={
                **ref("SigningKey"),
                "description": "The manifest signing key, for the device to pin (registration)",
            },
        ),
        "RegisterRequest": closed(
            optional=("region", "metadata"),
            region=nullable(STRING),
            metadata={"type": "object", "additionalProperties": STRING},
        ),
        "TaskRequest": closed(
            optional=("client_ids", "deadline_seconds", "config"),
            kind={"enum": ["evaluate", "stats", "features"]},
            client_ids={"type": "array", "items": STRING},
            deadline_seconds={**NUMBER, "exclusiveMinimum": 0},
            config=ref("TaskConfig"),
        ),
        "Manifest": {
            "type": "object",
            "description": "The signed bundle manifest (fedge.bundle)",
            "required": ["format", "format_version", "model_version", "task", "files"],
            "properties": {
                "format": STRING,
                "format_version": INTEGER,
                "model_version": STRING,
                "task": STRING,
                "files": {
                    "type": "object",
                    "additionalProperties": closed(sha256=STRING, size=INTEGER),
                },
            },
        },
        **_messages(),
        **_records(),
        **_secagg(),
        **_serving(),
    }
