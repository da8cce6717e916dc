"""The cloud coordinator: rounds, clients, model registry, persistence, REST and gRPC."""
