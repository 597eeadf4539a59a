"""Evaluation of the finishing steps: calibration before and after (ECE, Brier, NLL,
reliability curves), PPV/NPV at the deployment prevalence, and what the report and the model
card say about the ensemble, TTA and calibration.

* ECE (expected calibration error): ``Σ_b n_b/N · |mean(y)_b − mean(p)_b|`` over
  ``evaluate.calibration_bins`` equal-width bins of the predicted probability (K classes:
  of the top-class confidence against its accuracy).
* PPV/NPV at prevalence π (Bayes, from test sensitivity and specificity at the validation
  threshold): ``PPV = sens·π / (sens·π + (1−spec)(1−π))``,
  ``NPV = spec(1−π) / (spec(1−π) + (1−sens)π)``; intervals from the same patient-level
  bootstrap as the AUC. The test split's prevalence is rarely the clinic's.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import catalog
from pipeline.metrics import stats

if TYPE_CHECKING:
    from pipeline.config import EvaluateSection
    from pipeline.tasks import Task

BEFORE_AFTER_PLOT = catalog.CALIBRATION_BEFORE_AFTER_PLOT


def is_calibrated(meta: dict[str, Any]) -> bool:
    from pipeline.models.networks import CALIBRATION_KEYS

    return any(k in (meta.get("output") or {}) for k in CALIBRATION_KEYS)


def ece(y: Any, probs: Any, n_bins: int = 10) -> float:
    """Expected calibration error of N probabilities of class 1, or of N×K probabilities
    (top-class confidence vs accuracy)."""
    y_arr = np.asarray(y).astype(np.int64).ravel()
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim == 2:
        conf, hit = p.max(axis=1), (p.argmax(axis=1) == y_arr).astype(np.float64)
    else:
        conf, hit = p.ravel(), y_arr.astype(np.float64)
    if conf.size == 0:
        return math.nan
    bins = np.minimum((conf * n_bins).astype(np.int64), n_bins - 1)
    total = 0.0
    for b in np.unique(bins):
        sel = bins == b
        total += sel.sum() * abs(hit[sel].mean() - conf[sel].mean())
    return float(total / conf.size)


def ppv_npv_at(sensitivity: Any, specificity: Any, prevalence: float) -> tuple[Any, Any]:
    """PPV and NPV at ``prevalence`` from sensitivity and specificity (Bayes' rule)."""
    sens, spec, pi = np.asarray(sensitivity), np.asarray(specificity), float(prevalence)
    with np.errstate(divide="ignore", invalid="ignore"):
        ppv = sens * pi / (sens * pi + (1 - spec) * (1 - pi))
        npv = spec * (1 - pi) / (spec * (1 - pi) + (1 - sens) * pi)
    return ppv, npv


def prevalence_metrics(
    y: Any,
    probs: Any,
    threshold: float,
    groups: Any,
    prevalence: float,
    n_iter: int,
    level: float,
    seed: int | np.random.Generator,
    prefix: str = "test",
) -> dict[str, float]:
    """PPV/NPV at ``prevalence`` with patient-level bootstrap percentile intervals."""
    y_arr = np.asarray(y).astype(np.int64).ravel()
    called = (np.asarray(probs, dtype=np.float64).ravel() >= threshold).astype(np.float64)
    pos, neg = (y_arr == 1).astype(np.float64), (y_arr == 0).astype(np.float64)

    def sens_spec(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with np.errstate(divide="ignore", invalid="ignore"):
            return (w @ (called * pos)) / (w @ pos), (w @ ((1 - called) * neg)) / (w @ neg)

    sens, spec = sens_spec(np.ones((1, y_arr.size)))
    ppv, npv = ppv_npv_at(sens[0], spec[0], prevalence)
    boot = [
        np.column_stack(ppv_npv_at(*sens_spec(w), prevalence))
        for w in stats.bootstrap_weight_chunks(stats.group_codes(groups, y_arr.size), n_iter, seed)
    ]
    draws = np.vstack(boot) if boot else np.zeros((0, 2))
    alpha = (1 - level) / 2
    out = {"deployment_prevalence": float(prevalence)}
    for j, (name, value) in enumerate((("ppv", ppv), ("npv", npv))):
        col = draws[:, j][np.isfinite(draws[:, j])]
        low, high = np.quantile(col, [alpha, 1 - alpha]) if col.size else (math.nan, math.nan)
        out |= {
            f"{prefix}_{name}_at_prevalence": float(value),
            f"{prefix}_{name}_at_prevalence_ci_low": float(low),
            f"{prefix}_{name}_at_prevalence_ci_high": float(high),
        }
    return out


def add_metrics(
    task: Task,
    metrics: dict[str, dict[str, Any]],
    preds: dict[str, dict[str, np.ndarray]],
    uncalibrated: dict[str, np.ndarray] | None,
    y: dict[str, np.ndarray],
    groups: np.ndarray,
    cfg: EvaluateSection,
    seed: int,
) -> None:
    """Add ECE / NLL (both models), before-calibration values (the CNN, when calibrated) and
    PPV/NPV at ``evaluate.deployment_prevalence`` (binary) to ``metrics`` in place."""
    from pipeline.training.calibration import nll

    if not task.class_probabilities:
        return
    bins = cfg.calibration_bins
    for name, m in metrics.items():
        for split in ("val", "test"):
            p = preds[split][name]
            m[f"{split}_ece"] = ece(y[split], p, bins)
            m[f"{split}_nll"] = nll(y[split], p)
        if np.asarray(preds["test"][name]).ndim == 2:
            m["test_brier"] = stats.brier_score(y["test"], preds["test"][name])
        if np.asarray(preds["test"][name]).ndim == 1 and "threshold" in m:
            m |= prevalence_metrics(
                y["test"],
                preds["test"][name],
                float(m["threshold"]),
                groups,
                cfg.deployment_prevalence,
                cfg.bootstrap_iterations,
                cfg.ci_level,
                np.random.default_rng(seed),
            )
    if uncalibrated is not None:
        m = metrics["cnn"]
        for split in ("val", "test"):
            p = uncalibrated[split]
            m[f"{split}_ece_uncalibrated"] = ece(y[split], p, bins)
            m[f"{split}_nll_uncalibrated"] = nll(y[split], p)
            m[f"{split}_brier_uncalibrated"] = stats.brier_score(y[split], p)
        m["val_brier"] = stats.brier_score(y["val"], preds["val"]["cnn"])


def plot_before_after(
    y: np.ndarray, calibrated: np.ndarray, uncalibrated: np.ndarray, bins: int, path: Path
) -> Path:
    """Reliability diagram of the CNN on test before and after calibration (binary)."""
    from pipeline.evaluation import report as rep

    fig = rep._figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
    for label, p in (("before", uncalibrated), ("after", calibrated)):
        mean_pred, frac_pos = stats.calibration(y, p, bins)
        ax.plot(
            mean_pred, frac_pos, marker="o", lw=2, label=f"CNN {label} (ECE {ece(y, p, bins):.3f})"
        )
    ax.set(xlabel="Mean predicted probability", ylabel="Fraction positive")
    ax.set_title("Calibration of the CNN, test split")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="upper left", fontsize=8)
    return rep._save(fig, path)


def markdown(
    metrics: dict[str, dict[str, Any]],
    meta: dict[str, Any],
    cfg: EvaluateSection,
    figure: Path | None,
) -> str:
    """The report's section on ensemble, TTA, calibration and deployment prevalence."""
    from pipeline.escape import md_table
    from pipeline.evaluation.report import fmt

    cnn = metrics["cnn"]
    ensemble = meta.get("ensemble") or {}
    calib = meta.get("calibration") or {}
    lines = ["", "## Finishing: ensemble, test-time augmentation, calibration", ""]
    lines.append(
        f"- Ensemble: {ensemble['size']} seeds, probabilities averaged "
        f"(validation {meta.get('monitor', '')} {fmt(ensemble.get('best_value'))})"
        if ensemble
        else "- Ensemble: none (`train.ensemble_size: 1`)"
    )
    lines.append(f"- Test-time augmentation: `evaluate.tta: {cfg.tta}`")
    method = calib.get("method", "none")
    extra = (
        f", T = {fmt(meta['output']['temperature'])}"
        if "temperature" in meta.get("output", {})
        else ""
    )
    lines.append(f"- Calibration: `train.calibration: {method}` (fitted on validation{extra})")
    if "test_ece" in cnn:
        rows = []
        for split in ("val", "test"):
            if f"{split}_ece_uncalibrated" in cnn:
                rows.append(
                    [f"{split}, before calibration", fmt(cnn[f"{split}_ece_uncalibrated"]),
                     fmt(cnn[f"{split}_brier_uncalibrated"]),
                     fmt(cnn[f"{split}_nll_uncalibrated"])]
                )  # fmt: skip
            brier_key = "test_brier" if split == "test" else "val_brier"
            rows.append(
                [f"{split}{', after calibration' if method != 'none' else ''}",
                 fmt(cnn[f"{split}_ece"]), fmt(cnn.get(brier_key)), fmt(cnn[f"{split}_nll"])]
            )  # fmt: skip
        lines += ["", *md_table(["CNN", "ECE", "Brier", "NLL"], rows), ""]
        lines.append(
            f"ECE: expected calibration error over {cfg.calibration_bins} equal-width bins."
        )
    if figure is not None:
        lines.append(f"Reliability before/after: `{figure.as_posix()}`.")
    if "test_ppv_at_prevalence" in cnn:
        pi = cnn["deployment_prevalence"]
        lines += ["", f"### At deployment prevalence {pi:g} (`evaluate.deployment_prevalence`)", ""]
        prevalence_rows = [
            [name]
            + [
                f"{fmt(m[f'test_{k}_at_prevalence'])} ({fmt(m[f'test_{k}_at_prevalence_ci_low'])}"
                f"–{fmt(m[f'test_{k}_at_prevalence_ci_high'])})"
                for k in ("ppv", "npv")
            ]
            for name, m in metrics.items()
        ]
        lines += md_table(["model", "PPV", "NPV"], prevalence_rows)
        lines += [
            "",
            "From test sensitivity and specificity at the validation threshold by Bayes' rule; "
            "the test split's own PPV/NPV hold only at its prevalence.",
        ]
    return "\n".join(lines) + "\n"


def card_lines(metrics: dict[str, Any], meta: dict[str, Any], params: Any) -> list[str]:
    """The model card's lines on the finish (ensemble, calibration, TTA, prevalence)."""
    from pipeline.evaluation.report import fmt

    lines: list[str] = []
    ensemble = meta.get("ensemble") or {}
    if ensemble:
        lines.append(f"- Ensemble of {ensemble['size']} seeds (probabilities averaged).")
    method = (meta.get("calibration") or {}).get("method", "none")
    if "test_ece" in metrics:
        before = (
            f" (before calibration {fmt(metrics['test_ece_uncalibrated'])})"
            if "test_ece_uncalibrated" in metrics
            else ""
        )
        lines.append(
            f"- Calibration `{method}` fitted on validation; test ECE "
            f"{fmt(metrics['test_ece'])}{before}."
        )
    tta = (meta.get("inference") or {}).get("tta", params.evaluate.tta)  # as train resolved it
    if tta != "none":
        lines.append(f"- Test-time augmentation in evaluation and serving: `{tta}`.")
    if "test_ppv_at_prevalence" in metrics:
        lines.append(
            f"- At a deployment prevalence of {float(metrics['deployment_prevalence']):g}: "
            f"PPV {fmt(metrics['test_ppv_at_prevalence'])} "
            f"({fmt(metrics['test_ppv_at_prevalence_ci_low'])}–"
            f"{fmt(metrics['test_ppv_at_prevalence_ci_high'])}), NPV "
            f"{fmt(metrics['test_npv_at_prevalence'])} "
            f"({fmt(metrics['test_npv_at_prevalence_ci_low'])}–"
            f"{fmt(metrics['test_npv_at_prevalence_ci_high'])})."
        )
    return [*lines, ""] if lines else []
