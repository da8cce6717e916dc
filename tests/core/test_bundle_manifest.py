"""Tests of fedge.bundle: manifest JSON, writing, verification and path-traversal refusal."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from fedge.bundle import (
    MANIFEST_NAME,
    BundleManifest,
    FileEntry,
    check_file_name,
    read_manifest,
    sha256_file,
    verify_bundle,
    write_manifest,
)
from fedge.errors import BundleError
from tests.support.coordinator import CREATED_AT, FEATURE_SPEC, SCHEMA, head_weights, make_bundle


def _doc(bundle: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((bundle / MANIFEST_NAME).read_text())
    return data


def _write_doc(bundle: Path, doc: dict[str, Any]) -> None:
    (bundle / MANIFEST_NAME).write_text(json.dumps(doc))


def test_write_manifest_hashes_every_file(tmp_path: Path) -> None:
    manifest = make_bundle(tmp_path)
    for name in ("inference.tflite", "trainable.tflite", "weights.safetensors"):
        data = (tmp_path / name).read_bytes()
        assert manifest.files[name] == FileEntry(hashlib.sha256(data).hexdigest(), len(data))
    assert manifest.head == ("head/kernel", "head/bias")
    assert manifest.num_classes == 3
    assert not list(tmp_path.glob(".*.tmp"))


def test_manifest_roundtrips_through_json(tmp_path: Path) -> None:
    manifest = make_bundle(tmp_path)
    again = BundleManifest.from_json(manifest.to_json())
    assert again == manifest
    assert again.to_json() == manifest.to_json()
    assert read_manifest(tmp_path) == manifest
    assert _doc(tmp_path)["format"] == "fedge.bundle"
    assert _doc(tmp_path)["format_version"] == 1


def test_verify_bundle_accepts_an_intact_bundle(tmp_path: Path) -> None:
    manifest = make_bundle(tmp_path)
    assert verify_bundle(tmp_path) == manifest


def test_verify_bundle_names_a_missing_file(tmp_path: Path) -> None:
    make_bundle(tmp_path)
    (tmp_path / "trainable.tflite").unlink()
    with pytest.raises(BundleError, match=r"'trainable\.tflite' is missing") as info:
        verify_bundle(tmp_path)
    assert info.value.file == "trainable.tflite"


def test_verify_bundle_detects_a_size_mismatch(tmp_path: Path) -> None:
    make_bundle(tmp_path)
    with open(tmp_path / "inference.tflite", "ab") as handle:
        handle.write(b"x")
    with pytest.raises(
        BundleError, match=r"'inference.tflite' is 261 bytes, the manifest says 260"
    ):
        verify_bundle(tmp_path)


def test_verify_bundle_detects_a_digest_mismatch(tmp_path: Path) -> None:
    make_bundle(tmp_path)
    path = tmp_path / "inference.tflite"
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"'inference\.tflite' has sha256 .* the manifest says"):
        verify_bundle(tmp_path)


def test_verify_bundle_checks_head_against_the_weights(tmp_path: Path) -> None:
    make_bundle(tmp_path)
    doc = _doc(tmp_path)
    doc["head"] = ["head/kernel"]
    _write_doc(tmp_path, doc)
    with pytest.raises(BundleError, match=r"differs from the tensors of weights\.safetensors"):
        verify_bundle(tmp_path)


@pytest.mark.parametrize(
    "name", ["../etc/passwd", "a/b.tflite", "..", ".hidden", "/abs", "a\\b", "", "x..y"]
)
def test_unsafe_file_names_are_refused(name: str) -> None:
    with pytest.raises(BundleError, match="unsafe bundle file name"):
        check_file_name(name)


def test_manifest_with_path_traversal_entry_is_refused(tmp_path: Path) -> None:
    make_bundle(tmp_path / "b")
    (tmp_path / "secret").write_bytes(b"s")
    doc = _doc(tmp_path / "b")
    doc["files"]["../secret"] = {"sha256": sha256_file(tmp_path / "secret"), "size": 1}
    _write_doc(tmp_path / "b", doc)
    with pytest.raises(BundleError, match=r"unsafe bundle file name '\.\./secret'"):
        verify_bundle(tmp_path / "b")


def test_symlinked_bundle_file_is_refused(tmp_path: Path) -> None:
    make_bundle(tmp_path / "b")
    target = tmp_path / "outside.bin"
    target.write_bytes((tmp_path / "b" / "inference.tflite").read_bytes())
    (tmp_path / "b" / "inference.tflite").unlink()
    os.symlink(target, tmp_path / "b" / "inference.tflite")
    with pytest.raises(BundleError, match="symbolic link"):
        verify_bundle(tmp_path / "b")


@pytest.mark.parametrize(
    ("mutate", "phrase"),
    [
        (lambda d: d.update(format="zip"), "not a bundle manifest"),
        (lambda d: d.update(format_version=9), "unsupported bundle format version 9"),
        (lambda d: d.pop("head"), r"lacks \['head'\]"),
        (lambda d: d.update(extra=1), r"unknown keys \['extra'\]"),
        (lambda d: d["files"].pop("weights.safetensors"), "no entry for"),
        (lambda d: d["files"]["inference.tflite"].update(sha256="XYZ"), "64 lowercase hex"),
        (lambda d: d["files"]["inference.tflite"].update(size=-1), "size must be"),
        (lambda d: d.update(train_batch_size=0), "train_batch_size must be"),
        (lambda d: d.update(num_classes=7), "the schema says 3"),
        (lambda d: d.update(created_at="yesterday"), "ISO 8601"),
        (lambda d: d.update(feature_spec={"format": "nope"}), "feature_spec"),
        (lambda d: d.update(schema={"numeric": 3}), "schema"),
        (lambda d: d.update(files=[1, 2]), "malformed manifest"),
    ],
)
def test_bad_manifests_are_refused_precisely(tmp_path: Path, mutate: Any, phrase: str) -> None:
    make_bundle(tmp_path)
    doc = _doc(tmp_path)
    mutate(doc)
    _write_doc(tmp_path, doc)
    with pytest.raises(BundleError, match=phrase):
        read_manifest(tmp_path)


def test_read_manifest_reports_missing_and_garbage(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"no manifest\.json"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(BundleError, match="not JSON"):
        read_manifest(tmp_path)


def test_write_manifest_refuses_a_bundle_without_weights(tmp_path: Path) -> None:
    (tmp_path / "inference.tflite").write_bytes(b"a")
    (tmp_path / "trainable.tflite").write_bytes(b"b")
    with pytest.raises(BundleError, match=r"'weights\.safetensors' is missing"):
        write_manifest(
            tmp_path,
            model_version="m",
            task="taxi",
            schema=SCHEMA,
            feature_spec=FEATURE_SPEC.to_dict(),
            train_batch_size=4,
            created_at=CREATED_AT,
        )


def test_write_manifest_includes_extra_files(tmp_path: Path) -> None:
    make_bundle(tmp_path)
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    manifest = write_manifest(
        tmp_path,
        model_version="m2",
        task="taxi",
        schema=SCHEMA,
        feature_spec=FEATURE_SPEC.to_dict(),
        train_batch_size=4,
        created_at=CREATED_AT,
        extra_files=["labels.txt"],
    )
    assert manifest.files["labels.txt"].size == 6
    assert verify_bundle(tmp_path).files["labels.txt"] == manifest.files["labels.txt"]


def test_derive_replaces_only_the_named_files(tmp_path: Path) -> None:
    manifest = make_bundle(tmp_path)
    body = head_weights(5).to_bytes()
    entry = FileEntry(hashlib.sha256(body).hexdigest(), len(body))
    derived = manifest.derive(
        model_version="v2", files={"weights.safetensors": entry}, created_at=CREATED_AT
    )
    assert derived.model_version == "v2"
    assert derived.files["weights.safetensors"] == entry
    assert derived.files["inference.tflite"] == manifest.files["inference.tflite"]
    assert derived.metadata == manifest.metadata
