"""Metrics by family: leakage (what answers reveal), privacy (likelihood and membership), utility, the gate's rates."""
