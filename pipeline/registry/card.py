"""A model card for every registered version, written by ``radops register``.

Why: the registry's tags say where a model came from and how good it was; a reviewer (or an
auditor) needs the whole story in one readable page: intended use and limits, the data it saw
(counts per split, site and manufacturer, label balance, QA exclusions, data version), how it
was trained (task, architecture, hyperparameters, transferred weights), how it was evaluated
(every test metric with its CI, the subgroup table, calibration, the threshold and how it was
chosen), how it compares with the champion, and the CLAIM 2024 checklist items the pipeline
can fill (marked **auto**; the others are left for a human, marked **human**).

Everything comes from files of the run it describes (``model.json``, ``metrics_cnn.json``,
``subgroups.csv``, the preprocessed split indexes, QA's ``qa_model.json`` and
``exclusions.json``) and from the registry (the champion at register time). The card is
written to ``reports/model_card.md`` and ``<register.out_dir>/model_card.md``, logged to the
training run as ``model_card/model_card_v<version>.md``, and the version's description links
to it. Promotion happens after registration (``radops promote``), so the card states the
champion it will be compared with and how, not the outcome.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import catalog
from pipeline.escape import md_code, md_table, md_text

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from pipeline.config import Params

CARD_ARTIFACT_DIR = "model_card"
TRANSFER_KEYS = ("transfer", "pretrained", "init", "initialisation", "initialization")
AUTO, HUMAN = "**auto**", "**human**"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.4g}"
    return str(value)


def _md_table(frame: pd.DataFrame) -> str:
    rows = [[_fmt(v) for v in r] for r in frame.itertuples(index=False)]
    return "\n".join(md_table([str(c) for c in frame.columns], rows))


def data_counts(data_dir: Path, target: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """Images per split × site / manufacturer and the target's balance, from the split
    indexes; and images per split."""
    import pandas as pd

    frames = []
    for split in ("train", "val", "test"):
        path = catalog.split_file(data_dir, split, catalog.INDEX_SUFFIX)
        if path.is_file():
            frames.append(pd.read_parquet(path).assign(split=split))
    if not frames:
        return pd.DataFrame(), {}
    index = pd.concat(frames, ignore_index=True)
    per_split = {str(k): int(v) for k, v in index.groupby("split").size().items()}
    rows = []
    for column in ("site", "manufacturer"):
        cross = pd.crosstab(index[column], index["split"]).reset_index()
        cross.insert(0, "by", column)
        rows.append(cross.rename(columns={column: "group"}))
    if target in index and index[target].nunique() <= 10:
        cross = pd.crosstab(index[target], index["split"]).reset_index()
        cross.insert(0, "by", target)
        rows.append(cross.rename(columns={target: "group"}))
    table = pd.concat(rows, ignore_index=True).fillna(0)
    return table, per_split


def champion_line(client: MlflowClient, name: str, version: str, key: str) -> str:
    """What the new version will be compared with at promotion."""
    try:
        champ = client.get_model_version_by_alias(name, "champion")
    except Exception:
        return "No champion at register time: `radops promote` will make this version champion."
    if str(champ.version) == str(version):
        return f"This version is already the champion of {md_code(name)}."
    value = md_text(
        champ.tags.get(f"radops.{key}", "n/a"), mid_line=True
    )  # a tag: anyone may set it
    return (
        f"Champion at register time: {md_code(name)} version {md_text(champ.version, mid_line=True)} with "
        f"{md_text(key, mid_line=True)} {value}. The promotion decision (a paired test on the same test images) is "
        "made by `radops promote` and recorded on this version as `radops.promotion.*` tags."
    )


def claim_checklist(params: Params, meta: dict[str, Any], has_qa: bool) -> list[str]:
    """CLAIM 2024 items: those the pipeline fills from its own records, and the rest."""
    arch = meta.get("architecture", {})
    pre = meta.get("preprocessing", {})
    items = [
        ("Title/abstract identify the study as AI in medical imaging", HUMAN, ""),
        ("Clinical question, intended use, study design", HUMAN, ""),
        ("Data sources", AUTO, f"DICOM export {md_code(params.data.dicom_dir)}, labels file"),
        ("Eligibility criteria", HUMAN, ""),
        ("De-identification", AUTO, "pseudonymous ids (keyed HMAC), PHI tags removed at ingest"),
        ("Missing data / unusable files", AUTO, "quarantined at ingest with a reason"),
        ("Data preprocessing", AUTO,
         f"{pre.get('intensity', 'window')} {pre.get('window_center')}/{pre.get('window_width')}"
         f" ({pre.get('intensity_reason', 'the configured window')}), "
         f"{pre.get('image_size')} px, {pre.get('normalization')} fitted on train"),
        ("Data quality screening / exclusions", AUTO if has_qa else HUMAN,
         "QA stage (PCA, k-means, isolation forest)" if has_qa else "no QA output found"),
        ("Ground truth (reference standard) and annotators", HUMAN, ""),
        ("Data partitions", AUTO,
         f"patient-grouped {params.split.train}/{params.split.val}/{params.split.test}"
         + (" (or the labels file's split column)" if params.split.use_labels_split else "")),
        ("Model description", AUTO,
         md_text(", ".join(f"{k} {v}" for k, v in sorted(arch.items())))),
        ("Software and versions", AUTO, "see the MLflow run (git commit, packages)"),
        ("Initialisation / transferred weights", AUTO, _transfer(meta)),
        ("Training details (optimiser, schedule, epochs, augmentation)", AUTO,
         "see Training above"),
        ("Model selection (tuning, early stopping)", AUTO,
         f"{meta.get('hyperparameter_source', catalog.PARAMS_FILE)}; early stopping on "
         f"{meta.get('monitor', 'n/a')}"),
        ("Ensembling", AUTO, "none"),
        ("Performance metrics and uncertainty", AUTO,
         f"patient-level bootstrap CIs ({params.evaluate.bootstrap_iterations} resamples)"),
        ("Subgroup / robustness analysis", AUTO,
         md_text(f"by {', '.join(params.evaluate.subgroup_columns)}")),
        ("External validation", HUMAN, "the test split comes from the training sites"),
        ("Explainability / failure analysis", HUMAN, ""),
        ("Limitations, clinical implications", HUMAN, ""),
        ("Registration, protocol, code and data availability", HUMAN, ""),
    ]  # fmt: skip
    return [f"- [{'x' if m == AUTO else ' '}] {m} {name}" + (f": {note}" if note else "")
            for name, m, note in items]  # fmt: skip


def _transfer(meta: dict[str, Any]) -> str:
    for key in TRANSFER_KEYS:
        if meta.get(key):
            return md_text(f"{key}: {meta[key]}")
    return "none: trained from random initialisation"


def build_card(
    params: Params,
    registration: dict[str, Any],
    metrics: dict[str, Any],
    meta: dict[str, Any],
    reports_dir: Path,
    champion: str,
) -> str:
    """The card's Markdown (pure: files in, text out)."""

    from pipeline.evaluation.finishing import card_lines as finish_card_lines
    from pipeline.io import read_csv, read_json
    from pipeline.tasks import task_from_meta

    task = task_from_meta(meta)
    cat = catalog.Catalog(params)
    name, version = registration["name"], registration["version"]
    counts, per_split = data_counts(cat.preprocess_dir, task.target)
    qa_meta = cat.qa_dir / catalog.QA_META_FILE
    qa = read_json(qa_meta) if qa_meta.is_file() else None
    lines = [
        f"# Model card: {md_text(name)} version {md_text(version)}",
        "",
        f"{md_text(task.describe())}; training run {md_code(registration['run_id'])}; data "
        f"version {md_code(registration.get('data_version', 'n/a'))}; commit "
        f"{md_code(str(registration.get('git_commit', 'n/a'))[:12])}.",
        "",
        "## Intended use and limits",
        "",
        f"- Intended use: research and method development: {task.describe()} on single "
        "CT slices, as a second reader at most; not a medical device, not for diagnosis.",
        "- Trained and tested on images from the sites and scanners listed below only; a new "
        "site, scanner or protocol must first pass `radops monitor` (drift) and a local "
        "evaluation.",
        "- Subgroups with few images have wide intervals; small lesions are the hardest.",
        "- Default data are synthetic: numbers here say nothing about clinical performance.",
        "",
        "## Data",
        "",
        "Images per split: " + ", ".join(f"{k} {v}" for k, v in per_split.items()) + ".",
        "",
        _md_table(counts) if len(counts) else "(no split indexes found)",
        "",
    ]
    if qa is not None:
        flagged = ", ".join(f"{k} {v}" for k, v in qa["flagged"].items())
        lines += [
            f"Data QA (`qa.action: {qa['action']}`): isolation-forest outliers flagged "
            f"{flagged}; **{qa['excluded']} training images excluded**; "
            f"{len(qa['warnings'])} cluster warning(s)"
            + (": " + "; ".join(md_text(w) for w in qa["warnings"]) if qa["warnings"] else "")
            + ".",
            "",
        ]
    else:
        lines += ["Data QA: no QA output found (stage not run); no exclusions.", ""]
    hyper = meta.get("hyperparameters", {})
    keep = ("optimizer", "lr", "batch_size", "max_epochs", "weight_decay", "dropout",
            "lr_schedule", "loss", "class_weighting", "augmentation")  # fmt: skip
    lines += [
        "## Training",
        "",
        f"- Task: {md_text(task.describe())} (`task.kind` {md_text(task.kind)}, target "
        f"{md_code(task.target)})",
        "- Architecture: "
        + md_text(", ".join(f"{k} {v}" for k, v in sorted(meta.get("architecture", {}).items()))),
        "- Hyperparameters: " + md_text(", ".join(f"{k} {hyper[k]}" for k in keep if k in hyper)),
        "- Source of hyperparameters: "
        + md_text(meta.get("hyperparameter_source", catalog.PARAMS_FILE)),
        f"- Best epoch {meta.get('best_epoch', 'n/a')} (stopped at "
        f"{meta.get('stopped_epoch', 'n/a')}; monitored {meta.get('monitor', 'n/a')})",
        f"- Transferred weights: {_transfer(meta)}",
        "",
        "## Evaluation (test split, evaluated once)",
        "",
    ]
    metric_rows = []
    for key in sorted(metrics):
        if key.endswith(("_ci_low", "_ci_high")):
            continue
        low, high = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
        ci = f"{_fmt(low)}–{_fmt(high)}" if low is not None and high is not None else ""
        metric_rows.append([key, _fmt(metrics[key]), ci])
    lines += [*md_table(["metric", "value", "95% CI"], metric_rows), ""]
    subgroups = reports_dir / catalog.SUBGROUPS_FILE
    if subgroups.is_file():
        table = read_csv(subgroups)
        table = table[table["model"] == "cnn"] if "model" in table else table
        lines += ["Subgroups:", "", _md_table(table), ""]
    if "threshold" in metrics:
        cfg = params.evaluate
        how = (
            "maximising Youden's J" if cfg.threshold_method == "youden"
            else f"reaching sensitivity {cfg.target_sensitivity}"
        )  # fmt: skip
        lines += [
            f"Operating threshold {_fmt(float(metrics['threshold']))}, chosen on the validation "
            f"split by {how}, applied unchanged to the test split.",
            "",
        ]
    lines += finish_card_lines(metrics, meta, params)  # ensemble, calibration, TTA, prevalence
    if "test_brier" in metrics:
        lines += [
            f"Calibration: Brier score {_fmt(float(metrics['test_brier']))}; reliability "
            f"diagram `{catalog.FIGURES_DIR}/{catalog.CALIBRATION_PLOT}` in the evaluation "
            "report.",
            "",
        ]
    lines += [
        "## Comparison with the champion and promotion",
        "",
        champion,
        "",
        f"Promotion test: {params.register_.promotion_test} at alpha {params.register_.alpha}.",
        "",
        "## CLAIM 2024 checklist",
        "",
        f"{AUTO}: filled from the pipeline's own records; {HUMAN}: for the study team.",
        "",
        *claim_checklist(params, meta, qa is not None),
        "",
    ]
    return "\n".join(lines)


def publish_card(
    params: Params,
    client: MlflowClient,
    registration: dict[str, Any],
    metrics: dict[str, Any],
    meta: dict[str, Any],
    reports_dir: Path,
    registry_dir: Path,
    key: str,
) -> str:
    """Write the card (reports/ and the registry folder), log it to the training run, and
    return its artifact URI (for the version's description)."""
    import tempfile

    from pipeline.io import write_text

    champion = champion_line(client, registration["name"], registration["version"], key)
    text = build_card(params, registration, metrics, meta, reports_dir, champion)
    write_text(reports_dir / catalog.MODEL_CARD, text, stage="register")
    write_text(registry_dir / catalog.MODEL_CARD, text, stage="register")
    run_id = registration["run_id"]
    with tempfile.TemporaryDirectory(prefix="radops-card-") as tmp:
        local = Path(tmp) / f"model_card_v{registration['version']}.md"
        local.write_text(text, encoding="utf-8")
        client.log_artifact(run_id, str(local), artifact_path=CARD_ARTIFACT_DIR)
    artifact_uri = client.get_run(run_id).info.artifact_uri
    return f"{artifact_uri}/{CARD_ARTIFACT_DIR}/{local.name}"
