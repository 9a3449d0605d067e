"""API keys: stored hashed, each with scopes; and the idempotency records of keyed requests."""
