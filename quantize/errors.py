"""The quantizer's own error: a model that passed input checks but could not be converted.

Input problems (a missing path, a sample of the wrong shape) are ``fedge.errors.ConfigError``
or ``DataError``; :class:`ConversionError` is what remains when the inputs were fine and the
converter, or a check of what it produced, failed. The CLI exits 1 for it and 2 for the others.
"""

from __future__ import annotations

from fedge.errors import FedgeError

__all__ = ["ConversionError"]


class ConversionError(FedgeError, RuntimeError):
    """TFLite conversion failed, or the converted model failed a check against Keras."""
