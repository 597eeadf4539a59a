"""radops training."""
