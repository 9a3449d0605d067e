"""Filing, listing, watching and cancelling deletion requests."""
