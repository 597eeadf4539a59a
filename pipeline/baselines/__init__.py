"""radops baselines."""
