"""Service foundations: settings, persistence, queue contract, errors (no torch, no web framework)."""
