"""The scenario of a run: the model bundled for the devices, the clients' rows, the schedule.

For a built-in task the cloud pretrains the zoo model on the proxy share (cached, see
:mod:`simulations.pretrain`), with the init weights applied to its head when given; with the
user's model (:mod:`simulations.inputs.model`) the model is checked, prepared and
bundled, over the user's data or a built-in task's rows; a user's edge bundle is trained as
it is.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedge.data import Dataset, train_test_split
from fedge.errors import ConfigError
from fedge.features import FeatureSpec
from fedge.schema import Schema
from fedge.weights import Weights
from simulations.errors import SettingsError
from simulations.inputs import files
from simulations.inputs.model_cache import (
    ModelFacts,
    cached_facts,
    conversion_entry,
    find_conversion,
    remember_facts,
)
from simulations.pretrain import PretrainConfig, find_pretrained, pretrain
from simulations.scenario import (
    Scenario,
    TaskRows,
    build_task_partition,
    initial_head,
    plan_schedule,
    split_task_rows,
)
from simulations.settings import CheckedInputs, Settings, about
from simulations.workload import Hyperparams, Schedule

if TYPE_CHECKING:
    from simulations.inputs.model import UserModel

__all__ = ["Step", "prepare_scenario"]

Step = Callable[[str], None]


def prepare_scenario(
    settings: Settings, inputs: CheckedInputs, *, step: Step | None = None
) -> Scenario:
    """The scenario of ``settings``: pretrained (cached) or user-supplied model, bundled;
    the clients' rows; the schedule."""
    say = step or (lambda _: None)
    if inputs.data is not None or settings.model_file is not None:
        return _user_scenario(settings, inputs, step=say)
    return _task_scenario(settings, inputs, say)


def _task_scenario(settings: Settings, inputs: CheckedInputs, say: Step) -> Scenario:
    assert settings.task is not None
    rows = split_task_rows(
        settings.task,
        seed=settings.seed,
        test_fraction=settings.test_fraction,
        proxy_fraction=settings.proxy_fraction,
    )
    partition = inputs.partition or build_task_partition(
        rows.pool,
        settings.partition,
        clients=settings.clients,
        seed=settings.seed,
        holdout_fraction=settings.holdout_fraction,
    )
    schedule = _schedule(settings, inputs, list(partition))
    config = PretrainConfig(
        task=settings.task,
        seed=settings.seed,
        proxy_fraction=settings.proxy_fraction,
        test_fraction=settings.test_fraction,
        epochs=settings.pretrain_epochs,
        device_batch_size=settings.batch_size,
    )
    if inputs.init is not None:  # checked against the model's head before any training
        found = find_pretrained(config, settings.cache_dir)
        reference = initial_head(found.bundle_dir) if found else _zoo_head(settings.task, rows)
        files.check_init(inputs.init, reference)
    pretrained = pretrain(config, settings.cache_dir, progress=say)
    record_fingerprint = _record_fingerprint(pretrained.export_dir)
    if record_fingerprint is not None and record_fingerprint != rows.proxy.fingerprint():
        raise ConfigError(
            f"the cached model in {pretrained.export_dir} was trained on other rows than this "
            "run's proxy share; remove the cache entry"
        )
    bundle = pretrained.bundle_dir
    if inputs.init is not None:
        bundle = files.bundle_with_head(bundle, inputs.init, Path(settings.cache_dir))
    return Scenario(
        task=settings.task,
        bundle_dir=bundle,
        keras_model=pretrained.export_dir,
        pool=rows.pool,
        partition=partition,
        test=rows.test,
        schedule=schedule,
        hyperparams=Hyperparams(
            epochs=settings.epochs,
            batch_size=settings.batch_size,
            learning_rate=settings.learning_rate,
        ),
        seed=settings.seed,
        details={
            "task": settings.task,
            "source": "built-in task, pretrained on the proxy share",
            "partition": settings.partition if inputs.partition is None else "file",
            "proxy_examples": len(rows.proxy),
            "pool_examples": len(rows.pool),
            "test_examples": len(rows.test),
            "bundle": str(bundle),
            "pretrained_reused": pretrained.reused,
        },
    )


def _load(path: str | os.PathLike[str], init: Weights | None) -> UserModel:
    """Load (with TensorFlow), check and prepare the user's Keras model."""
    from simulations.inputs.model import load_user_model

    return load_user_model(path, init=init)


def _converted(
    model: ModelFacts | UserModel,
    settings: Settings,
    inputs: CheckedInputs,
    *,
    task: str,
    spec: FeatureSpec,
    schema: Schema,
    test: Dataset,
    step: Step,
) -> tuple[Path, Path]:
    """(bundle, SavedModel) of the user's model: from the conversion cache, or converted now
    (loading the model first when only its cached facts were read). The facts of a model
    loaded here are recorded with its conversion, for the next run to find both."""
    cache_dir = Path(settings.cache_dir)
    entry = conversion_entry(
        model.digest,
        cache_dir=cache_dir,
        task=task,
        spec=spec,
        schema=schema,
        test=test,
        batch_size=settings.batch_size,
        seed=settings.seed,
    )
    found = find_conversion(entry)
    if found is not None:
        if not isinstance(model, ModelFacts):
            remember_facts(model.facts, cache_dir)
        return found
    from simulations.inputs.model import bundle_user_model

    assert settings.model_file is not None
    user = model if not isinstance(model, ModelFacts) else _load(settings.model_file, inputs.init)
    converted = bundle_user_model(
        user,
        task=task,
        spec=spec,
        schema=schema,
        test=test,
        batch_size=settings.batch_size,
        seed=settings.seed,
        cache_dir=cache_dir,
        step=step,
    )
    remember_facts(user.facts, cache_dir)
    return converted


def _schedule(settings: Settings, inputs: CheckedInputs, ids: list[str]) -> Schedule:
    """Who trains in each round: the schedule file's rounds, or ``per_round`` of ``ids``
    (all of them by default) drawn for each of ``rounds`` rounds."""
    return plan_schedule(
        ids,
        rounds=settings.rounds or 1,
        per_round=settings.per_round or len(ids),
        seed=settings.seed,
        fixed=inputs.schedule,
    )


def _zoo_head(task: str, rows: TaskRows) -> Weights:
    """The zoo model's trainable head (names and shapes) for ``task``, untrained."""
    from cloud_trainer.data import build_feature_spec
    from cloud_trainer.models import build_model, freeze_backbone
    from quantize.trainable import trainable_weights

    spec = build_feature_spec(rows.proxy)
    model = build_model(
        task, input_shape=spec.output_shape, num_classes=rows.proxy.schema.num_classes
    )
    return Weights(trainable_weights(freeze_backbone(model)))


def _record_fingerprint(export_dir: Path) -> str | None:
    from cloud_trainer.record import load_training_record

    try:
        return load_training_record(export_dir).data_fingerprint
    except Exception:  # an unreadable record: the bundle check already passed
        return None


def _test_data(inputs: CheckedInputs, num_classes: int) -> Dataset | None:
    """The test data file's rows (``--test-data``) for a model of ``num_classes``."""
    test = inputs.test_data
    if test is None:
        return None
    if num_classes < test.min_classes:
        raise SettingsError(
            f"test data file {test.path} has class ids up to {test.min_classes - 1}, your "
            f"model outputs {num_classes} classes",
            fields=["test_data_file", "model_file"],
        )
    return test.dataset(num_classes)


def _user_scenario(
    settings: Settings, inputs: CheckedInputs, *, step: Callable[[str], None]
) -> Scenario:
    """The scenario of a run with the user's model (and possibly the user's data).

    A Keras model already in the conversion cache (same file content and init) is not
    loaded: its facts and bundle come from the cache, without TensorFlow.
    """
    assert settings.model_file is not None
    step(f"loading your model {settings.model_file}")
    cache_dir = Path(settings.cache_dir)
    model: files.BundledModel | ModelFacts | UserModel
    with about("model_file"):
        if files.is_bundle(settings.model_file):
            model = files.load_bundled_model(settings.model_file)
        else:
            model = cached_facts(Path(settings.model_file), inputs.init, cache_dir) or _load(
                settings.model_file, inputs.init
            )
    details: dict[str, Any] = {"model": str(settings.model_file)}
    if inputs.data is not None:
        data = inputs.data
        if model.num_classes < data.min_classes:
            raise SettingsError(
                f"data file {data.path} has class ids up to {data.min_classes - 1}, your model "
                f"outputs {model.num_classes} classes",
                fields=["data_file", "model_file"],
            )
        dataset = data.dataset(model.num_classes)
        task = files.CUSTOM_TASK
        given_test = _test_data(inputs, model.num_classes)
        if given_test is not None:
            details["test"] = f"the test data file {settings.test_data_file}"
        if inputs.partition is not None:
            pool, partition = dataset, inputs.partition
            free = np.setdiff1d(np.arange(len(dataset)), partition.assigned())
            if given_test is not None:
                test = given_test
            elif free.size:
                test = dataset.take(free)
                details["test"] = "rows no client holds"
            else:
                holdouts = np.sort(np.concatenate([s.holdout for s in partition.values()]))
                if holdouts.size == 0:
                    raise SettingsError(
                        "the partition file gives every row to a client and holdout_fraction "
                        "is 0: leave some rows unassigned to test on",
                        fields=["partition_file", "holdout_fraction"],
                    )
                test = dataset.take(holdouts)
                details["test"] = "the clients' holdout rows (every row is assigned)"
        else:
            if given_test is not None:  # every row of the data file is the clients'
                pool, test = dataset, given_test
            else:
                train_idx, test_idx = train_test_split(
                    dataset, test_fraction=settings.test_fraction, seed=settings.seed
                )
                pool, test = dataset.take(train_idx), dataset.take(test_idx)
            partition = build_task_partition(
                pool,
                settings.partition,
                clients=settings.clients,
                seed=settings.seed,
                holdout_fraction=settings.holdout_fraction,
            )
        spec = data.feature_spec(pool)
        details.update({"data": str(data.path), "rows": len(dataset)})
    else:
        from cloud_trainer.data import build_feature_spec

        assert settings.task is not None
        task = settings.task
        rows = split_task_rows(
            task,
            seed=settings.seed,
            test_fraction=settings.test_fraction,
            proxy_fraction=settings.proxy_fraction,
        )
        pool, test = rows.pool, rows.test
        if model.num_classes != pool.schema.num_classes:
            raise SettingsError(
                f"your model outputs {model.num_classes} classes, task {task} has "
                f"{pool.schema.num_classes}",
                fields=["model_file", "task"],
            )
        partition = inputs.partition or build_task_partition(
            pool,
            settings.partition,
            clients=settings.clients,
            seed=settings.seed,
            holdout_fraction=settings.holdout_fraction,
        )
        spec = build_feature_spec(rows.proxy)
        details["data"] = f"built-in task {task} (feature spec from the proxy share)"
    if model.feature_spec is not None:  # a fedge-train export reads columns its own way
        spec = model.feature_spec
        details["feature_spec"] = "the export's feature_spec.json"
    schedule = _schedule(settings, inputs, list(partition))
    if tuple(model.input_shape) != spec.output_shape:
        raise SettingsError(
            f"your model takes inputs of shape {tuple(model.input_shape)}, the data give "
            f"{spec.output_shape}",
            fields=["model_file", "data_file" if inputs.data is not None else "task"],
        )
    if isinstance(model, files.BundledModel):
        # the devices train the bundle as it is (the native engine needs no Keras model)
        bundle = saved_model = model.source
        if inputs.init is not None:
            with about("init_file"):
                bundle = files.bundle_with_head(bundle, inputs.init, Path(settings.cache_dir))
        source = "your bundle"
    else:
        with about("model_file"):
            bundle, saved_model = _converted(
                model,
                settings,
                inputs,
                task=task,
                spec=spec,
                schema=pool.schema,
                test=test,
                step=step,
            )
        source = "your model"
    details.update({"task": task, "source": source, "bundle": str(bundle)})
    details.update({"pool_examples": len(pool), "test_examples": len(test)})
    return Scenario(
        task=task,
        bundle_dir=bundle,
        keras_model=saved_model,
        pool=pool,
        partition=partition,
        test=test,
        schedule=schedule,
        hyperparams=Hyperparams(
            epochs=settings.epochs,
            batch_size=settings.batch_size,
            learning_rate=settings.learning_rate,
        ),
        seed=settings.seed,
        details=details,
    )
