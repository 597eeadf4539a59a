"""Thin Prefect flows that orchestrate the DVC stages of radops."""
