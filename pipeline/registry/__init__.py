"""radops registry."""
