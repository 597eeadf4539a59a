"""``make bench`` rows for scaling out (issue: the local production stack).

* tuning with ``tune.workers: 2`` against 1 worker, the same trial budget and seed, each on a
  fresh journal/SQLite study: wall time ratio (≤ 0.6) and best val AUC difference (≤ 0.01);
* ``radops train`` logging to the MLflow tracking server of ``make stack`` (PostgreSQL,
  proxied artifacts) against the local SQLite store (≤ 1.10);
* ``train.strategy: ddp`` with 2 CPU processes against 1 (reported; 2 shared cores);
* per image and per epoch costs for the README's sizing table.

Every command is the user's: ``radops tune`` / ``radops train`` with ``-S`` overrides, run in
the bench's project after the end-to-end figure built its data.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from bench.harness import Ctx, Figure, run_proc


def _radops() -> str:
    exe = shutil.which("radops", path=str(Path(sys.executable).parent)) or "radops"
    return exe


def _sets(values: dict[str, Any]) -> list[str]:
    return [arg for k, v in values.items() for arg in ("-S", f"{k}={v}")]


def ensure_data(ctx: Ctx) -> None:
    """The preprocessed data, when the end-to-end figure did not build it (``--only``)."""
    if not (ctx.preprocessed / "stats.json").exists():
        run_proc(ctx, ["dvc", "repro", "preprocess"], "repro-preprocess")


def _tune(ctx: Ctx, workers: int) -> tuple[float, dict[str, Any]]:
    folder = ctx.tmp / f"tune-{workers}w"
    shutil.rmtree(folder, ignore_errors=True)
    values = {
        "tune.workers": workers,
        "tune.budget_minutes": 120.0,  # an equal trial count decides, not the clock
        "tune.storage": f"sqlite:///{folder / 'optuna.db'}",
        "tune.out_dir": folder / "out",
        "base.tracking_uri": f"sqlite:///{folder / 'mlflow.db'}",
    }
    proc = run_proc(ctx, [_radops(), "tune", *_sets(values)], f"tune-{workers}w")
    return proc.seconds, json.loads((folder / "out/best_params.json").read_text())


def fig_parallel_tuning(ctx: Ctx) -> list[Figure]:
    ensure_data(ctx)
    one_s, one = _tune(ctx, 1)
    two_s, two = _tune(ctx, 2)
    detail = {
        "one_worker_s": round(one_s, 1),
        "two_workers_s": round(two_s, 1),
        "n_trials": one["n_trials"],
        "best_one": round(one["value"], 4),
        "best_two": round(two["value"], 4),
        "epochs_one": one["total_epochs"],
        "epochs_two": two["total_epochs"],
    }
    return [
        Figure.check(
            "tuning: 2 workers / 1 worker, wall time at an equal trial count",
            two_s / one_s,
            "<=",
            0.6,
            "×",
            **detail,
        ),
        Figure.check(
            "tuning: |best val AUC 2 workers − 1 worker| (best value within 0.01)",
            abs(two["value"] - one["value"]),
            "<=",
            0.01,
            "AUC",
            trials_complete_one=one["n_complete"],
            trials_complete_two=two["n_complete"],
        ),
    ]


def _train(ctx: Ctx, name: str, extra: dict[str, Any], env: dict[str, str] | None = None) -> Any:
    folder = ctx.tmp / f"train-{name}"
    shutil.rmtree(folder, ignore_errors=True)
    values = {
        "train.out_dir": folder / "cnn",
        "train.checkpoint_dir": folder / "ckpt",
        "train.use_tuned_params": "false",
        "base.experiment_name": f"bench-{name}",
    } | extra
    saved = ctx.env
    ctx.env = saved | (env or {})
    try:
        proc = run_proc(ctx, [_radops(), "train", *_sets(values)], f"train-{name}")
    finally:
        ctx.env = saved
    metrics = json.loads((folder / "cnn/train_metrics.json").read_text())
    return proc, metrics


def fig_tracking_server(ctx: Ctx) -> list[Figure]:
    ensure_data(ctx)
    from ops import stack

    local_proc, _ = _train(ctx, "sqlite", {"base.tracking_uri": f"sqlite:///{ctx.tmp / 'ml.db'}"})
    settings = stack.up(ctx.project, workers=0)
    try:
        server_env = {"MLFLOW_TRACKING_URI": settings["MLFLOW_TRACKING_URI"]}
        server_proc, _ = _train(ctx, "server", {}, server_env)
    finally:
        stack.down(ctx.project)
    return [
        Figure.check(
            "tracking: `radops train` to the MLflow server / to local SQLite",
            server_proc.seconds / local_proc.seconds,
            "<=",
            1.10,
            "×",
            server_s=round(server_proc.seconds, 1),
            sqlite_s=round(local_proc.seconds, 1),
        )
    ]


def fig_ddp(ctx: Ctx) -> list[Figure]:
    ensure_data(ctx)
    common = {"base.tracking_uri": f"sqlite:///{ctx.tmp / 'ddp.db'}", "train.accelerator": "cpu"}
    one, m1 = _train(ctx, "1proc", common | {"train.devices": 1})
    two, m2 = _train(ctx, "ddp2", common | {"train.devices": 2, "train.strategy": "ddp"})
    import numpy as np

    n_train = len(np.load(ctx.preprocessed / "train_y.npy", mmap_mode="r"))
    per_epoch = one.seconds / max(1, m1["epochs_run"])
    return [
        Figure.info(
            "DDP: 2 CPU processes / 1, wall time (2 shared cores: correctness, not speed)",
            two.seconds / one.seconds,
            "×",
            one_s=round(one.seconds, 1),
            ddp_s=round(two.seconds, 1),
            epochs_one=m1["epochs_run"],
            epochs_ddp=m2["epochs_run"],
            best_val_auc_one=round(m1.get("best_val_auc", float("nan")), 4),
            best_val_auc_ddp=round(m2.get("best_val_auc", float("nan")), 4),
        ),
        Figure.info(
            "training cost per image and epoch (1 process, incl. start-up)",
            per_epoch / n_train * 1000,
            "ms",
            seconds_per_epoch=round(per_epoch, 2),
            train_images=n_train,
            image_size=ctx.params().preprocess.image_size,
        ),
    ]
