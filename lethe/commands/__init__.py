"""The `lethe` command groups, one module each; `lethe.cli` puts them together."""
