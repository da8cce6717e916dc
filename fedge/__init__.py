"""fedge core: pure numpy. Weights, aggregation, statistics, features, data, errors."""

__version__ = "0.1.0"
