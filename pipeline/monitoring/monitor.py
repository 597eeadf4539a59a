"""``radops monitor --input NEW_DIR --out OUT``: is a new batch like the training data?

Why: a model fails quietly when a new scanner, protocol or site arrives. So a new batch goes
through the same strict, de-identifying ingest (with quarantine; the pseudonym key is shared)
into ``OUT/ingested``, the same preprocessing (``stats.json``) and the QA stage's features,
and is compared with the training reference (the training split's QA features):

* per feature: two-sample Kolmogorov–Smirnov tests, Benjamini–Hochberg at ``monitor.fdr``;
  the effect size (Wasserstein distance in training standard deviations) ranks them;
* multivariate: MMD (RBF kernel, median bandwidth) on the QA's whitened principal components,
  with a permutation p-value (``monitor.permutations``);
* the share of the batch the QA isolation forest calls an outlier;
* the champion's predictions on the batch against its predictions on the training images
  (KS test; skipped, with the reason, when there is no model);
* metadata: manufacturers, modalities, image sizes and pixel spacings never seen in training.
  (ManufacturerModelName and kVp are not in the ingest manifest, so they are not compared.)

Verdict (``drift.json``): ``drift`` when at least ``monitor.min_drift_features`` features
shifted *and* the MMD is significant, or the outlier share reaches
``monitor.drift_outlier_share``; ``warn`` on any single signal (a shifted feature, the MMD,
outliers over ``monitor.warn_outlier_share``, a prediction shift, new metadata); else
``none``. An input with no usable image is ``none`` ("nothing new").
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import catalog
from pipeline.config import Params
from pipeline.errors import InputError
from pipeline.monitoring.drift_stats import bh_reject, metadata_changes, mmd_test, patient_means

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)
VERDICTS = ("none", "warn", "drift")
EXPERIMENT_SUFFIX = "-monitoring"


@dataclass(frozen=True)
class Paths:
    input_dir: Path
    out_dir: Path
    qa_dir: Path
    data_dir: Path  # preprocess output: stats.json and the training images
    ingest_dir: Path  # the reference manifest (metadata)
    model_uri: str | None = None  # None: the champion of the task's registered model

    @classmethod
    def from_params(cls, params: Params) -> Paths:
        cat = catalog.Catalog(params)
        incoming = params.monitor.incoming_dir
        return cls(
            input_dir=incoming if incoming is not None else Path("incoming"),
            out_dir=cat.monitor_dir,
            qa_dir=cat.qa_dir,
            data_dir=cat.preprocess_dir,
            ingest_dir=cat.ingest_dir,
        )


@dataclass
class MonitorResult:
    out_dir: Path
    verdict: str
    reasons: list[str]
    images: int
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [f"monitor: verdict {self.verdict} ({self.images} new images) -> {self.out_dir}"]
        lines += [f"  - {r}" for r in self.reasons]
        return "\n".join(lines)


def _batch_images(
    ingested: Path, stats: dict[str, Any]
) -> tuple[np.ndarray, pd.DataFrame, pd.DataFrame]:
    """The batch preprocessed like training; its manifest (one row per image) and quarantine."""
    import pandas as pd

    from pipeline.data.pixels import PixelStore
    from pipeline.data.preprocess import transform_image
    from pipeline.io import read_csv
    from pipeline.serving.predict import without_spacing

    manifest = pd.read_parquet(ingested / catalog.MANIFEST_FILE)
    quarantine = read_csv(ingested / catalog.QUARANTINE_FILE)
    manifest, quarantine = without_spacing(manifest, quarantine, stats)
    manifest = manifest.reset_index(drop=True)
    if not len(manifest):
        size, ch = int(stats["image_size"]), int(stats.get("channels", 1))
        return np.zeros((0, ch, size, size), np.float32), manifest, quarantine
    with PixelStore(ingested) as store:
        x = np.stack(
            [
                transform_image(
                    store.load(row),
                    stats,
                    spacing=(float(row.pixel_spacing_row), float(row.pixel_spacing_col)),  # type: ignore[arg-type]
                )
                for row in manifest.itertuples()
            ]
        ).astype(np.float32)
    return x, manifest, quarantine


def prediction_shift(params: Params, paths: Paths, ingested: Path, work: Path) -> dict[str, Any]:
    """KS test of the model's predictions on the batch against the training images; a dict
    with ``skipped`` (the reason) when there is no model to load."""
    from scipy.stats import ks_2samp

    from pipeline.models.networks import load_model, predict
    from pipeline.serving.predict import resolve_model
    from pipeline.tasks import get_task
    from pipeline.training.datasets import load_images

    uri = paths.model_uri
    if uri is None:
        name = get_task(params).registered_model_name(params.base.registered_model_name)
        uri = f"models:/{name}@champion"
    try:
        model_dir, _, label = resolve_model(params, uri, work / "model")
        network, meta = load_model(model_dir)
    except Exception as exc:  # no registry, no champion, no model: say so, do not fail
        return {"skipped": f"no model to compare ({uri}: {str(exc).splitlines()[0][:200]})"}
    stats = meta["preprocessing"]
    x_batch, _, _ = _batch_images(ingested, stats)  # preprocessed as the model was trained
    ref = load_images(paths.data_dir, "train")
    rng = np.random.default_rng(params.base.seed)
    take = np.sort(rng.choice(len(ref), min(len(ref), params.monitor.max_reference), False))
    ref_pred = predict(network, meta, np.asarray(ref[take], dtype=np.float32))
    new_pred = predict(network, meta, x_batch)

    def scalar(p: np.ndarray) -> np.ndarray:
        return p.max(axis=1) if p.ndim == 2 else p.ravel()

    a, b = scalar(ref_pred), scalar(new_pred)
    test = ks_2samp(a, b)
    return {
        "model": label,
        "ks_statistic": float(test.statistic),
        "p_value": float(test.pvalue),
        "reference_mean": float(a.mean()),
        "batch_mean": float(b.mean()) if len(b) else float("nan"),
        "reference": a.tolist(),
        "batch": b.tolist(),
    }


def decide(details: dict[str, Any], params: Params) -> tuple[str, list[str]]:
    """The verdict and its reasons from the computed signals (see the module docstring)."""
    cfg = params.monitor
    drift: list[str] = []
    warn: list[str] = []
    shifted = details["features"]["shifted"]
    mmd = details["mmd"]
    if len(shifted) >= cfg.min_drift_features and mmd["p_value"] < cfg.alpha:
        drift.append(
            f"{len(shifted)} features shifted (KS, BH q < {cfg.fdr}): "
            f"{', '.join(shifted[:8])}; MMD p = {mmd['p_value']:.3g}"
        )
    else:
        if shifted:
            warn.append(f"{len(shifted)} features shifted (KS, BH q < {cfg.fdr}): "
                        f"{', '.join(shifted[:8])}")  # fmt: skip
        if mmd["p_value"] < cfg.alpha:
            warn.append(f"multivariate shift: MMD p = {mmd['p_value']:.3g} < {cfg.alpha}")
    share = details["outliers"]["share"]
    if share >= cfg.drift_outlier_share:
        drift.append(f"{share:.0%} of the batch are QA outliers (≥ {cfg.drift_outlier_share:.0%})")
    elif share > cfg.warn_outlier_share:
        warn.append(f"{share:.0%} of the batch are QA outliers (> {cfg.warn_outlier_share:.0%})")
    pred = details["predictions"]
    if "p_value" in pred and pred["p_value"] < cfg.alpha:
        warn.append(
            f"the model's predictions shifted (KS p = {pred['p_value']:.3g}; mean "
            f"{pred['reference_mean']:.3f} in training, {pred['batch_mean']:.3f} in the batch)"
        )
    warn += [f"metadata: {c}" for c in details["metadata"]]
    if drift:
        return "drift", drift + warn
    if warn:
        return "warn", warn
    return "none", []


def _check_batch(folder: Path) -> None:
    """A missing folder or one without files is an error, never a "no drift" verdict: a typo
    in ``monitor.incoming_dir`` must not switch scheduled retraining off."""
    if not folder.is_dir():
        raise InputError(
            f"{folder}: the batch folder does not exist (monitor.incoming_dir or --input); "
            "no drift verdict"
        )
    if not any(p.is_file() for p in folder.rglob("*")):
        raise InputError(f"{folder}: the batch folder holds no files; no drift verdict")


def run(params: Params, paths: Paths) -> MonitorResult:
    """Ingest the batch, compare it with the training reference, write the drift report."""
    import tempfile

    import pandas as pd

    from pipeline.data import ingest
    from pipeline.io import atomic_path, check_outputs, read_json, write_json
    from pipeline.monitoring import drift_report
    from pipeline.monitoring.features import Scaler, image_features
    from pipeline.monitoring.qa import load_forest

    start = time.perf_counter()
    check_outputs([paths.out_dir], [paths.input_dir, paths.qa_dir, paths.data_dir])
    _check_batch(paths.input_dir)
    meta_path = paths.qa_dir / catalog.QA_META_FILE
    if not meta_path.is_file():
        raise InputError(f"no QA model at {meta_path}; run `radops qa` first")
    meta = read_json(meta_path)
    forest = load_forest(paths.qa_dir / catalog.QA_MODEL_FILE)
    atlas = np.load(paths.qa_dir / catalog.QA_ATLAS_FILE, allow_pickle=False)
    reference = pd.read_parquet(paths.qa_dir / catalog.QA_FEATURES_FILE)
    reference = reference[reference["split"] == "train"].reset_index(drop=True)
    stats = read_json(paths.data_dir / catalog.STATS_FILE)
    from pipeline.baselines.features import FeatureSpec

    spec = FeatureSpec.from_dict(meta["spec"])
    names: list[str] = meta["feature_names"]
    scaler = Scaler.from_dict(meta["scaler"])
    with atomic_path(paths.out_dir, stage="monitor") as staged:
        staged.mkdir(parents=True)
        (staged / catalog.FIGURES_DIR).mkdir()
        ingested = staged / catalog.MONITOR_INGEST_DIR
        ingest.run(
            params,
            ingest.Paths(
                input_dir=paths.input_dir, labels_csv=None, out_dir=ingested,
                key_path=params.base.secret_key_path,
            ),
        )  # fmt: skip
        x, manifest, quarantine = _batch_images(ingested, stats)
        n_images = len(manifest)
        if n_images == 0:
            raise InputError(
                f"{paths.input_dir}: no usable image in the batch ({len(quarantine)} "
                "file(s) quarantined); no drift verdict"
            )
        raw = manifest[["pixel_mean", "pixel_std", "pixel_min", "pixel_max"]]
        matrix, batch_names = image_features(x, spec, raw, meta["extra_features"], atlas)
        if batch_names != names:
            raise InputError("the QA model's features differ from this run's; rerun qa")
        ref_matrix = reference[names].to_numpy(dtype=np.float64)
        groups = (reference["patient_id"], manifest["patient_id"])
        details = _compare(params, ref_matrix, matrix, names, scaler, meta, forest, groups)
        details["quarantined"] = len(quarantine)
        ref_manifest = pd.read_parquet(paths.ingest_dir / catalog.MANIFEST_FILE)
        details["metadata"] = metadata_changes(ref_manifest, manifest)
        with tempfile.TemporaryDirectory(prefix="radops-monitor-") as tmp:
            details["predictions"] = prediction_shift(params, paths, ingested, Path(tmp))
        verdict, reasons = decide(details, params)
        drift_report.figures(
            details, ref_matrix, matrix, scaler, meta, staged / catalog.FIGURES_DIR
        )
        doc = {
            "verdict": verdict,
            "reasons": reasons,
            "images": n_images,
            "input": "new batch (de-identified copy in ingested/)",
            "thresholds": params.monitor.model_dump(mode="json"),
            **{k: v for k, v in details.items() if k != "features_table"},
        }
        if "predictions" in doc:
            doc["predictions"] = {
                k: v for k, v in doc["predictions"].items() if k not in ("reference", "batch")
            }
        result = MonitorResult(paths.out_dir, verdict, reasons, n_images, doc)
        with _monitoring_run(params, result) as run_id:
            doc["mlflow_run_id"] = run_id
            write_json(staged / catalog.DRIFT_JSON, doc)
            (staged / catalog.DRIFT_REPORT).write_text(
                drift_report.markdown(doc, details.get("features_table")), encoding="utf-8"
            )
            _log_artifacts(staged)
    result.seconds = time.perf_counter() - start
    return result


def _compare(
    params: Params,
    ref: np.ndarray,
    new: np.ndarray,
    names: list[str],
    scaler: Any,
    meta: dict[str, Any],
    forest: Any,
    groups: tuple[pd.Series, pd.Series],
) -> dict[str, Any]:
    import pandas as pd
    from scipy.stats import ks_2samp, wasserstein_distance

    from pipeline.monitoring.qa import outlier_space

    cfg = params.monitor
    outliers = forest.predict(outlier_space(scaler.transform(new), meta["pca"])) == -1
    n_images = len(new)
    if cfg.per_patient:  # images of a patient share site and anatomy: test patients
        ref = patient_means(ref, groups[0])
        new = patient_means(new, groups[1])
    zr, zn = scaler.transform(ref), scaler.transform(new)
    pvalues = np.array([ks_2samp(ref[:, j], new[:, j]).pvalue for j in range(ref.shape[1])])
    effect = np.array([wasserstein_distance(zr[:, j], zn[:, j]) for j in range(ref.shape[1])])
    q, rejected = bh_reject(pvalues, cfg.fdr)
    table = pd.DataFrame({"feature": names, "ks_p": pvalues, "bh_q": q, "shift_sd": effect,
                          "shifted": rejected}).sort_values(["shifted", "shift_sd"],
                                                            ascending=False)  # fmt: skip
    shifted = table.loc[table["shifted"], "feature"].tolist()
    space_r, space_n = outlier_space(zr, meta["pca"]), outlier_space(zn, meta["pca"])
    rng = np.random.default_rng(params.base.seed)
    take = rng.choice(len(space_r), min(len(space_r), cfg.max_reference), replace=False)
    white = len(meta["pca"]["variance"])
    mmd2, mmd_p = mmd_test(space_r[take, :white], space_n[:, :white], cfg.permutations,
                           params.base.seed)  # fmt: skip
    return {
        "features": {"tested": len(names), "shifted": shifted,
                     "top": table.head(10)[["feature", "bh_q", "shift_sd"]].to_dict("records")},
        "mmd": {"mmd2": mmd2, "p_value": mmd_p, "reference_n": len(take),
                "batch_n": len(zn), "unit": "patient" if cfg.per_patient else "image"},
        "images": n_images,
        "outliers": {"share": float(outliers.mean()), "count": int(outliers.sum()),
                     "training_share": float(meta["contamination"])},
        "features_table": table,
    }  # fmt: skip


@contextlib.contextmanager
def _monitoring_run(params: Params, result: MonitorResult) -> Iterator[str]:
    """One run in the ``<experiment>-monitoring`` experiment: verdict tag and metrics."""
    import mlflow

    from pipeline.tracking import base_tags, configure

    configure(params)
    mlflow.set_experiment(params.base.experiment_name + EXPERIMENT_SUFFIX)
    with mlflow.start_run(run_name="monitor", tags=base_tags("monitor")) as run:
        mlflow.set_tags({"radops.verdict": result.verdict,
                         "radops.reasons": "; ".join(result.reasons)[:4000]})  # fmt: skip
        d = result.details
        metrics = {"images": float(result.images),
                   "verdict_level": float(VERDICTS.index(result.verdict))}  # fmt: skip
        if "mmd" in d:
            metrics |= {"mmd2": d["mmd"]["mmd2"], "mmd_p": d["mmd"]["p_value"],
                        "shifted_features": float(len(d["features"]["shifted"])),
                        "outlier_share": d["outliers"]["share"]}  # fmt: skip
        if "p_value" in d.get("predictions", {}):
            metrics["prediction_ks_p"] = d["predictions"]["p_value"]
        mlflow.log_metrics(metrics)
        yield run.info.run_id


def _log_artifacts(folder: Path) -> None:
    """The report goes up; the ingested batch (pixels) stays local."""
    import mlflow

    for name in (catalog.DRIFT_REPORT, catalog.DRIFT_JSON):
        mlflow.log_artifact(str(folder / name), artifact_path="monitor")
    figures = folder / catalog.FIGURES_DIR
    if any(figures.iterdir()):
        mlflow.log_artifacts(str(figures), artifact_path="monitor/figures")
