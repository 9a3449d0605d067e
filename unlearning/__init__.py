"""Lethe's science library: the reference world, VLM backbones, CAGUL and baselines (pure torch)."""
