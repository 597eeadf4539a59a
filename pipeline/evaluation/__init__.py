"""radops evaluation."""
