"""SecAgg+ devices for tests: a :class:`fedge.secagg.ClientState` that answers a secure
round's tasks, in process (through a :class:`CoordinatorService`) or over HTTP.

A device holds the flat delta it "trained" and its example count; ``stop_after`` makes it
drop out after answering that stage (``advertise``: it never shares keys; ``share``: it
never sends its masked input; ``mask``: it never answers the unmask stage).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import requests

from coordinator.records import ClientRecord
from coordinator.service import CoordinatorService
from fedge.bundle import BundleManifest, write_manifest
from fedge.secagg import ClientState, MaskingConfig, decode_secagg, encode_secagg
from fedge.weights import Weights
from tests.support.coordinator import (
    CREATED_AT,
    FEATURE_SPEC,
    HTTP_TIMEOUT,
    SCHEMA,
    bearer,
    make_bundle,
)

__all__ = ["HttpTransport", "SecureDevice", "ServiceTransport", "make_wide_bundle", "run_stages"]

_STAGE_OF_KIND = {
    "train": "advertise",
    "secagg_share": "share",
    "secagg_mask": "mask",
    "secagg_unmask": "unmask",
}


def make_wide_bundle(directory: Path, shapes: Mapping[str, tuple[int, ...]]) -> BundleManifest:
    """The fake bundle of :func:`tests.support.coordinator.make_bundle` with head weights of
    ``shapes`` (real-sized vectors for secure rounds)."""
    make_bundle(directory)
    rng = np.random.default_rng(7)
    weights = Weights.from_pairs(
        (name, (rng.standard_normal(shape) * 0.1).astype(np.float32))
        for name, shape in shapes.items()
    )
    (directory / "weights.safetensors").write_bytes(weights.to_bytes())
    return write_manifest(
        directory,
        model_version="wide-20240501",
        task="taxi",
        schema=SCHEMA,
        feature_spec=FEATURE_SPEC.to_dict(),
        train_batch_size=8,
        created_at=CREATED_AT,
        head=tuple(shapes),
    )


class Transport(Protocol):
    def next_task(self) -> dict[str, Any] | None: ...
    def payload(self, round_id: int, stage: str) -> dict[str, Any]: ...
    def post(
        self,
        round_id: int,
        stage: str,
        *,
        task_id: str,
        document: dict[str, Any] | None,
        body: bytes | None,
        metrics: Mapping[str, float] | None,
    ) -> None: ...


class ServiceTransport:
    """Calls the service directly, as the native simulation engine does."""

    def __init__(self, service: CoordinatorService, client: ClientRecord) -> None:
        self.service = service
        self.client = client

    def next_task(self) -> dict[str, Any] | None:
        task = self.service.next_task(self.client)
        return None if task is None else task.to_dict()

    def payload(self, round_id: int, stage: str) -> dict[str, Any]:
        return self.service.secagg_payload(self.client, round_id, stage)

    def post(
        self,
        round_id: int,
        stage: str,
        *,
        task_id: str,
        document: dict[str, Any] | None,
        body: bytes | None,
        metrics: Mapping[str, float] | None,
    ) -> None:
        receipt = self.service.submit_secagg(
            self.client, round_id, stage, task_id=task_id,
            idempotency_key=f"key-{uuid.uuid4().hex}", document=document, body=body,
            metrics=metrics,
        )  # fmt: skip
        assert not receipt.duplicate


class HttpTransport:
    """The REST routes of ``/v1/rounds/{r}/secagg/{stage}`` with a client token."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.session = requests.Session()
        self.session.headers.update(bearer(token))

    def next_task(self) -> dict[str, Any] | None:
        response = self.session.get(f"{self.url}/v1/tasks/next", timeout=HTTP_TIMEOUT)
        if response.status_code == 204:
            return None
        assert response.status_code == 200, response.text
        task: dict[str, Any] = response.json()
        return task

    def payload(self, round_id: int, stage: str) -> dict[str, Any]:
        response = self.session.get(
            f"{self.url}/v1/rounds/{round_id}/secagg/{stage}", timeout=HTTP_TIMEOUT
        )
        assert response.status_code == 200, response.text
        document: dict[str, Any] = response.json()
        return document

    def post(
        self,
        round_id: int,
        stage: str,
        *,
        task_id: str,
        document: dict[str, Any] | None,
        body: bytes | None,
        metrics: Mapping[str, float] | None,
    ) -> None:
        headers = {"X-Fedge-Task-Id": task_id, "Idempotency-Key": f"key-{uuid.uuid4().hex}"}
        if body is not None:
            headers["Content-Type"] = "application/octet-stream"
            if metrics:
                headers["X-Fedge-Metrics"] = json.dumps(dict(metrics))
            data = body
        else:
            headers["Content-Type"] = "application/json"
            data = json.dumps(document).encode()
        response = self.session.post(
            f"{self.url}/v1/rounds/{round_id}/secagg/{stage}",
            data=data,
            headers=headers,
            timeout=HTTP_TIMEOUT,
        )
        assert response.status_code == 201, response.text


class SecureDevice:
    """One device of a secure round: polls for a task and answers its stage."""

    def __init__(
        self,
        transport: Transport,
        vector: npt.NDArray[np.float64],
        num_examples: int,
        *,
        seed: int,
        stop_after: str | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> None:
        self.transport = transport
        self.vector = vector
        self.num_examples = num_examples
        self.rng = np.random.default_rng(seed)
        self.stop_after = stop_after
        self.metrics = dict(metrics or {"loss": 0.5})
        self.state: ClientState | None = None
        self.answered: list[str] = []

    def step(self) -> str | None:
        """Answer the pending task, if any (and the device has not dropped out); the stage
        answered."""
        if self.stop_after is not None and self.stop_after in self.answered:
            return None
        task = self.transport.next_task()
        if task is None:
            return None
        stage = _STAGE_OF_KIND[task["kind"]]
        round_id, task_id = task["round_id"], task["task_id"]
        document: dict[str, Any] | None = None
        body: bytes | None = None
        metrics = None
        if stage == "advertise":
            options = task["config"]["options"]
            assert options["secagg"] is True
            config = MaskingConfig(
                dimension=options["secagg_dimension"],
                clip=options["secagg_clip"],
                example_cap=options["secagg_example_cap"],
                modulus_bits=options["secagg_modulus_bits"],
                quantization_bits=options["secagg_quantization_bits"],
            )
            self.state = ClientState.create(options["secagg_id"], config)
            document = encode_secagg(self.state.advertise())[0]
        else:
            assert self.state is not None
            received = decode_secagg(self.transport.payload(round_id, stage))
            if stage == "share":
                self.state, shares = self.state.share_keys(received)  # type: ignore[arg-type]
                document = encode_secagg(shares)[0]
            elif stage == "mask":
                self.state, masked = self.state.mask(
                    received,  # type: ignore[arg-type]
                    self.vector,
                    self.num_examples,
                    rng=self.rng,
                )
                body, metrics = masked.data, self.metrics
            else:
                self.state, response = self.state.unmask(received)  # type: ignore[arg-type]
                document = encode_secagg(response)[0]
        self.transport.post(
            round_id, stage, task_id=task_id, document=document, body=body, metrics=metrics
        )
        self.answered.append(stage)
        return stage


def run_stages(devices: list[SecureDevice], rounds: int = 4) -> None:
    """Let every device answer what it can, ``rounds`` times (one stage each time)."""
    for _ in range(rounds):
        for device in devices:
            device.step()
