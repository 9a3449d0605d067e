"""Trained unlearning modules (adapters) and the versioned set of active ones."""
