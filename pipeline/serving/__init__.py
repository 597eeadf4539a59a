"""radops serving."""
