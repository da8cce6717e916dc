"""Shared test set-up: quiet TensorFlow, and a marker for slow end-to-end runs."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
