"""Federated round simulation over the real coordinator service and edge client."""
