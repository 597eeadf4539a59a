"""radops data."""
