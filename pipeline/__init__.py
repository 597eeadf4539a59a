"""radops: an MLOps pipeline for medical imaging.

Each stage lives in its own module with a plain ``run(params, paths) -> result`` function.
Nothing here imports Prefect, and nothing happens at import time.
"""

__version__ = "0.1.0"
