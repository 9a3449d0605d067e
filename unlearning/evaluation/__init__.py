"""Metrics of forgetting, utility and cost: `metrics/` by family, the shared cases and answering, `drivers/` apart."""
