"""Reading the append-only audit log."""
