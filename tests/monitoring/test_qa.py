"""The data-QA stage on a cohort with planted bad scans: detection rates, exclusions, report."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from pipeline import catalog
from tests.monitoring.conftest import PLANTED, QACohort


def _flags(cohort: QACohort) -> pd.DataFrame:
    flags = pd.read_parquet(cohort.root / "data/qa" / catalog.QA_FLAGS_FILE)
    return flags.merge(cohort.truth[["source_id", "kind"]], on="source_id", how="left")


def test_planted_bad_scans_are_flagged_and_normal_images_rarely(qa_cohort: QACohort) -> None:
    flags = _flags(qa_cohort)
    planted = flags["kind"].notna()
    assert planted.sum() == PLANTED  # every planted file was ingested and found again
    detected = flags.loc[planted, "flag"].mean()
    false_alarms = flags.loc[~planted, "flag"].mean()
    assert detected >= 0.9, flags.loc[planted, ["kind", "split", "score", "flag"]]
    assert false_alarms <= 0.05
    # every flag says why, in feature terms
    assert flags.loc[flags["flag"], "reason"].str.contains(" z=").all()
    assert (flags.loc[~flags["flag"], "reason"] == "").all()
    # the worst-scored images are planted ones
    top = flags.sort_values("score", ascending=False).head(5)
    assert top["kind"].notna().all()


def test_exclude_drops_flagged_training_images_only(qa_cohort: QACohort) -> None:
    from pipeline.config import TrainSection
    from pipeline.training.datasets import make_datamodule

    flags = _flags(qa_cohort)
    qa_dir = qa_cohort.root / "data/qa"
    doc = json.loads((qa_dir / catalog.QA_EXCLUSIONS_FILE).read_text())
    flagged_train = set(flags.loc[flags["flag"] & (flags["split"] == "train"), "image_id"])
    assert set(doc["image_ids"]) == flagged_train and flagged_train
    assert not flags.loc[flags["split"] != "train", "excluded"].any()
    assert flags.loc[flags["split"] != "train", "flag"].any()  # flagged there, yet kept
    assert qa_cohort.result.excluded == len(flagged_train)

    data_dir = qa_cohort.root / "data/preprocessed"
    n_train = len(np.load(data_dir / "train_y.npy"))
    n_val = len(np.load(data_dir / "val_y.npy"))
    cfg = TrainSection(batch_size=8)
    plain = make_datamodule(data_dir, cfg, seed=0)
    screened = make_datamodule(data_dir, cfg, seed=0, exclude_file=qa_dir / "exclusions.json")
    plain.setup(), screened.setup()
    assert plain.train_set is not None and screened.train_set is not None
    assert len(plain.train_set) == n_train
    assert len(screened.train_set) == n_train - len(flagged_train)
    assert screened.val_set is not None and len(screened.val_set) == n_val
    assert any(f"{len(flagged_train)} images excluded by data QA" in n for n in screened.notes)


def test_report_clusters_and_mlflow(qa_cohort: QACohort) -> None:
    from mlflow.tracking import MlflowClient

    qa_dir = qa_cohort.root / "data/qa"
    report = (qa_dir / catalog.QA_REPORT).read_text()
    assert f"{catalog.FIGURES_DIR}/{catalog.FLAGGED_PLOT}" in report
    assert (qa_dir / catalog.FIGURES_DIR / catalog.FLAGGED_PLOT).stat().st_size > 1000
    assert (qa_dir / catalog.FIGURES_DIR / catalog.PCA_MAP_PLOT).stat().st_size > 1000
    assert "training images excluded" in report
    meta = json.loads((qa_dir / catalog.QA_META_FILE).read_text())
    clusters = pd.read_csv(qa_dir / catalog.QA_CLUSTERS_FILE)
    assert len(clusters) == meta["k"] >= 2
    assert clusters["images"].sum() == len(_flags(qa_cohort))
    assert any(c.startswith("site=") for c in clusters.columns)
    explained = meta["explained_variance_ratio"]
    assert explained == sorted(explained, reverse=True) and 0 < sum(explained) <= 1
    # no input path in the outputs: images are named by their pseudonymous source_id
    assert "PA0000" not in report and "/dicom" not in report

    client = MlflowClient(qa_cohort.params.base.tracking_uri)
    exp = client.get_experiment_by_name(qa_cohort.params.base.experiment_name)
    runs = client.search_runs([exp.experiment_id], "tags.`radops.stage` = 'qa'")
    assert runs, "no qa run"
    logged = runs[0].data.metrics
    assert logged["qa_explained_variance_pc1"] == explained[0]
    assert logged["qa_excluded"] == qa_cohort.result.excluded
