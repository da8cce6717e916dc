"""The component schemas of the OpenAPI document (see :mod:`coordinator.openapi`)."""

from __future__ import annotations

from typing import Any

__all__ = ["build_schemas", "ref"]


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


def build_schemas() -> dict[str, Any]:
    string, number, integer = {"type": "string"}, {"type": "number"}, {"type": "integer"}
    nullable_int = {"type": "integer", "nullable": True}
    metrics = {"type": "object", "additionalProperties": number}
    return {
        "Error": _obj(["error", "detail"], error=string, detail=string),
        "Health": _obj(["status"], status=string, model_version={**string, "nullable": True}),
        "Registration": _obj(
            ["client_id", "token"], client_id=string, token=string, token_type=string
        ),
        "RegisterRequest": _obj([], region=string, metadata={"type": "object"}),
        "TaskConfig": _obj(
            ["epochs", "batch_size", "learning_rate"],
            epochs=integer,
            batch_size=integer,
            learning_rate=number,
            max_examples=nullable_int,
            options={"type": "object"},
        ),
        "Task": _obj(
            ["task_id", "kind", "round_id", "model_version", "config", "deadline"],
            type=string,
            version=integer,
            task_id=string,
            kind={"type": "string", "enum": ["train", "evaluate", "stats", "features"]},
            round_id=nullable_int,
            model_version=string,
            config=ref("TaskConfig"),
            deadline={**number, "description": "seconds since the epoch"},
        ),
        "TaskRequest": _obj(
            ["kind"],
            kind={"type": "string", "enum": ["evaluate", "stats", "features"]},
            client_ids={"type": "array", "items": string},
            deadline_seconds=number,
            config=ref("TaskConfig"),
        ),
        "TaskList": _obj(["tasks"], tasks={"type": "array", "items": {"type": "object"}}),
        "UpdateReceipt": _obj(
            ["round_id", "client_id", "task_id", "sha256", "duplicate"],
            round_id=integer,
            client_id=string,
            task_id=string,
            sha256=string,
            num_examples=integer,
            received_at=string,
            duplicate={"type": "boolean"},
        ),
        "StatsReport": _obj(["task_id", "stats"], task_id=string, stats={"type": "object"}),
        "EvalReport": _obj(
            ["task_id", "model_version", "num_examples", "metrics"],
            task_id=string,
            model_version=string,
            num_examples=integer,
            metrics=metrics,
            personalized_metrics=metrics,
            slice_metrics={"type": "object", "additionalProperties": metrics},
        ),
        "FeatureBatch": _obj(
            ["task_id", "embeddings", "labels"],
            task_id=string,
            embeddings=_obj(
                ["dtype", "shape", "data"],
                dtype=string,
                shape={"type": "array", "items": integer},
                data={**string, "format": "byte"},
            ),
            labels={"type": "array", "items": integer},
        ),
        "ReportReceipt": _obj(
            ["report_id", "kind"],
            report_id=integer,
            kind=string,
            client_id=string,
            task_id=string,
            received_at=string,
            model_version={**string, "nullable": True},
        ),
        "Report": _obj(
            ["report_id", "kind", "client_id", "task_id", "received_at", "document"],
            report_id=integer,
            kind={"type": "string", "enum": ["evaluation", "stats", "features"]},
            client_id=string,
            task_id=string,
            received_at=string,
            model_version={**string, "nullable": True},
            document={
                "type": "object",
                "description": "The report message as the codec encodes it; for "
                "features only task_id, num_rows, dim and the sha256 of the stored batch",
            },
        ),
        "ReportList": _obj(["reports"], reports={"type": "array", "items": ref("Report")}),
        "RoundConfig": {
            "type": "object",
            "description": "Overrides of the round defaults: "
            "clients_per_round, min_clients, min_available_clients, "
            "deadline_seconds, epochs, batch_size, learning_rate, aggregator, "
            "aggregator_options, server_optimizer, server_optimizer_options, "
            "metrics_aggregation, task_options, norm_bound, max_examples, continuous, "
            "auto_promote",
        },
        "Round": _obj(
            ["round_id", "state"],
            round_id=integer,
            state={
                "type": "string",
                "enum": ["open", "collecting", "aggregating", "committed", "failed"],
            },
            config=ref("RoundConfig"),
            base_version={**string, "nullable": True},
            selected={"type": "array", "items": string},
            num_updates=integer,
            result_version={**string, "nullable": True},
            failure_reason={**string, "nullable": True},
            updates={"type": "array", "items": {"type": "object"}},
        ),
        "RoundList": _obj(["rounds"], rounds={"type": "array", "items": ref("Round")}),
        "Model": _obj(
            ["version", "stage"],
            version=string,
            stage={"type": "string", "enum": ["candidate", "production", "archived"]},
            parent={**string, "nullable": True},
            round_id=nullable_int,
            training_job={**string, "nullable": True},
            participants=nullable_int,
            data_fingerprint={**string, "nullable": True},
            stats_id=nullable_int,
            trainer_host={**string, "nullable": True},
            trainer_user={**string, "nullable": True},
            metrics=metrics,
            slice_metrics={"type": "object", "additionalProperties": metrics},
            created_at=string,
            promoted_at={**string, "nullable": True},
            deployed_at={**string, "nullable": True},
            artifacts={"type": "object", "additionalProperties": string},
            events={"type": "array", "items": {"type": "object"}},
        ),
        "ModelList": _obj(["models"], models={"type": "array", "items": ref("Model")}),
        "Client": _obj(
            ["client_id"],
            client_id=string,
            region={**string, "nullable": True},
            metadata={"type": "object"},
            registered_at=string,
        ),
        "ClientList": _obj(["clients"], clients={"type": "array", "items": ref("Client")}),
        "Alert": _obj(
            ["alert_id", "kind", "message"],
            alert_id=integer,
            kind=string,
            severity=string,
            message=string,
            created_at=string,
            round_id=nullable_int,
            model_version={**string, "nullable": True},
            details={"type": "object"},
        ),
        "AlertList": _obj(["alerts"], alerts={"type": "array", "items": ref("Alert")}),
    }
