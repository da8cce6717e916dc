"""The edge client: TFLite-only runtime, on-device training, local data, the daemon."""
