"""The append-only audit log: who did what, to what, and when."""
