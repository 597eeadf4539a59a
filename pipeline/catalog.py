"""The catalog: where every artifact lives, in one place.

Stage folders come from ``params.yaml`` (each stage's ``out_dir``); the names of the files
inside them are defined here and nowhere else. Stages, flows, the run summary and the tests
ask the catalog (``Catalog(params).manifest``, ``catalog.RUN_FILE``) instead of spelling a
file name, so renaming an artifact is a one-line change.

:data:`STAGE_IO` says which fields of each stage's ``Paths`` are inputs and which are outputs;
the CLI uses it to refuse an output that overlaps an input (:func:`pipeline.io.check_outputs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.config import Params

# ---------------------------------------------------------------- configuration and state
PARAMS_FILE = Path("params.yaml")
DVC_FILE = Path("dvc.yaml")
DVC_LOCK = Path("dvc.lock")
LOCAL_DIR = Path(".radops")  # local secrets and tool state: never in git, DVC or MLflow
OPTUNA_DB = LOCAL_DIR / "optuna.db"  # default study storage (not a folder named like a package)
LINKAGE_FILE = "linkage.csv"  # source_id -> input path; beside the pseudonym key, mode 0600
OPTUNA_STORAGE_FILE = LOCAL_DIR / "optuna-storage"  # a storage URL with a password (0600)
TRACKING_URI_FILE = LOCAL_DIR / "tracking-uri"  # a tracking URL with a password (0600)
PREFECT_AUTH_FILE = LOCAL_DIR / "prefect-api-auth"  # the Prefect server's API auth string
# `make ui`: MLflow's basic-auth app (pipeline/tracking_auth.py); secrets 0600, never printed
MLFLOW_AUTH_PASSWORD_FILE = LOCAL_DIR / "mlflow-admin-password"  # user "admin"
MLFLOW_AUTH_SECRET_FILE = LOCAL_DIR / "mlflow-flask-secret"  # the server's CSRF/session key
MLFLOW_AUTH_CONFIG_FILE = LOCAL_DIR / "mlflow-auth.ini"  # no secret inside
MLFLOW_AUTH_DB = LOCAL_DIR / "mlflow-auth.db"  # users and permissions (password hashes)
# `make stack`: PostgreSQL, MLflow server, Prefect server + workers; all state here (0700).
STACK_DIR = LOCAL_DIR / "stack"
STACK_ENV_FILE = STACK_DIR / "env"  # KEY=VALUE for clients while the stack is up (0600)
STACK_STATE_FILE = "state.json"  # ports and process ids
STACK_PASSWORD_FILE = "pg-password"  # the PostgreSQL role's generated password (0600)
STACK_PG_DIR = "postgres"  # PGDATA and its log
STACK_ARTIFACTS_DIR = "artifacts"  # MLflow's proxied artifact store
STACK_PREFECT_HOME = "prefect"  # the stack's Prefect server database and settings
STACK_LOGS_DIR = "logs"
MLRUNS_DIR = Path("mlruns")
MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS = "artifacts"

# ---------------------------------------------------------------- synth
SYNTH_DICOM_DIR = "dicom"
LABELS_FILE = "labels.csv"
SYNTH_SERIES_DIR = "series"  # the series cohort: <synth.out_dir>/series/{dicom,labels.csv}

# ---------------------------------------------------------------- series
SERIES_INGEST_DIR = "ingested"  # the series export, ingested like data.dicom_dir
SERIES_DATA_DIR = "preprocessed"  # {split}_x.npy (N×D×C×S×S volumes), index, stats
SERIES_TABLE_FILE = "series.parquet"  # one row per assembled series (order, spacing, split)
SERIES_SLICES_FILE = "slices.parquet"  # image_id of every slice, in order
SERIES_QUARANTINE_FILE = "series_quarantine.csv"  # series_uid,reason

# ---------------------------------------------------------------- ingest
MANIFEST_FILE = "manifest.parquet"
QUARANTINE_FILE = "quarantine.csv"
PIXELS_DIR = "pixels"
SUMMARY_FILE = "summary.json"  # ingest and split

# ---------------------------------------------------------------- validate
VALIDATION_REPORT = "report.json"
DATA_DOCS_DIR = "data_docs"
DATA_DOCS_INDEX = "index.html"

# ---------------------------------------------------------------- split
SPLITS_FILE = "splits.parquet"

# ---------------------------------------------------------------- plan
PLAN_FILE = "plan.json"  # the fingerprint and the resolved auto values (also in preprocess)

# ---------------------------------------------------------------- preprocess
STATS_FILE = "stats.json"
IMAGES_SUFFIX = "x.npy"
LABELS_SUFFIX = "y.npy"
INDEX_SUFFIX = "index.parquet"

# ---------------------------------------------------------------- tune / train
BEST_PARAMS_FILE = "best_params.json"
RUN_FILE = "run.json"  # train, baseline, evaluate: the MLflow run that made the folder
HISTORY_FILE = "history.json"
TRAIN_METRICS_FILE = "train_metrics.json"
FINGERPRINT_FILE = "fingerprint.json"
LAST_CKPT = "last.ckpt"
WEIGHTS_FILE = "model.safetensors"
MODEL_META_FILE = "model.json"
INIT_DIR = Path("models/init")  # DVC stage ``init``: train.init's source, pinned
INIT_SOURCE_FILE = "init_source.json"

# ---------------------------------------------------------------- baseline
BASELINE_MODEL_FILE = "model.skops"
BASELINE_META_FILE = "baseline.json"
SELECTED_FEATURES_FILE = "selected_features.json"

# ---------------------------------------------------------------- evaluate
EVALUATION_REPORT = "evaluation.md"
SUBGROUPS_FILE = "subgroups.csv"
PLOTS_DIR = "plots"
FIGURES_DIR = "figures"
ROC_PLOT = "roc.png"  # classification (K > 2: macro one-vs-rest)
CALIBRATION_PLOT = "calibration.png"  # binary
CALIBRATION_BEFORE_AFTER_PLOT = "calibration_before_after.png"  # binary, train.calibration set
SCATTER_PLOT = "scatter.png"  # regression: predicted against true
# Stems of the DVC plot files in PLOTS_DIR (``plot_data``): ``<stem>.csv`` for all models,
# ``<stem>_<model>.csv`` for one (DVC colours lines by file).
ROC_DATA = "roc"
CALIBRATION_DATA = "calibration"
CONFUSION_DATA = "confusion"
SCATTER_DATA = "scatter"
BLAND_ALTMAN_DATA = "bland_altman"
RECON_ERROR_DATA = "recon_error"  # autoencoder: per-image reconstruction MSE

# ---------------------------------------------------------------- qa (pipeline/monitoring)
QA_FEATURES_FILE = "features.parquet"  # every image's raw features, with split/site/label
QA_FLAGS_FILE = "qa_flags.parquet"
QA_CLUSTERS_FILE = "clusters.csv"
QA_EXCLUSIONS_FILE = "exclusions.json"  # training images the training data loading drops
QA_MODEL_FILE = "qa_model.skops"  # the fitted isolation forest (skops, never pickle)
QA_META_FILE = "qa_model.json"  # feature spec, names, scaler, PCA, thresholds
QA_ATLAS_FILE = "atlas.npy"  # the mean training image (orientation features)
QA_REPORT = "qa.md"
PCA_MAP_PLOT = "pca_map.png"
FLAGGED_PLOT = "flagged.png"
PLANTED_FILE = "planted.csv"  # synth's truth of planted bad scans: for tests, never ingested

# ---------------------------------------------------------------- monitor
MONITOR_INGEST_DIR = "ingested"  # the new batch, de-identified, inside the monitor output
DRIFT_JSON = "drift.json"
DRIFT_REPORT = "drift.md"
DRIFT_FEATURES_PLOT = "feature_shift.png"
DRIFT_MAP_PLOT = "reference_vs_batch.png"
DRIFT_PREDICTIONS_PLOT = "predictions.png"

# ---------------------------------------------------------------- register / predict
MODEL_CARD = "model_card.md"
REGISTRATION_FILE = "registration.json"
SERVING_FILE = "serving.json"  # in a registered model's artifact: threshold, digests
PREDICTIONS_FILE = Path("predictions.csv")

# ---------------------------------------------------------------- segmentation (task.kind)
SEGMENTS_FILE = "segments.parquet"  # ingest: one row per (image, segment) of accepted SEGs
MASKS_DIR = "masks"  # ingest: the masks' store, beside PIXELS_DIR
MASK_SHARD = "masks/masks.u8"  # raw uint8 0/1 planes, located by segments.parquet
MASKS_SUFFIX = "masks.npy"  # preprocess: N x S x size x size uint8 per split
MASK_INFO_SUFFIX = "masks.json"  # preprocess: segment names, which are known, spacing (mm)
SEG_BASELINE_FILE = "segmenter.json"  # the classical segmenter's fitted parameters
DICE_DATA = "dice"  # DVC plot stem: per-image Dice
AREA_DATA = "bland_altman_area"  # DVC plot stem: lesion area Bland-Altman
SEG_OUTPUT_DIR = "seg"  # radops predict: <predictions stem>_seg/, one DICOM SEG per image


def seg_output_dir(out_csv: Path | str) -> Path:
    """Where ``radops predict`` writes a segmentation model's SEG objects."""
    out = Path(out_csv)
    return out.parent / f"{out.stem}_{SEG_OUTPUT_DIR}"


def overlay_plot(folder: Path | str, model: str) -> Path:
    return Path(folder) / f"overlays_{model}.png"


def dice_plot(folder: Path | str) -> Path:
    return Path(folder) / "dice_distribution.png"


def area_plot(folder: Path | str, model: str) -> Path:
    return Path(folder) / f"{AREA_DATA}_{model}.png"


def split_file(folder: Path | str, split: str, suffix: str) -> Path:
    """``<folder>/<split>_<suffix>``, e.g. ``split_file(d, "train", IMAGES_SUFFIX)``."""
    return Path(folder) / f"{split}_{suffix}"


def metrics_file(folder: Path | str, model: str) -> Path:
    return Path(folder) / f"metrics_{model}.json"


def predictions_file(folder: Path | str, split: str) -> Path:
    return Path(folder) / f"predictions_{split}.parquet"


def confusion_plot(folder: Path | str, model: str) -> Path:
    return Path(folder) / f"confusion_matrix_{model}.png"


def reconstructions_plot(folder: Path | str, model: str) -> Path:
    """Autoencoder: input, reconstruction and error map of typical and extreme images."""
    return Path(folder) / f"reconstructions_{model}.png"


def bland_altman_plot(folder: Path | str, model: str) -> Path:
    return Path(folder) / f"{BLAND_ALTMAN_DATA}_{model}.png"


def plot_data(folder: Path | str, stem: str, model: str | None = None) -> Path:
    """A DVC plot file: ``<folder>/<stem>.csv``, or ``<folder>/<stem>_<model>.csv``."""
    return Path(folder) / (f"{stem}.csv" if model is None else f"{stem}_{model}.csv")


@dataclass(frozen=True)
class Catalog:
    """Every artifact path of one configuration."""

    params: Params

    # stage folders -------------------------------------------------------------------
    @property
    def synth_dir(self) -> Path:
        return self.params.synth.out_dir

    @property
    def dicom_dir(self) -> Path:
        return self.params.data.dicom_dir

    @property
    def labels_csv(self) -> Path:
        return self.params.data.labels_csv

    @property
    def ingest_dir(self) -> Path:
        return self.params.ingest.out_dir

    @property
    def validate_dir(self) -> Path:
        return self.params.validate_.out_dir

    @property
    def split_dir(self) -> Path:
        return self.params.split.out_dir

    @property
    def plan_dir(self) -> Path:
        return self.params.plan.out_dir

    @property
    def preprocess_dir(self) -> Path:
        return self.params.preprocess.out_dir

    @property
    def series_dir(self) -> Path:
        return self.params.series.out_dir

    @property
    def series_data_dir(self) -> Path:
        return self.series_dir / SERIES_DATA_DIR

    def data_dir_for(self, task: Any) -> Path:
        """What tune, train, baseline, evaluate and promote read for ``task`` (a
        ``pipeline.tasks.Task``): the series volumes where its ``sample_unit`` is a series,
        else the preprocessed images."""
        if task.sample_unit == "series":
            return self.series_data_dir
        return self.preprocess_dir

    @property
    def tune_dir(self) -> Path:
        return self.params.tune.out_dir

    @property
    def train_dir(self) -> Path:
        return self.params.train.out_dir

    @property
    def checkpoint_dir(self) -> Path:
        return self.params.train.checkpoint_dir

    @property
    def baseline_dir(self) -> Path:
        return self.params.baseline.out_dir

    @property
    def reports_dir(self) -> Path:
        return self.params.evaluate.out_dir

    @property
    def registry_dir(self) -> Path:
        return self.params.register_.out_dir

    @property
    def qa_dir(self) -> Path:
        return self.params.qa.out_dir

    @property
    def qa_exclusions(self) -> Path:
        return self.qa_dir / QA_EXCLUSIONS_FILE

    @property
    def monitor_dir(self) -> Path:
        return self.params.monitor.out_dir

    @property
    def secret_key(self) -> Path:
        return self.params.base.secret_key_path

    # files -----------------------------------------------------------------------------
    @property
    def manifest(self) -> Path:
        return self.ingest_dir / MANIFEST_FILE

    @property
    def quarantine(self) -> Path:
        return self.ingest_dir / QUARANTINE_FILE

    @property
    def splits(self) -> Path:
        return self.split_dir / SPLITS_FILE

    @property
    def plan(self) -> Path:
        return self.plan_dir / PLAN_FILE

    @property
    def stats(self) -> Path:
        return self.preprocess_dir / STATS_FILE

    @property
    def best_params(self) -> Path:
        return self.tune_dir / BEST_PARAMS_FILE

    @property
    def train_run(self) -> Path:
        return self.train_dir / RUN_FILE

    @property
    def registration(self) -> Path:
        return self.registry_dir / REGISTRATION_FILE

    @property
    def evaluation_report(self) -> Path:
        return self.reports_dir / EVALUATION_REPORT

    def metrics(self, model: str) -> Path:
        return metrics_file(self.reports_dir, model)


# Which fields of each stage's ``Paths`` are read and which are written.
# How each written path is written (what ``pipeline.io.check_output`` checks up front):
# "folder" replaced as a whole, "holder" a folder files are written into, "workdir" a folder
# filled and cleared in place (checkpoints), "file" a single file.
OUTPUT_KINDS: dict[tuple[str, str], str] = {
    ("tune", "out_dir"): "holder",
    ("baseline", "out_dir"): "holder",
    ("evaluate", "out_dir"): "holder",
    ("register", "out_dir"): "holder",
    ("train", "checkpoint_dir"): "workdir",
    ("predict", "out_csv"): "file",
}
STAGE_IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "synth": ((), ("out_dir",)),
    "ingest": (("input_dir", "labels_csv", "key_path"), ("out_dir",)),
    "validate": (("ingest_dir",), ("out_dir",)),
    "split": (("ingest_dir",), ("out_dir",)),
    "plan": (("ingest_dir", "split_dir"), ("out_dir",)),
    "preprocess": (("ingest_dir", "split_dir", "plan_dir"), ("out_dir",)),
    "series": (("input_dir", "labels_csv"), ("out_dir",)),
    "tune": (("data_dir",), ("out_dir",)),
    "train": (("data_dir", "best_params"), ("out_dir", "checkpoint_dir")),
    "baseline": (("data_dir",), ("out_dir",)),
    "evaluate": (("data_dir", "cnn_dir", "baseline_dir"), ("out_dir",)),
    "register": (("cnn_dir", "reports_dir"), ("out_dir",)),
    "promote": (("registration", "data_dir"), ()),
    "qa": (("ingest_dir", "data_dir"), ("out_dir",)),
    "monitor": (("input_dir", "qa_dir", "data_dir"), ("out_dir",)),
    "predict": (("input_dir", "model_uri"), ("out_csv",)),
}


def output_kind(stage: str, field: str) -> str:
    """How ``stage`` writes its ``Paths`` field ``field`` (see :data:`OUTPUT_KINDS`)."""
    return OUTPUT_KINDS.get((stage, field), "folder")


def stage_io(stage: str, paths: object) -> tuple[list[Path], list[Path]]:
    """``(inputs, outputs)`` of a stage's ``Paths`` (fields it lacks are skipped; a model URI
    counts only when it names a local folder)."""
    inputs_f, outputs_f = STAGE_IO.get(stage, ((), ()))

    def values(names: tuple[str, ...]) -> list[Path]:
        found: list[Path] = []
        for name in names:
            value = getattr(paths, name, None)
            if value is None or value == "":
                continue
            if isinstance(value, str) and ":" in value:  # models:/..., runs:/...
                continue
            found.append(Path(value))
        return found

    return values(inputs_f), values(outputs_f)
