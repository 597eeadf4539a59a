"""``make quality``: test AUC, calibration and CPU cost per cohort variant and configuration.

    python -m bench.quality [--variants default,subtle,scanner_shift]
                            [--configs old,new,old+ensemble,old+tta,old+calibration]
                            [--work bench/work/quality] [--quick]

Each variant gets one throw-away project (``bench.project.make_project``: the repository's
dvc.yaml, params.yaml and code) under ``WORK/<variant>/project``. Its data stages (synth →
preprocess, the SVM baseline, QA) run once; then each configuration's params are written into
its params.yaml (as ``dvc exp run -S`` would) and ``dvc repro`` reruns only what they change:

- ``old``: today's learning defaults, frozen in ``OLD`` (so "old" keeps meaning this release
  after params.yaml changes), plus ``NEUTRAL``: the off values of knobs added later, applied
  where the Params model knows the key and accepts the value;
- ``new``: params.yaml as it is (no overrides);
- ``old+ensemble`` / ``old+tta`` / ``old+calibration``: one finishing step on top of ``old``.
  These rerun only ``train`` and ``evaluate`` (``dvc repro --single-item``) on old's tuned
  parameters, so the tuning is not repeated. A config whose keys the Params model rejects is
  a row "skipped: unknown param X".

A row's CPU minutes are the user + system CPU time of the ``dvc repro`` it ran, children
included (``os.wait4``); the variant's shared data stages are reported apart. Test ECE is the
evaluate stage's ``test_ece`` when it writes one, else computed here from its saved test
predictions (``ECE_BINS`` equal-width bins). Writes ``WORK/quality.json`` and ``quality.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
ECE_BINS = 10

VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "subtle": {"synth.lesion_contrast": 0.5, "synth.noise_scale": 1.5},
    "scanner_shift": {"synth.test_scanner_shift": True},
}

# This release's params.yaml values of everything that decides what is learned (frozen).
_AUG = {"enabled": True, "strength": 1.0, "rotation_deg": 0.0, "flip": True, "scale": 0.0}
OLD: dict[str, Any] = {
    **{f"preprocess.{k}": v for k, v in {
        "window_center": 40.0, "window_width": 400.0, "image_size": 64, "denoise": "none",
        "normalization": "zscore", "color": "luminance", "spacing_mm": 0.0}.items()},
    **{f"model.{k}": v for k, v in {
        "depth": 3, "base_width": 16, "kernel_size": 3, "batch_norm": True, "dropout": 0.2,
        "activation": "relu", "name": "cnn"}.items()},
    **{f"train.{k}": v for k, v in {
        "optimizer": "adamw", "lr": 0.002, "momentum": 0.9, "lr_schedule": "cosine",
        "lr_step_size": 0, "lr_step_factor": 0.1, "lr_plateau_factor": 0.5, "batch_size": 32,
        "max_epochs": 40, "weight_decay": 0.0001, "l1_lambda": 0.0, "loss": "auto",
        "class_weighting": "balanced", "early_stopping_monitor": "auto",
        "early_stopping_patience": 8, "early_stopping_min_delta": 0.001,
        "use_tuned_params": True, "init": "scratch", "label_fraction": 1.0}.items()},
    **{f"train.augmentation.{k}": v for k, v in (_AUG | {"intensity": 0.0}).items()},
    **{f"tune.{k}": v for k, v in {
        "n_trials": 10, "timeout_s": 900, "max_epochs": 10, "pruner": "median",
        "n_startup_trials": 2, "n_warmup_epochs": 2, "reduction_factor": 3}.items()},
    "tune.search_space": {
        "lr": {"type": "float", "low": 0.0003, "high": 0.01, "log": True},
        "batch_size": {"type": "categorical", "choices": [32, 64]},
        "optimizer": {"type": "categorical", "choices": ["adam", "adamw", "sgd"]},
        "dropout": {"type": "float", "low": 0.0, "high": 0.4},
        "base_width": {"type": "categorical", "choices": [8, 16]},
        "depth": {"type": "int", "low": 2, "high": 3},
        "weight_decay": {"type": "float", "low": 0.000001, "high": 0.001, "log": True},
    },
}  # fmt: skip
# Knobs added after this release, with their "off" candidates (the first the model accepts is
# used; a key the model lacks is left out, one whose candidates all fail is noted in the row).
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "train.augmentation.shift": (0.0,),
    "train.augmentation.elastic": (0.0, False),
    "train.augmentation.noise": (0.0, False),
    "train.label_smoothing": (0.0,),
    "train.mixup_alpha": (0.0,),
    "train.warmup_epochs": (0,),
    "train.ensemble_size": (1,),
    "train.calibration": ("none",),
    "evaluate.tta": ("none",),
    "tune.cv_folds": (0, 1),
    "tune.budget_minutes": (15.0,),  # today's tune.timeout_s 900 s
}
CONFIGS: dict[str, dict[str, Any] | None] = {  # None: no overrides at all (params.yaml)
    "old": {},
    "old+tta": {"evaluate.tta": "flips"},
    "old+calibration": {"train.calibration": "temperature"},
    "old+ensemble": {"train.ensemble_size": 3},
    "new": None,
}
# Every run: the series cohort only feeds task.kind series_classification.
RUNWIDE: dict[str, Any] = {"synth.series_patients": 2, "synth.series_image_size": 32}
QUICK: dict[str, Any] = {
    "synth.patients": 60, "synth.image_size": 64, "preprocess.image_size": 32,
    "tune.n_trials": 2, "tune.max_epochs": 1, "train.max_epochs": 1, "train.batch_size": 16,
    "baseline.search": False, "baseline.k_features": 5, "evaluate.bootstrap_iterations": 50,
    "qa.n_estimators": 50,
}  # fmt: skip
ISOLATE = ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "PREFECT_PROFILE", "PREFECT_API_KEY")


# --------------------------------------------------------------------------- params
def unknown_keys(overrides: dict[str, Any]) -> list[str]:
    """Dotted keys the current Params model has no field for (inside a dict field: any key)."""
    from pydantic import BaseModel

    from pipeline.config import Params

    unknown = []
    for dotted in overrides:
        model: Any = Params
        for part in dotted.split("."):
            if model is None:
                break
            fields = {(f.alias or n): f for n, f in model.model_fields.items()}
            field = fields.get(part) or model.model_fields.get(part)
            if field is None:
                unknown.append(dotted)
                break
            ann = field.annotation
            model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return unknown


def _accepts(raw: dict[str, Any], dotted: str, value: Any) -> bool:
    from pipeline.config import set_dotted, validate_params
    from pipeline.errors import RadopsError

    tree = copy.deepcopy(raw)
    set_dotted(tree, dotted, value)
    try:
        validate_params(tree, "params.yaml")
    except RadopsError:
        return False
    return True


def config_overrides(name: str, raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The config's dotted overrides on ``raw`` (a parsed params.yaml), and notes."""
    extra = CONFIGS[name]
    if extra is None:
        return {}, []
    out = dict(OLD)
    notes = []
    for key, candidates in NEUTRAL.items():
        if unknown_keys({key: None}) or key in extra:
            continue
        value = next((v for v in candidates if _accepts(raw, key, v)), ...)
        if value is ...:
            notes.append(f"{key} kept at its default (no off value accepted)")
        else:
            out[key] = value
    return out | extra, notes


# --------------------------------------------------------------------------- running
def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ISOLATE}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_dvc(project: Path, args: list[str], log: Path) -> dict[str, Any]:
    """``dvc <args>`` in ``project``: wall and CPU seconds (children included), stages run."""
    with log.open("a") as fh:
        fh.write(f"$ dvc {' '.join(args)}\n")
        fh.flush()
        start = time.perf_counter()
        proc = subprocess.Popen(["dvc", *args], cwd=project, env=_env(), stdout=fh, stderr=fh)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    output = log.read_text(errors="replace")
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        tail = "\n".join(output.splitlines()[-25:])
        raise RuntimeError(f"dvc {' '.join(args)} exited {rc} (log {log}):\n{tail}")
    return {"cpu_s": usage.ru_utime + usage.ru_stime, "wall_s": wall}


def write_params(project: Path, pristine: str, overrides: dict[str, Any]) -> None:
    from pipeline.config import write_overrides

    (project / "params.yaml").write_text(pristine)
    if overrides:
        write_overrides(project / "params.yaml", overrides)


def expected_calibration_error(y: Any, prob: Any, bins: int = ECE_BINS) -> float:
    """Mean |observed positive rate - mean predicted probability| over equal-width bins,
    weighted by each bin's share of the images: the evaluate stage's own ECE."""
    from pipeline.evaluation.finishing import ece

    return ece(y, prob, bins)


def row_metrics(project: Path) -> dict[str, Any]:
    import pandas as pd

    from pipeline import catalog
    from pipeline.config import load_params

    reports = catalog.Catalog(load_params(project / "params.yaml")).reports_dir
    reports = reports if reports.is_absolute() else project / reports
    m = json.loads(catalog.metrics_file(reports, "cnn").read_text())
    preds = pd.read_parquet(catalog.predictions_file(reports, "test"))
    ece = m.get("test_ece")
    return {
        "test_auc": m["test_auc"],
        "test_auc_ci": [m["test_auc_ci_low"], m["test_auc_ci_high"]],
        "test_ece": float(ece) if ece is not None else expected_calibration_error(
            preds["label"], preds["prob_cnn"]),
        "ece_source": "evaluate" if ece is not None else "bench.quality",
        "test_brier": m["test_brier"],
        "val_auc": m.get("val_auc"),
        "n_test": m.get("n_test"),
        "test_sites": sorted(str(s) for s in preds["site"].unique()) if "site" in preds else [],
    }  # fmt: skip


def run_variant(variant: str, configs: list[str], work: Path, quick: bool) -> dict[str, Any]:
    """Every selected config on one variant's project; the variant's record."""
    from bench.project import make_project
    from pipeline.io import clear_dir

    vdir = clear_dir(work / variant, "bench", ("*",))  # bench scratch: all of it is radops'
    project = make_project(vdir / "project")
    log = vdir / "dvc.log"
    pristine = (project / "params.yaml").read_text()
    raw = yaml.safe_load(pristine)
    base = VARIANTS[variant] | RUNWIDE | (QUICK if quick else {})
    record: dict[str, Any] = {"variant": variant, "overrides": VARIANTS[variant], "rows": []}
    plan: list[tuple[str, dict[str, Any], list[str], str | None]] = []
    for name in configs:
        extra = CONFIGS[name] or {}
        unknown = unknown_keys(extra)
        if unknown:
            plan.append((name, {}, [], f"skipped: unknown param {', '.join(unknown)}"))
            continue
        refused = [f"{k}={v!r}" for k, v in extra.items() if not _accepts(raw, k, v)]
        if refused:
            plan.append((name, {}, [], f"skipped: value refused: {', '.join(refused)}"))
            continue
        overrides, notes = config_overrides(name, raw)
        plan.append((name, overrides | base, notes, None))
    runnable = [p for p in plan if p[3] is None]
    if runnable:
        try:
            write_params(project, pristine, runnable[0][1])
            data_stages = ["preprocess", "baseline", "qa", "init", "series"]
            record["data"] = run_dvc(project, ["repro", *data_stages], log)
        except Exception as exc:  # reported in the table
            record["data"] = {"error": str(exc)}
    old_done = False
    for name, overrides, notes, skipped in plan:
        row: dict[str, Any] = {"variant": variant, "config": name, "overrides": CONFIGS[name]}
        record["rows"].append(row)
        if skipped or "error" in record.get("data", {}):
            row["status"] = skipped or "failed: data stages (see dvc.log)"
            continue
        row["notes"] = notes
        finishing = name.startswith("old+") and old_done
        args = (
            ["repro", "--single-item", "train", "evaluate"] if finishing else ["repro", "evaluate"]
        )
        try:
            write_params(project, pristine, overrides)
            row |= run_dvc(project, args, log)
            row |= row_metrics(project)
            row["status"] = "ok"
            old_done = old_done or name == "old"
        except Exception as exc:  # one failed row must not lose the others
            row["status"] = f"failed: {str(exc).splitlines()[0]}"
            row["error"] = str(exc)
    return record


# --------------------------------------------------------------------------- table
def _fmt(x: Any, spec: str = ".3f") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def markdown(doc: dict[str, Any]) -> str:
    lines = [
        "| variant | config | test AUC (95 % CI) | test ECE | test Brier | CPU min | wall min |",
        "|---|---|---|---|---|---|---|",
    ]
    for record in doc["variants"]:
        for r in record["rows"]:
            if r["status"] != "ok":
                lines.append(f"| {r['variant']} | {r['config']} | {r['status']} | | | | |")
                continue
            lo, hi = r["test_auc_ci"]
            lines.append(
                f"| {r['variant']} | {r['config']} | {r['test_auc']:.3f} ({lo:.3f}–{hi:.3f}) "
                f"| {r['test_ece']:.3f} | {r['test_brier']:.3f} | {r['cpu_s'] / 60:.1f} "
                f"| {r['wall_s'] / 60:.1f} |"
            )
    lines.append("")
    for record in doc["variants"]:
        data = record.get("data", {})
        if "cpu_s" in data:
            lines.append(
                f"- {record['variant']}: data stages (synth → preprocess, baseline, QA) "
                f"{data['cpu_s'] / 60:.1f} CPU min, {data['wall_s'] / 60:.1f} wall min."
            )
    lines.append(
        f"- Total: {doc['total_cpu_s'] / 60:.1f} CPU min, {doc['total_wall_s'] / 60:.1f} wall "
        f"min{' (--quick)' if doc['quick'] else ''}."
    )
    return "\n".join(lines) + "\n"


def _names(text: str, known: dict[str, Any], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise SystemExit(f"bench.quality: unknown {what} {bad}; choose from {', '.join(known)}")
    return names


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--work", type=Path, default=REPO / "bench" / "work" / "quality")
    ap.add_argument("--quick", action="store_true", help="60 patients, 1 epoch: a smoke test")
    args = ap.parse_args(argv)
    variants = _names(args.variants, VARIANTS, "variant(s)")
    chosen = set(_names(args.configs, CONFIGS, "config(s)"))
    configs = [c for c in CONFIGS if c in chosen]  # old first: its tuning is reused

    from pipeline.io import write_json, write_text

    for key in ISOLATE:  # the study's runs go to each project's own MLflow store
        os.environ.pop(key, None)
    args.work.mkdir(parents=True, exist_ok=True)
    start, cpu0 = time.perf_counter(), _cpu()
    records = []
    for variant in variants:
        records.append(run_variant(variant, configs, args.work, args.quick))
        print(f"bench.quality: {variant} done after {(time.perf_counter() - start) / 60:.1f} min")
    doc = {
        "quick": args.quick,
        "variants": records,
        "total_cpu_s": _cpu() - cpu0,
        "total_wall_s": time.perf_counter() - start,
    }
    write_json(args.work / "quality.json", doc)
    table = markdown(doc)
    write_text(args.work / "quality.md", table)
    print(table)
    rows = [r for rec in records for r in rec["rows"]]
    return 1 if any(r["status"].startswith("failed") for r in rows) else 0


def _cpu() -> float:
    """CPU seconds of this process and its finished children."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


if __name__ == "__main__":
    raise SystemExit(main())
