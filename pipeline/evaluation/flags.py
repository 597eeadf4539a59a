"""Overfitting / underfitting verdicts from the CNN's training history (``history.json``)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pipeline.config import EvaluateSection

# The history metric fit_flags compares, and its name in words, per monitored metric
# (anything else, i.e. regression's val_mae, is judged on R²).
FLAG_METRICS = {"val_auc": ("auc", "AUC"), "val_auc_macro": ("auc_macro", "macro AUC")}


def fit_flags(
    history: dict[str, Any] | None,
    cfg: EvaluateSection,
    window: int = 5,
    metric: str = "auc",
    label: str = "AUC",
) -> dict[str, Any]:
    """Overfitting / underfitting verdicts from the CNN's training history.

    Overfitting: train ``metric`` exceeds validation ``metric`` by more than ``overfit_gap``
    at the best epoch (the one kept) or the final epoch, or over the last ``window`` epochs
    validation loss trends up while training loss trends down. Underfitting: train and
    validation ``metric`` both below ``underfit_auc`` at the best epoch. ``None`` means the
    history could not tell. ``metric`` is a larger-is-better score on a 0–1 scale: ``auc``
    (binary), ``auc_macro`` (K classes) or ``r2`` (regression).
    """
    flags: dict[str, Any] = {"overfitting": None, "underfitting": None, "statements": []}
    epochs = [e for e in (history or {}).get("epochs", []) if isinstance(e, dict)]
    if not epochs:
        flags["statements"] = ["no training history: over/underfitting not assessed"]
        return flags

    def value(epoch: dict[str, Any], key: str) -> float:
        v = epoch.get(key)
        return float(v) if v is not None else math.nan

    best_no = (history or {}).get("best_epoch")
    best = next((e for e in epochs if e.get("epoch") == best_no), epochs[-1])
    checks = {"best": best, "final": epochs[-1]}
    gaps = {k: value(e, f"train_{metric}") - value(e, f"val_{metric}") for k, e in checks.items()}
    statements: list[str] = []
    over = False
    for which, gap in gaps.items():
        if not math.isnan(gap) and gap > cfg.overfit_gap:
            over = True
            statements.append(
                f"OVERFITTING: at the {which} epoch ({checks[which].get('epoch')}) train {label} "
                f"exceeds validation {label} by {gap:.3f} (> {cfg.overfit_gap})"
            )
    tail = epochs[-window:]
    if len(tail) >= 3:
        xs = np.arange(len(tail), dtype=float)
        tl = np.array([value(e, "train_loss") for e in tail])
        vl = np.array([value(e, "val_loss") for e in tail])
        finite = bool(np.isfinite(tl).all() and np.isfinite(vl).all())
        if finite and np.polyfit(xs, vl, 1)[0] > 0 and np.polyfit(xs, tl, 1)[0] < 0:
            over = True
            statements.append(
                f"OVERFITTING: over the last {len(tail)} epochs validation loss rises "
                "while training loss falls"
            )
    train_auc, val_auc = value(best, f"train_{metric}"), value(best, f"val_{metric}")
    under: bool | None = None
    if not (math.isnan(train_auc) or math.isnan(val_auc)):
        under = train_auc < cfg.underfit_auc and val_auc < cfg.underfit_auc
        if under:
            statements.append(
                f"UNDERFITTING: train {label} {train_auc:.3f} and validation {label} {val_auc:.3f} are "
                f"both below {cfg.underfit_auc}"
            )
    if not statements:
        statements.append(
            f"no overfitting or underfitting flagged (best epoch {best.get('epoch')}: train "
            f"{label} {train_auc:.3f}, validation {label} {val_auc:.3f}, gap {gaps['best']:.3f})"
        )
    flags |= {
        "overfitting": over,
        "underfitting": under,
        "statements": statements,
        "best_epoch": best.get("epoch"),
        "train_auc": train_auc,
        "val_auc": val_auc,
        "train_val_gap": gaps["best"],
    }
    return flags
