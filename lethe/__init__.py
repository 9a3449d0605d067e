"""Lethe command line and process entry points."""
