"""Metrics of forgetting, utility and cost."""
