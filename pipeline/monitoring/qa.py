"""Stage ``qa``: unsupervised screening of the preprocessed images before training.

Why: a batch of odd scans (wrong rescale or window, a flipped or blank image, another body
part, heavy noise) or a site the model could learn instead of the disease does not fail any
contract, yet it spoils training. So every image gets features (``features.py``), standardised
on the training split, and then:

* PCA (explained variance logged) and a 2-D map coloured by site, manufacturer, split, label;
* k-means with k chosen by silhouette (``qa.k_min``..``qa.k_max``), and a table of clusters
  against site / manufacturer / label: a cluster that is (almost) one site is a warning;
* an isolation forest fitted on the training split (``qa.contamination``) scores every image;
  ``qa_flags.parquet`` holds ``image_id``, ``source_id``, split, score, flag and a reason (the
  most extreme standardised features); ``qa.md`` shows the flagged images as thumbnails.

``qa.action: exclude`` writes the flagged *training* images to ``exclusions.json``; the
training data loading (``pipeline.training.datasets``) drops them. Validation and test images are
never excluded: they are what the model is judged on. The fitted model (isolation forest with
skops, scaler/PCA/spec as JSON) is what ``radops monitor`` scores a new batch with.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import catalog
from pipeline.config import Params
from pipeline.data.contracts import SPLIT_NAMES
from pipeline.errors import InputError

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.ensemble import IsolationForest


log = logging.getLogger(__name__)
COLOUR_BY = ("site", "manufacturer", "split", "label")


@dataclass(frozen=True)
class Paths:
    ingest_dir: Path
    data_dir: Path  # preprocess output
    out_dir: Path

    @classmethod
    def from_params(cls, params: Params) -> Paths:
        cat = catalog.Catalog(params)
        return cls(ingest_dir=cat.ingest_dir, data_dir=cat.preprocess_dir, out_dir=cat.qa_dir)


@dataclass
class QAResult:
    out_dir: Path
    flagged: dict[str, int]
    excluded: int
    action: str
    k: int
    silhouette: float
    explained: list[float]
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        flags = ", ".join(f"{k} {v}" for k, v in self.flagged.items())
        what = (
            f"{self.excluded} training images excluded"
            if self.action == "exclude"
            else "report only, nothing excluded"
        )
        lines = [
            f"qa: flagged {flags} ({what}); PCA 2 components explain "
            f"{sum(self.explained[:2]):.1%}; k-means k={self.k} (silhouette "
            f"{self.silhouette:.2f}) in {self.seconds:.1f}s -> {self.out_dir}"
        ]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def load_images(data_dir: Path, ingest_dir: Path) -> tuple[np.ndarray, pd.DataFrame]:
    """All preprocessed images (train, val, test stacked) and one index row each, with its
    split, ``source_id`` and the manifest's pixel statistics."""
    import pandas as pd

    from pipeline.monitoring.features import RAW_COLUMNS

    manifest_path = ingest_dir / catalog.MANIFEST_FILE
    if not manifest_path.is_file():
        raise InputError(f"no manifest at {manifest_path}; run `radops ingest` first")
    manifest = pd.read_parquet(manifest_path, columns=["image_id", "source_id", *RAW_COLUMNS])
    manifest = manifest.drop_duplicates("image_id")
    images, frames = [], []
    for split in SPLIT_NAMES:
        x_path = catalog.split_file(data_dir, split, catalog.IMAGES_SUFFIX)
        i_path = catalog.split_file(data_dir, split, catalog.INDEX_SUFFIX)
        if not (x_path.is_file() and i_path.is_file()):
            raise InputError(f"missing {x_path} or {i_path}: run `radops preprocess` first")
        x = np.load(x_path, mmap_mode="r")
        index = pd.read_parquet(i_path).assign(split=split)
        if len(x) != len(index):
            raise InputError(f"{x_path}: {len(x)} images but {len(index)} index rows")
        images.append(np.asarray(x if x.ndim == 4 else x[:, None], dtype=np.float32))
        frames.append(index)
    index = pd.concat(frames, ignore_index=True)
    index = index.merge(manifest, on="image_id", how="left", validate="many_to_one")
    if index["source_id"].isna().any():
        raise InputError("preprocessed images missing from the ingest manifest; rerun the stages")
    return np.concatenate(images), index


def choose_k(z: np.ndarray, k_min: int, k_max: int, seed: int) -> tuple[int, float, np.ndarray]:
    """k-means on ``z`` for k in [k_min, k_max]; the k with the best silhouette."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    best: tuple[int, float, np.ndarray] = (1, float("nan"), np.zeros(len(z), dtype=int))
    sample = min(len(z), 2000)
    for k in range(k_min, min(k_max, len(z) - 1) + 1):
        labels = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(z)
        score = float(silhouette_score(z, labels, sample_size=sample, random_state=seed))
        if not best[1] >= score:  # nan (first) or better
            best = (k, score, labels)
    return best


def cluster_table(index: pd.DataFrame, labels: np.ndarray) -> pd.DataFrame:
    """Cluster sizes against site, manufacturer and label (one row per cluster)."""
    import pandas as pd

    frame = index.assign(cluster=labels)
    parts: list[pd.DataFrame | pd.Series] = [frame.groupby("cluster").size().rename("images")]
    for column in ("site", "manufacturer", "label"):
        cross = pd.crosstab(frame["cluster"], frame[column])
        cross.columns = [f"{column}={c}" for c in cross.columns]
        parts.append(cross)
    return pd.concat(parts, axis=1).reset_index()


def cluster_warnings(table: pd.DataFrame, share: float, min_size: int) -> list[str]:
    """A cluster (of ``min_size`` images or more) that is ``share`` one site or manufacturer:
    the model could learn where an image was made instead of what it shows."""
    out = []
    for _, row in table.iterrows():
        if row["images"] < min_size:
            continue
        for column in ("site", "manufacturer"):
            cols = [c for c in table.columns if c.startswith(f"{column}=")]
            counts = row[cols].astype(float)
            if counts.max() / row["images"] >= share and len(cols) > 1:
                top = str(counts.idxmax()).split("=", 1)[1]
                out.append(
                    f"cluster {int(row['cluster'])} ({int(row['images'])} images) is "
                    f"{counts.max() / row['images']:.0%} {column} {top}: the model may learn "
                    f"the {column}"
                )
    return out


def outlier_space(z: np.ndarray, pca: dict[str, Any]) -> np.ndarray:
    """Where the isolation forest looks: the whitened principal components of the standardised
    features and the log of what they leave unexplained (the PCA reconstruction error). An
    extreme value in one of ~130 raw features is diluted among the others; here it is either
    far out on a component or left in the residual."""
    components = np.asarray(pca["components"])
    pcs = (z - np.asarray(pca["mean"])) @ components.T
    residual = z - np.asarray(pca["mean"]) - pcs @ components
    white = pcs / np.sqrt(np.maximum(np.asarray(pca["variance"]), 1e-12))
    return np.column_stack([white, np.log(np.square(residual).sum(axis=1) + 1e-9)])


def fit_forest(z_train: np.ndarray, params: Params) -> IsolationForest:
    from sklearn.ensemble import IsolationForest

    return IsolationForest(
        n_estimators=params.qa.n_estimators,
        contamination=params.qa.contamination,
        random_state=params.base.seed,
    ).fit(z_train)


def save_forest(forest: IsolationForest, path: Path) -> None:
    import skops.io as sio

    sio.dump(forest, path)


# Beyond skops' defaults, an isolation forest holds only its trees' arrays.
TRUSTED_TYPES = ["sklearn.tree._tree.Tree"]


def load_forest(path: Path) -> IsolationForest:
    """The QA isolation forest (skops: refuses any type outside its defaults and
    ``TRUSTED_TYPES``)."""
    import skops.io as sio

    if not path.is_file():
        raise InputError(f"no QA model at {path}; run `radops qa` first")
    untrusted = sorted(set(sio.get_untrusted_types(file=path)) - set(TRUSTED_TYPES))
    if untrusted:
        raise InputError(f"refusing to load {path}: it contains untrusted types {untrusted}")
    return sio.load(path, trusted=TRUSTED_TYPES)  # type: ignore[no-any-return]


def run(params: Params, paths: Paths) -> QAResult:
    """Features, PCA, k-means, isolation forest; flags, report, exclusions, MLflow run."""
    import pandas as pd
    from sklearn.decomposition import PCA

    from pipeline.baselines.features import fit_spec
    from pipeline.io import atomic_path, write_json, write_parquet
    from pipeline.monitoring import report
    from pipeline.monitoring.features import Scaler, image_features, top_reasons

    start = time.perf_counter()
    cfg = params.qa
    x, index = load_images(paths.data_dir, paths.ingest_dir)
    train = (index["split"] == "train").to_numpy()
    if train.sum() < 3:
        raise InputError("qa needs at least 3 training images")
    spec = fit_spec(x[train], cfg.histogram_bins)
    atlas = np.asarray(x[train].mean(axis=(0, 1)), dtype=np.float32)
    raw = index[[c for c in index.columns if c.startswith("pixel_")]]
    matrix, names = image_features(x, spec, raw, cfg.extra_features, atlas)
    scaler = Scaler.fit(matrix[train])
    z = scaler.transform(matrix)
    n_comp = int(min(cfg.pca_components, train.sum() - 1, z.shape[1]))
    pca = PCA(n_components=n_comp, random_state=params.base.seed).fit(z[train])
    pcs = pca.transform(z)
    explained = [float(v) for v in pca.explained_variance_ratio_]
    pca_model = {
        "components": pca.components_.tolist(),
        "mean": pca.mean_.tolist(),
        "variance": pca.explained_variance_.tolist(),
    }
    k, silhouette, _ = choose_k(pcs[train], cfg.k_min, cfg.k_max, params.base.seed)
    from sklearn.cluster import KMeans

    clusters = KMeans(n_clusters=k, n_init=4, random_state=params.base.seed).fit(pcs[train])
    labels = clusters.predict(pcs)
    table = cluster_table(index, labels)
    warnings = cluster_warnings(table, cfg.single_site_share, cfg.min_cluster_size)
    space = outlier_space(z, pca_model)
    forest = fit_forest(space[train], params)
    scores = -forest.score_samples(space)  # higher: more anomalous
    flag = forest.predict(space) == -1
    reasons = np.where(flag, top_reasons(z, names), "")
    excluded = flag & train if cfg.action == "exclude" else np.zeros(len(index), dtype=bool)
    flags = pd.DataFrame(
        {
            "image_id": index["image_id"],
            "source_id": index["source_id"],
            "split": index["split"],
            "site": index["site"],
            "label": index["label"],
            "cluster": labels,
            "score": scores,
            "flag": flag,
            "excluded": excluded,
            "reason": reasons,
        }
    )
    counts = {s: int(flags.loc[flags["split"] == s, "flag"].sum()) for s in SPLIT_NAMES}
    meta: dict[str, Any] = {
        "spec": spec.to_dict(),
        "feature_names": names,
        "extra_features": list(cfg.extra_features),
        "scaler": scaler.to_dict(),
        "pca": pca_model,
        "explained_variance_ratio": explained,
        "k": k,
        "silhouette": silhouette,
        "contamination": cfg.contamination,
        "threshold": float(-forest.offset_),
        "flagged": counts,
        "excluded": int(excluded.sum()),
        "action": cfg.action,
        "warnings": warnings,
    }
    features = pd.concat(
        [index[["image_id", "source_id", "patient_id", "split", "site", "manufacturer", "label"]],
         pd.DataFrame(matrix, columns=names)], axis=1,
    )  # fmt: skip
    with atomic_path(paths.out_dir, stage="qa") as staged:
        staged.mkdir(parents=True)
        (staged / catalog.FIGURES_DIR).mkdir()
        write_parquet(staged / catalog.QA_FEATURES_FILE, features)
        write_parquet(staged / catalog.QA_FLAGS_FILE, flags)
        table.to_csv(staged / catalog.QA_CLUSTERS_FILE, index=False)
        save_forest(forest, staged / catalog.QA_MODEL_FILE)
        np.save(staged / catalog.QA_ATLAS_FILE, atlas)
        write_json(staged / catalog.QA_META_FILE, meta)
        write_json(
            staged / catalog.QA_EXCLUSIONS_FILE,
            {
                "action": cfg.action,
                "image_ids": sorted(flags.loc[excluded, "image_id"].tolist()),
                "source_ids": sorted(flags.loc[excluded, "source_id"].tolist()),
            },
        )
        report.pca_map(pcs, index, explained, staged / catalog.FIGURES_DIR / catalog.PCA_MAP_PLOT)
        shown = flags[flag].sort_values("score", ascending=False).head(cfg.max_thumbnails)
        report.thumbnails(x, shown, staged / catalog.FIGURES_DIR / catalog.FLAGGED_PLOT)
        (staged / catalog.QA_REPORT).write_text(
            report.qa_markdown(meta, table, flags, shown), encoding="utf-8"
        )
    result = QAResult(
        paths.out_dir, counts, int(excluded.sum()), cfg.action, k, silhouette, explained,
        warnings, time.perf_counter() - start,
    )  # fmt: skip
    _log_mlflow(params, paths.out_dir, meta)
    return result


def _log_mlflow(params: Params, out_dir: Path, meta: dict[str, Any]) -> None:
    import mlflow

    from pipeline.tracking import tracked_run

    with tracked_run(params, "qa"):
        mlflow.log_params(
            {f"qa.{k}": v for k, v in params.qa.model_dump(mode="json").items() if k != "out_dir"}
        )
        mlflow.log_metrics(
            {f"qa_explained_variance_pc{i + 1}": v
             for i, v in enumerate(meta["explained_variance_ratio"])}
            | {"qa_k": meta["k"], "qa_silhouette": meta["silhouette"],
               "qa_excluded": meta["excluded"], "qa_cluster_warnings": len(meta["warnings"])}
            | {f"qa_flagged_{s}": n for s, n in meta["flagged"].items()}
        )  # fmt: skip
        for name in (catalog.QA_REPORT, catalog.QA_FLAGS_FILE, catalog.QA_CLUSTERS_FILE):
            mlflow.log_artifact(str(out_dir / name), artifact_path="qa")
        mlflow.log_artifacts(str(out_dir / catalog.FIGURES_DIR), artifact_path="qa/figures")
