"""radops models."""
