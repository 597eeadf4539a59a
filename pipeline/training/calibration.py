"""Post-hoc calibration fitted on the validation split (``train.calibration``).

Networks trained with early stopping on AUC are often over-confident; a clinician reading a
probability needs it calibrated. The fitted map is stored in ``model.json``'s ``output``
spec and applied by ``networks.apply_output``, so every consumer (evaluate, predict, the
served MLflow model) sees calibrated probabilities:

* ``temperature``: one scalar T dividing the logits, chosen to minimise validation NLL
  (bounded scalar search on log T). Monotone: ranking and AUC are unchanged. Binary and
  multi-class.
* ``isotonic``: scikit-learn's IsotonicRegression of the labels on the validation
  probabilities, stored as its threshold arrays (``{"x": [...], "y": [...]}``) and applied
  with ``np.interp``. Binary only; it makes ties, so AUC can change slightly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.errors import ConfigError

METHODS = ("none", "temperature", "isotonic")
EPS = 1e-12


def nll(y: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-likelihood of class indices ``y`` under N probabilities of class 1
    (binary) or N×K class probabilities."""
    y = np.asarray(y).astype(np.int64)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim == 1:
        p1 = np.clip(p, EPS, 1 - EPS)
        return float(-np.mean(np.where(y == 1, np.log(p1), np.log(1 - p1))))
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], EPS, None))))


def resolve_method(method: str, transform: str, class_probabilities: bool = True) -> str:
    """``auto``: temperature scaling for a classifier's sigmoid/softmax output per image (or
    series), none for any other output (regression values, masks, reconstructions).
    ``class_probabilities``: the task's own answer (``Task.class_probabilities``)."""
    if method != "auto":
        return method
    classifier = transform in ("sigmoid", "softmax") and class_probabilities
    return "temperature" if classifier else "none"


def check_method(method: str, transform: str, class_probabilities: bool = True) -> None:
    """Refuse a calibration that does not apply to the output transform."""
    method = resolve_method(method, transform, class_probabilities)
    if method == "none":
        return
    if transform not in ("sigmoid", "softmax") or not class_probabilities:
        raise ConfigError(
            f"train.calibration {method!r} applies to classification only "
            f"(this model's output is {transform!r}); set train.calibration: none"
        )
    if method == "isotonic" and transform != "sigmoid":
        raise ConfigError(
            "train.calibration isotonic is for binary classifiers only; use temperature "
            "for more than two classes"
        )


def fit_temperature(raw: np.ndarray, y: np.ndarray, transform: str) -> float:
    """The temperature T minimising the NLL of ``transform(raw / T)`` (T in [0.05, 20])."""
    from scipy.optimize import minimize_scalar

    from pipeline.models.networks import apply_output

    def loss(log_t: float) -> float:
        spec = {"transform": transform, "temperature": float(np.exp(log_t))}
        return nll(y, apply_output(raw, spec).astype(np.float64))

    best = minimize_scalar(loss, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    t = float(np.exp(best.x))
    return t if loss(float(best.x)) < loss(0.0) else 1.0


def fit_isotonic(probs: np.ndarray, y: np.ndarray) -> dict[str, list[float]]:
    """Isotonic regression of ``y`` on ``probs`` as its threshold arrays."""
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
    iso.fit(np.asarray(probs, np.float64), np.asarray(y, np.float64))
    return {
        "x": [float(v) for v in iso.X_thresholds_],
        "y": [float(v) for v in iso.y_thresholds_],
    }


def calibrate(
    output: dict[str, Any], method: str, raw_val: np.ndarray, y_val: np.ndarray
) -> tuple[dict[str, Any], dict[str, float]]:
    """``(the output spec with the fitted calibration, val NLL/Brier before and after)``."""
    from pipeline.models.networks import apply_output, uncalibrated

    spec = uncalibrated(output)
    transform = str(spec.get("transform"))
    check_method(method, transform)
    if method == "none":
        return spec, {}
    y = np.asarray(y_val).astype(np.int64)
    before = apply_output(raw_val, spec).astype(np.float64)
    if method == "temperature":
        spec = spec | {"temperature": fit_temperature(raw_val, y, transform)}
    else:
        spec = spec | {"isotonic": fit_isotonic(before, y)}
    after = apply_output(raw_val, spec).astype(np.float64)
    report = {"val_nll_uncalibrated": nll(y, before), "val_nll": nll(y, after)}
    if before.ndim == 1:
        report |= {
            "val_brier_uncalibrated": float(np.mean((before - y) ** 2)),
            "val_brier": float(np.mean((after - y) ** 2)),
        }
    return spec, report
