"""The CNN as an MLflow pyfunc model, logged as *code* (MLflow "models from code").

Why: a pyfunc logged as an object is pickled (cloudpickle), and loading it would unpickle
whatever the artifact store holds. Logged from this file instead, the model is this source
plus the ``model_dir`` artifact (safetensors weights + JSON metadata), and loading runs this
code and ``load_model``, never ``pickle``.

``train`` logs it with a copy of ``pipeline/models/networks.py`` as the code path module
``radops_cnn_model``, so the logged model does not depend on the installed radops version
(nor shadow the ``pipeline`` package of a process that loads it); without that copy (e.g.
when this file is imported directly) it falls back to ``pipeline.models.networks``.

Input: float32 array N×C×S×S, preprocessed as in ``model.json``'s ``preprocessing``.
Inference param ``tta`` (``params={"tta": "flips"}``): test-time augmentation, default none.
Output: the task's predictions by ``model.json``'s ``output`` spec (``networks.predict``):
N probabilities of class 1 (binary), N×K class probabilities, or N values in the target's
units (regression).
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
from mlflow.pyfunc.model import PythonModel

try:  # the copy logged with the model (see the module docstring)
    from radops_cnn_model import load_model, predict
except ImportError:  # pragma: no cover - used when radops itself is importable
    from pipeline.models.networks import load_model, predict


class RadopsCNN(PythonModel):
    """The saved CNN's predictions for its task (no pickle anywhere)."""

    def load_context(self, context: Any) -> None:
        self.network, self.meta = load_model(context.artifacts["model_dir"])

    def predict(
        self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None
    ) -> np.ndarray:
        x = np.asarray(model_input, dtype=np.float32)
        # inference param none/flips/flips_shifts; default: as evaluated (model.json inference)
        default = (self.meta.get("inference") or {}).get("tta", "none")
        tta = str((params or {}).get("tta", default))
        return predict(self.network, self.meta, x, tta=tta)


mlflow.models.set_model(RadopsCNN())
