"""The HTTP API: deletion requests, adapters, VQA with the active module set, operations endpoints."""
