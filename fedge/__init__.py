"""fedge core: pure numpy. Weights, aggregation, statistics, features, data, errors.

The public API is listed in ``__all__``; everything else is internal.
"""

from fedge.aggregation import AggregateResult, Aggregator, AggregatorSpec, build_aggregator
from fedge.errors import (
    AggregationError,
    BundleError,
    ConfigError,
    DataError,
    DtypeMismatchError,
    FeatureError,
    FedgeError,
    MissingTensorError,
    NonFiniteError,
    ProtocolError,
    ShapeMismatchError,
    UnknownTensorError,
    WeightsError,
    WeightsFormatError,
)
from fedge.features import FeatureSpec
from fedge.schema import Schema
from fedge.server_optimizers import ServerOptimizer, ServerState, build_server_optimizer
from fedge.stats import DatasetStats, StatsConfig, compute_stats, merge_stats
from fedge.strategy import (
    ClientMetrics,
    ClippedUpdates,
    ComposedStrategy,
    Strategy,
    StrategyWrapper,
    build_strategy,
)
from fedge.weights import Weights

__version__ = "0.1.0"

__all__ = [
    "AggregateResult",
    "AggregationError",
    "Aggregator",
    "AggregatorSpec",
    "BundleError",
    "ClientMetrics",
    "ClippedUpdates",
    "ComposedStrategy",
    "ConfigError",
    "DataError",
    "DatasetStats",
    "DtypeMismatchError",
    "FeatureError",
    "FeatureSpec",
    "FedgeError",
    "MissingTensorError",
    "NonFiniteError",
    "ProtocolError",
    "Schema",
    "ServerOptimizer",
    "ServerState",
    "ShapeMismatchError",
    "StatsConfig",
    "Strategy",
    "StrategyWrapper",
    "UnknownTensorError",
    "Weights",
    "WeightsError",
    "WeightsFormatError",
    "__version__",
    "build_aggregator",
    "build_server_optimizer",
    "build_strategy",
    "compute_stats",
    "merge_stats",
]
