"""Keras/SavedModel to TFLite conversion, on-device-trainable models, edge bundles."""
