"""``task.kind: multilabel``: several 0/1 findings per image, as chest X-ray datasets ship them.

``task.targets: [finding_a, finding_b, ...]`` names K ≥ 2 labels-file columns (each declared in
``validate.target_ranges`` as ``[0, 1]`` so ingest keeps it); an image is used where every
finding has a value. ``task.target`` only names the model (``radops-multilabel-<target>``).

* Training: K logits, one binary cross-entropy per finding (``pos_weight = n_neg/n_pos`` per
  finding when ``train.class_weighting: balanced``; ``train.loss: focal`` its focal variant);
  ``val_auc_macro`` (mean of the findings' AUROCs) is monitored and maximised.
* Predictions (``networks.predict``): N×K probabilities, one sigmoid per finding.
* Evaluation: per finding the AUC with its patient-level bootstrap CI, the average precision,
  and the threshold chosen on validation (``evaluate.threshold_method``) with the test
  sensitivity and specificity at it; macro AUC (mean over findings) and micro AUC (all
  image-finding pairs pooled), both with CIs from the same resamples; mean average precision.
* Baseline: one-vs-rest (one scaler → selector → calibrated SVM per finding).
* Promotion: a paired patient-level bootstrap of macro AUC.
* ``radops register`` records each finding's validation threshold (``threshold_<finding>``) in
  the model's ``serving.json``; ``radops predict`` writes ``probability_<finding>`` and
  ``prediction_<finding>`` (the call at that threshold; 0.5 for a model never registered).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from pipeline import catalog
from pipeline.errors import ConfigError, InputError
from pipeline.metrics import stats
from pipeline.tasks.base import Mode, PairedTest, SplitTargets, TargetKind, Task

if TYPE_CHECKING:
    import torch
    from torchmetrics import Metric

    from pipeline.config import EvaluateSection, RegisterSection, TrainSection


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan
    alpha = (1 - level) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return float(low), float(high)


def finding_aucs(y: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """The AUC of each finding (NaN where a finding has one value only)."""
    return np.array([stats.roc_auc(y[:, k], probs[:, k]) for k in range(y.shape[1])])


def micro_auc(y: np.ndarray, probs: np.ndarray) -> float:
    """The AUC of all image-finding pairs pooled."""
    return stats.roc_auc(y.ravel(), probs.ravel())


def bootstrap(
    y: np.ndarray, models: list[np.ndarray], groups: Any, n_iter: int, seed: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Per-finding AUCs ``(B, models, K)`` and micro AUCs ``(B, models)`` over the same
    patient-level resamples for every model (``stats.bootstrap_weight_chunks``)."""
    y = np.asarray(y, dtype=np.int64)
    k = y.shape[1]
    codes = stats.group_codes(groups, len(y))
    per, micro = [], []
    for w in stats.bootstrap_weight_chunks(codes, n_iter, seed):
        per.append(
            np.stack(
                [
                    np.column_stack([stats.weighted_aucs(y[:, c], p[:, c], w) for c in range(k)])
                    for p in models
                ],
                axis=1,
            )
        )
        pooled = np.repeat(w, k, axis=1)  # image i's K pairs share its multiplicity
        micro.append(
            np.column_stack([stats.weighted_aucs(y.ravel(), p.ravel(), pooled) for p in models])
        )
    if not per:
        return np.zeros((0, len(models), k)), np.zeros((0, len(models)))
    return np.concatenate(per), np.concatenate(micro)


@dataclass(frozen=True)
class MultilabelTask(Task):
    kind: ClassVar[str] = "multilabel"
    target_kind: ClassVar[TargetKind] = "binary"
    losses: ClassVar[tuple[str, ...]] = ("cross_entropy", "focal")
    default_loss: ClassVar[str] = "cross_entropy"
    headline_metrics: ClassVar[tuple[str, ...]] = ("test_auc_macro",)
    supports_mixup: ClassVar[bool] = False
    supports_ensemble: ClassVar[bool] = False
    option_keys: ClassVar[tuple[str, ...]] = ("targets",)

    targets: tuple[str, ...] = ()

    # ------------------------------------------------------------------ options
    def configure(self, task_cfg: Any) -> MultilabelTask:
        raw = (getattr(task_cfg, "model_extra", None) or {}).get("targets")
        if not isinstance(raw, list | tuple) or not all(isinstance(t, str) and t for t in raw):
            raise ConfigError(
                "task.kind multilabel needs task.targets: a list of the labels-file columns "
                "of its findings, e.g. [finding_nodule, finding_mass]"
            )
        if len(raw) < 2 or len(set(raw)) != len(raw):
            raise ConfigError(f"task.targets needs at least two distinct findings (got {raw})")
        return replace(self, targets=tuple(raw))

    def with_state(self, state: dict[str, Any]) -> MultilabelTask:
        return replace(self, state=dict(state), targets=tuple(state.get("targets", self.targets)))

    @property
    def findings(self) -> tuple[str, ...]:
        found = tuple(self.state.get("targets", ())) or self.targets
        if not found:
            raise ConfigError("task.kind multilabel needs task.targets")
        return found

    def describe(self) -> str:
        return f"multilabel classification of {len(self.findings)} findings ({', '.join(self.findings)})"

    @property
    def svm_mode(self) -> Literal["binary", "multiclass", "regression", "multilabel"]:
        return "multilabel"

    # ------------------------------------------------------------------ targets
    def read_targets(self, data_dir: Path | str, split: str) -> SplitTargets:
        """The K findings of ``split``: an image is kept where every finding has a value."""
        import pandas as pd

        path = catalog.split_file(data_dir, split, catalog.INDEX_SUFFIX)
        if not path.exists():
            raise InputError(f"missing {path}: run `radops preprocess` first")
        index = pd.read_parquet(path)
        absent = [t for t in self.findings if t not in index.columns]
        if absent:
            raise ConfigError(
                f"task.targets {absent} are not columns of the preprocessed data; are they in "
                "the labels file and in validate.target_ranges, and was preprocess rerun?"
            )
        raw = np.column_stack(
            [pd.to_numeric(index[t], errors="coerce").to_numpy(np.float64) for t in self.findings]
        ).reshape(len(index), len(self.findings))
        keep = np.isfinite(raw).all(axis=1)
        rows = np.flatnonzero(keep)
        return SplitTargets(
            split=split,
            rows=rows,
            values=self.clean(raw[keep], f"task.targets in {path}"),
            n_missing=int(len(raw) - len(rows)),
            n_total=len(raw),
        )

    def clean(self, values: np.ndarray, where: str) -> np.ndarray:
        if not np.isin(values, (0.0, 1.0)).all():
            raise InputError(f"{where}: a multilabel finding must be 0 or 1")
        return values.astype(np.float32)

    def fit(self, train: SplitTargets) -> MultilabelTask:
        y = np.asarray(train.values).reshape(len(train.values), -1)
        positives = y.sum(axis=0)
        single = [t for t, p in zip(self.findings, positives, strict=True) if p in (0, len(y))]
        if len(y) == 0 or single:
            raise InputError(
                f"the training split must hold each finding present and absent; not so for "
                f"{single or list(self.findings)}; cannot train"
            )
        state = {
            "targets": list(self.findings),
            "positives": [int(p) for p in positives],
            "n": len(y),
        }
        return replace(self, state=state, targets=self.findings)

    def check(self, targets: SplitTargets) -> None:
        width = np.asarray(targets.values).reshape(len(targets.values), -1).shape[1]
        if len(targets.values) and width != len(self.findings):
            raise InputError(f"the {targets.split} split has {width} findings, not {self.findings}")

    # ------------------------------------------------------------------ training
    @property
    def n_outputs(self) -> int:
        return len(self.findings)

    @property
    def monitor(self) -> str:
        return "val_auc_macro"

    @property
    def mode(self) -> Mode:
        return "max"

    def metric_directions(self) -> dict[str, Mode]:
        return {"auc_macro": "max"}

    def make_metrics(self) -> dict[str, Metric]:
        from torchmetrics.classification import MultilabelAUROC

        return {"auc_macro": MultilabelAUROC(num_labels=self.n_outputs, average="macro")}

    def pos_weights(self, cfg: TrainSection) -> list[float]:
        """Per finding ``n_neg / n_pos`` when balanced, else 1."""
        pos = np.asarray(self.state["positives"], dtype=np.float64)
        if cfg.class_weighting != "balanced":
            return [1.0] * len(pos)
        return [float(w) for w in (float(self.state["n"]) - pos) / np.maximum(pos, 1.0)]

    def make_loss(self, cfg: TrainSection) -> torch.nn.Module:
        import torch

        from pipeline.models.losses import BinaryLoss

        loss = BinaryLoss(1.0, self.loss_name == "focal")
        loss.pos_weight = torch.tensor(self.pos_weights(cfg))  # one per finding (broadcast)
        return loss

    def metric_inputs(
        self, outputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        return torch.sigmoid(outputs.detach().float()), targets.long()

    # ------------------------------------------------------------------ serving
    def output_spec(self) -> dict[str, Any]:
        return {"transform": "sigmoid"}

    def meta(self) -> dict[str, Any]:
        return super().meta() | {"targets": list(self.findings)}

    @property
    def promotion_metric(self) -> str:
        return "test_auc_macro"

    def summary_extras(self) -> tuple[tuple[str, str, str], ...]:
        return (("test_auc_micro", "micro AUC", ".3f"), ("test_map", "mean AP", ".3f"))

    def evaluation_summary(
        self,
        y_true: np.ndarray,
        predictions: np.ndarray,
        groups: np.ndarray,
        cfg: EvaluateSection,
        *,
        prefix: str = "test",
        rng: np.random.Generator | None = None,
        validation: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> dict[str, float]:
        """Per finding: AUC (CI), average precision, the validation-chosen threshold and the
        test sensitivity/specificity at it; macro and micro AUC (CIs) and mean AP."""
        from sklearn.metrics import average_precision_score

        if validation is None:
            raise ValueError("multilabel evaluation chooses its thresholds on validation data")
        seed = np.random.default_rng(0) if rng is None else rng
        k = len(self.findings)
        y = np.asarray(y_true).reshape(-1, k).astype(np.int64)
        p = np.asarray(predictions, dtype=np.float64).reshape(-1, k)
        y_val = np.asarray(validation[0]).reshape(-1, k).astype(np.int64)
        p_val = np.asarray(validation[1], dtype=np.float64).reshape(-1, k)
        per_boot, micro_boot = bootstrap(y, [p], groups, cfg.bootstrap_iterations, seed)
        aucs, level = finding_aucs(y, p), cfg.ci_level
        macro = float(aucs.mean()) if np.isfinite(aucs).all() else math.nan
        out: dict[str, float] = {f"{prefix}_auc_macro": macro}
        low, high = _interval(per_boot[:, 0, :].mean(axis=1), level)
        out |= {f"{prefix}_auc_macro_ci_low": low, f"{prefix}_auc_macro_ci_high": high}
        out[f"{prefix}_auc_micro"] = micro_auc(y, p)
        low, high = _interval(micro_boot[:, 0], level)
        out |= {f"{prefix}_auc_micro_ci_low": low, f"{prefix}_auc_micro_ci_high": high}
        aps = []
        for c, name in enumerate(self.findings):
            low, high = _interval(per_boot[:, 0, c], level)
            ap = float(average_precision_score(y[:, c], p[:, c])) if y[:, c].sum() > 0 else math.nan
            aps.append(ap)
            if np.unique(y_val[:, c]).size < 2:
                raise InputError(f"the validation split has one value only of {name!r}")
            cut = stats.choose_threshold(
                y_val[:, c], p_val[:, c], cfg.threshold_method, cfg.target_sensitivity
            )
            at = stats.binary_metrics(y[:, c], p[:, c], cut)
            out |= {
                f"{prefix}_auc_{name}": float(aucs[c]),
                f"{prefix}_auc_{name}_ci_low": low,
                f"{prefix}_auc_{name}_ci_high": high,
                f"{prefix}_ap_{name}": ap,
                f"threshold_{name}": float(cut),
                f"{prefix}_sensitivity_{name}": float(at["sensitivity"]),
                f"{prefix}_specificity_{name}": float(at["specificity"]),
            }
        out[f"{prefix}_map"] = float(np.mean(aps))
        out |= {
            f"n_{prefix}": float(len(y)),
            f"n_{prefix}_patients": float(len(np.unique(groups))),
            "val_auc_macro": float(finding_aucs(y_val, p_val).mean()),
        }
        return out

    def paired_test(
        self,
        y_true: np.ndarray,
        new: np.ndarray,
        champion: np.ndarray,
        groups: np.ndarray,
        cfg: RegisterSection,
        rng: np.random.Generator | None = None,
        n_iter: int = 1000,
    ) -> PairedTest:
        """Macro AUC by a paired patient-level bootstrap: p = (1 + #{Δ* ≤ 0}) / (1 + B)."""
        seed = np.random.default_rng(0) if rng is None else rng
        k = len(self.findings)
        y = np.asarray(y_true).reshape(-1, k).astype(np.int64)
        a_p = np.asarray(new, dtype=np.float64).reshape(-1, k)
        b_p = np.asarray(champion, dtype=np.float64).reshape(-1, k)
        a, b = float(finding_aucs(y, a_p).mean()), float(finding_aucs(y, b_p).mean())
        per_boot, _ = bootstrap(y, [a_p, b_p], groups, n_iter, seed)
        diffs = per_boot[:, 0, :].mean(axis=1) - per_boot[:, 1, :].mean(axis=1)
        diffs = diffs[np.isfinite(diffs)]
        p = float((1 + np.sum(diffs <= 0)) / (1 + diffs.size)) if diffs.size else math.nan
        better = bool(a > b and p < cfg.alpha)
        return PairedTest("auc_macro", a, b, p, better, "paired_bootstrap")

    def operating_threshold_keys(self) -> list[str]:
        """``threshold_<finding>`` of each finding: register records them, predict calls at them."""
        return [f"threshold_{name}" for name in self.findings]

    def with_thresholds(self, thresholds: dict[str, float]) -> MultilabelTask:
        chosen = {
            name: float(thresholds[f"threshold_{name}"])
            for name in self.findings
            if f"threshold_{name}" in thresholds
        }
        return replace(self, state=self.state | {"thresholds": chosen}) if chosen else self

    def thresholds(self) -> list[float]:
        """The per-finding calls' thresholds the model carries (``state["thresholds"]``),
        else 0.5 each."""
        saved = self.state.get("thresholds") or {}
        return [float(saved.get(name, 0.5)) for name in self.findings]

    def prediction_columns(
        self, predictions: np.ndarray, threshold: float | None = None
    ) -> dict[str, np.ndarray]:
        """``probability_<finding>`` and ``prediction_<finding>`` (1 at or above the
        finding's threshold) for each finding."""
        k = len(self.findings)
        p = np.asarray(predictions, dtype=np.float64).reshape(-1, k)
        columns: dict[str, np.ndarray] = {}
        for c, (name, cut) in enumerate(zip(self.findings, self.thresholds(), strict=True)):
            columns[f"probability_{name}"] = np.round(p[:, c], 6)
            columns[f"prediction_{name}"] = (p[:, c] >= cut).astype(int)
        return columns

    # ------------------------------------------------------------------ stage hooks
    def unscored_value(self, column: str) -> Any:
        return -1 if column.startswith("prediction_") else np.nan

    def count_positive(self, columns: dict[str, Any]) -> int:
        """Images with at least one positive call."""
        calls = [np.asarray(columns[f"prediction_{n}"]) for n in self.findings]
        return int((np.column_stack(calls) > 0).any(axis=1).sum()) if calls else 0

    def evaluation_columns(self, name: str, predictions: np.ndarray) -> dict[str, np.ndarray]:
        p = np.asarray(predictions).reshape(-1, len(self.findings))
        return {f"prob_{name}_{t}": p[:, c] for c, t in enumerate(self.findings)}

    def target_columns(self, y: np.ndarray) -> dict[str, np.ndarray]:
        y = np.asarray(y).reshape(-1, len(self.findings))
        return {t: y[:, c] for c, t in enumerate(self.findings)}

    def report_curves(
        self, y: np.ndarray, predictions: np.ndarray
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The micro-average ROC (all image-finding pairs pooled, as ``test_auc_micro``), then
        one curve per finding that has positives and negatives in the test split."""
        y, probs = np.asarray(y), np.asarray(predictions)
        curves = {"micro-average": stats.roc_points(y.ravel(), probs.ravel())}
        curves.update(
            (t, stats.roc_points(y[:, k], probs[:, k]))
            for k, t in enumerate(self.findings)
            if len(np.unique(y[:, k])) == 2
        )
        return curves

    def report_rows(self, metrics: Any) -> list[tuple[str, str]]:
        rows = [
            ("test_auc_macro", "Macro ROC AUC"),
            ("test_auc_micro", "Micro ROC AUC"),
            ("test_map", "Mean average precision"),
        ]
        for t in self.findings:
            rows += [
                (f"test_auc_{t}", f"ROC AUC, {t}"),
                (f"test_ap_{t}", f"Average precision, {t}"),
                (f"threshold_{t}", f"Threshold (validation), {t}"),
                (f"test_sensitivity_{t}", f"Sensitivity, {t}"),
                (f"test_specificity_{t}", f"Specificity, {t}"),
            ]
        return rows
