"""Raw data for fedge tasks: the Dataset type, CSV reading, bundled tasks, partitioners."""

from __future__ import annotations

from fedge.data.clients import PARTITION_FORMAT, ClientSplit, IndexArray, Partition
from fedge.data.dataset import Dataset
from fedge.data.digits import DIGITS_SCHEMA, load_digits
from fedge.data.partition import (
    PartitionScheme,
    by_key,
    dirichlet,
    iid,
    parse_partition,
    train_test_split,
)
from fedge.data.tables import (
    ColumnKind,
    CsvSource,
    LabelPolicy,
    canonical_category,
    flat_field_names,
    read_csv_columns,
)
from fedge.data.tasks import TASK_NAMES, load_task
from fedge.data.taxi import BIG_TIP_FRACTION, TAXI_SCHEMA, big_tipper, load_taxi
from fedge.data.user_table import (
    SCHEMA_FILE,
    UserTable,
    infer_table,
    load_schema_json,
    read_table,
    save_schema_json,
)

__all__ = [
    "BIG_TIP_FRACTION",
    "DIGITS_SCHEMA",
    "PARTITION_FORMAT",
    "SCHEMA_FILE",
    "TASK_NAMES",
    "TAXI_SCHEMA",
    "ClientSplit",
    "ColumnKind",
    "CsvSource",
    "Dataset",
    "IndexArray",
    "LabelPolicy",
    "Partition",
    "PartitionScheme",
    "UserTable",
    "big_tipper",
    "by_key",
    "canonical_category",
    "dirichlet",
    "flat_field_names",
    "iid",
    "infer_table",
    "load_digits",
    "load_schema_json",
    "load_task",
    "load_taxi",
    "parse_partition",
    "read_csv_columns",
    "read_table",
    "save_schema_json",
    "train_test_split",
]
