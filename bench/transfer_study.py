"""``make transfer-study``: does autoencoder pretraining pay off when labels are scarce?

    python -m bench.transfer_study [--fractions 0.05 0.1 0.25 1] [--seeds 0 1 2]
                                   [--work bench/work/transfer] [--data data/preprocessed]

1. One autoencoder (``task.kind: autoencoder``, mode from ``--ae-mode``) is trained on *all*
   training images, without labels, with the shipped settings (``params.yaml``).
2. For each label fraction and seed, two classifiers with the shipped settings (same epochs,
   early stopping, cohort): ``train.init: scratch`` and ``train.init: autoencoder`` (its
   encoder, frozen for ``--freeze-epochs``). Both see the same patients
   (``train.label_fraction``, subsampled with ``base.seed`` = the seed); validation and test
   are untouched.
3. Each classifier's test AUC with its patient-level bootstrap CI (``task.evaluation_summary``,
   the stage ``evaluate``'s code) is logged to its own MLflow run in the experiment
   ``radops-transfer-study`` (tags ``radops.study``, ``radops.label_fraction``,
   ``radops.init``, ``radops.seed``: compare them in the UI); the table goes to
   ``WORK/transfer_study.json`` and ``.md``.

Needs ``data/preprocessed`` (``dvc repro preprocess``). Tuned parameters are not used (the
shipped ``params.yaml`` values are, for both arms), so the comparison has one difference only.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "radops-transfer-study"


def study_params(work: Path, data: Path, name: str, **sections: dict[str, Any]) -> Any:
    """The shipped params, outputs under ``work/name``, MLflow in the project's store."""
    from pipeline.config import load_params, with_updates

    base = load_params(REPO / "params.yaml")
    out = work / name
    updates: dict[str, dict[str, Any]] = {
        "base": {"experiment_name": EXPERIMENT},
        "preprocess": {"out_dir": str(data)},
        "train": {
            "out_dir": str(out / "model"),
            "checkpoint_dir": str(out / "checkpoints"),
            "use_tuned_params": False,
        },
    }
    for section, values in sections.items():
        updates.setdefault(section, {}).update(values)
    return with_updates(base, **updates)


def test_metrics(params: Any, model_dir: Path, data: Path) -> dict[str, float]:
    """The stage ``evaluate``'s CNN metrics (threshold chosen on validation)."""
    from pipeline.evaluation.evaluate import cnn_predictions, load_cnn, load_targets
    from pipeline.tasks import task_from_meta

    net, meta = load_cnn(model_dir, data)
    task = task_from_meta(meta)
    val, xv, _ = load_targets(task, data, "val")
    test, xt, index = load_targets(task, data, "test")
    return task.evaluation_summary(
        test.values,
        cnn_predictions(net, meta, xt),
        index["patient_id"].astype(str).to_numpy(),
        params.evaluate,
        rng=np.random.default_rng(params.base.seed),
        validation=(val.values, cnn_predictions(net, meta, xv)),
    )


def train_one(params: Any, tags: dict[str, str], data: Path) -> dict[str, Any]:
    import mlflow

    from pipeline.training import train

    start = time.perf_counter()
    result = train.run(params, train.Paths.from_params(params))
    metrics = test_metrics(params, params.train.out_dir, data)
    with mlflow.start_run(run_id=result.run_id):
        mlflow.set_tags(tags)
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if k.startswith("test_")})
    return {
        **{k.removeprefix("radops."): v for k, v in tags.items()},
        "run_id": result.run_id,
        "epochs": result.epochs_run,
        "best_epoch": result.best_epoch,
        "test_auc": metrics["test_auc"],
        "test_auc_ci_low": metrics["test_auc_ci_low"],
        "test_auc_ci_high": metrics["test_auc_ci_high"],
        "seconds": round(time.perf_counter() - start, 1),
    }


def summarise(rows: list[dict[str, Any]], fractions: list[float]) -> list[dict[str, Any]]:
    table = []
    for f in fractions:
        line: dict[str, Any] = {"label_fraction": f}
        for init in ("scratch", "autoencoder"):
            runs = [r for r in rows if float(r["label_fraction"]) == f and r["init"] == init]
            aucs = [r["test_auc"] for r in runs]
            line[init] = {
                "mean_auc": statistics.fmean(aucs) if aucs else float("nan"),
                "sd_auc": statistics.stdev(aucs) if len(aucs) > 1 else 0.0,
                "runs": [
                    f"{r['test_auc']:.3f} ({r['test_auc_ci_low']:.3f}–{r['test_auc_ci_high']:.3f})"
                    for r in runs
                ],
            }
        line["gain"] = line["autoencoder"]["mean_auc"] - line["scratch"]["mean_auc"]
        table.append(line)
    return table


def markdown(table: list[dict[str, Any]], header: str) -> str:
    lines = [
        header,
        "",
        "| labels | scratch: mean AUC ± SD | pretrained: mean AUC ± SD | gain | scratch runs: AUC (95% CI) | pretrained runs: AUC (95% CI) |",
        "|---|---|---|---|---|---|",
    ]
    for t in table:
        s, a = t["scratch"], t["autoencoder"]
        lines.append(
            f"| {t['label_fraction']:.0%} | {s['mean_auc']:.3f} ± {s['sd_auc']:.3f} "
            f"| {a['mean_auc']:.3f} ± {a['sd_auc']:.3f} | {t['gain']:+.3f} "
            f"| {'; '.join(s['runs'])} | {'; '.join(a['runs'])} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.1, 0.25, 1.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--work", type=Path, default=REPO / "bench" / "work" / "transfer")
    ap.add_argument("--data", type=Path, default=REPO / "data" / "preprocessed")
    ap.add_argument("--ae-mode", default="plain", choices=["plain", "denoising"])
    ap.add_argument("--freeze-epochs", type=int, default=3)
    ap.add_argument("--finetune-lr-factor", type=float, default=1.0)
    ap.add_argument("--reuse-autoencoder", action="store_true", help="keep WORK/autoencoder")
    ap.add_argument("--autoencoder", type=Path, help="use this trained autoencoder folder")
    ap.add_argument(
        "--reuse-scratch", type=Path, help="scratch runs from an earlier transfer_study_runs.json"
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from pipeline.io import write_json, write_text
    from pipeline.training import train

    work, data = args.work.resolve(), args.data.resolve()
    started = time.perf_counter()
    ae_params = study_params(
        work,
        data,
        "autoencoder",
        task={"kind": "autoencoder", "autoencoder": {"mode": args.ae_mode}},
    )
    ae_dir = args.autoencoder.resolve() if args.autoencoder else ae_params.train.out_dir
    if args.autoencoder:
        print(f"autoencoder: using {ae_dir}", flush=True)
    elif args.reuse_autoencoder and (ae_params.train.out_dir / "model.json").is_file():
        print(f"autoencoder: reusing {ae_params.train.out_dir}", flush=True)
    else:
        ae = train.run(ae_params, train.Paths.from_params(ae_params))
        print(f"autoencoder: {ae.epochs_run} epochs, best {ae.monitor} {ae.best_value:.4f}")
    rows: list[dict[str, Any]] = []
    earlier = json.loads(args.reuse_scratch.read_text())["runs"] if args.reuse_scratch else []
    for fraction in args.fractions:
        for seed in args.seeds:
            for init in ("scratch", "autoencoder"):
                old = [
                    r
                    for r in earlier
                    if r["init"] == init == "scratch"
                    and float(r["label_fraction"]) == fraction
                    and int(r["seed"]) == seed
                ]
                if old:  # the same run (same seed, data and settings) measured before
                    rows.append(old[0])
                    continue
                extra = (
                    {
                        "init_source": str(ae_dir),
                        "freeze_epochs": args.freeze_epochs,
                        "finetune_lr_factor": args.finetune_lr_factor,
                    }
                    if init == "autoencoder"
                    else {}
                )
                name = f"f{fraction:g}-s{seed}-{init}"
                params = study_params(
                    work,
                    data,
                    name,
                    base={"seed": seed},
                    train={"init": init, "label_fraction": fraction, **extra},
                )
                tags = {
                    "radops.study": "transfer",
                    "radops.label_fraction": f"{fraction:g}",
                    "radops.init": init,
                    "radops.seed": str(seed),
                }
                row = train_one(params, tags, data)
                rows.append(row)
                print(
                    f"{name}: test AUC {row['test_auc']:.3f} ({row['test_auc_ci_low']:.3f}–"
                    f"{row['test_auc_ci_high']:.3f}), {row['epochs']} epochs, {row['seconds']} s",
                    flush=True,
                )
                write_json(work / "transfer_study_runs.json", {"runs": rows})
    table = summarise(rows, args.fractions)
    minutes = (time.perf_counter() - started) / 60
    header = (
        f"Transfer study: {len(args.seeds)} seed(s) {args.seeds}, autoencoder mode "
        f"{args.ae_mode}, freeze_epochs {args.freeze_epochs}, finetune_lr_factor "
        f"{args.finetune_lr_factor}; {minutes:.0f} min"
    )
    doc = {
        "settings": vars(args) | {"work": str(work), "data": str(data)},
        "table": table,
        "runs": rows,
    }
    write_json(work / "transfer_study.json", json.loads(json.dumps(doc, default=str)))
    write_text(work / "transfer_study.md", markdown(table, header))
    print(markdown(table, header))


if __name__ == "__main__":
    main()
