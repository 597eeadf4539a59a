"""``make bench``: radops' performance figures, each a ratio against a baseline run here.

    python -m bench.run [--quick] [--out bench/results.json] [--work bench/work]

One throw-away project (``bench.project.make_project``) is built under ``WORK/project`` and
the main README command (``python -m flows.pipeline_flow``) runs there once; its data feed
every other figure. Prefect's state lives in ``WORK/prefect``. Nothing outside WORK changes
but the results file. ``--quick`` shrinks the cohort and every budget (used by the smoke
test); its figures say nothing about the targets.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from bench import scaling
from bench.harness import Ctx, Figure, prepare, run_proc, stages_run, table
from bench.series_bench import fig_series

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WORK = REPO / "bench" / "work"
DEFAULT_OUT = REPO / "bench" / "results.json"


# --------------------------------------------------------------------------- 7. end to end
def fig_end_to_end(ctx: Ctx) -> list[Figure]:
    flow = run_proc(ctx, [sys.executable, "-m", "flows.pipeline_flow"], "flow-full")
    ctx.full_flow_s = flow.seconds
    tuned = json.loads((ctx.project / "models/tune/best_params.json").read_text())
    history = json.loads((ctx.project / "models/cnn/history.json").read_text())
    return [
        Figure.check(
            "end to end: `python -m flows.pipeline_flow`, fresh project",
            flow.seconds,
            "<=",
            360.0,
            "s",
            stages_run=stages_run(flow.output),
            tune_trials=tuned.get("n_trials"),
            tune_pruned=tuned.get("n_pruned"),
            tune_epochs=tuned.get("total_epochs"),
            train_epochs=len(history["epochs"]),
            patients=ctx.params().synth.patients,
        )
    ]


# --------------------------------------------------------------------------- 5. reruns
def fig_reruns(ctx: Ctx) -> list[Figure]:
    assert ctx.full_flow_s, "the full flow must run first"
    flows = [
        run_proc(ctx, [sys.executable, "-m", "flows.pipeline_flow"], f"flow-noop-{i}")
        for i in range(max(1, ctx.repeats - 1))
    ]
    repros = [run_proc(ctx, ["dvc", "repro"], f"repro-noop-{i}") for i in range(ctx.repeats)]
    flow_s = statistics.median(p.seconds for p in flows)
    repro_s = statistics.median(p.seconds for p in repros)
    return [
        Figure.check(
            "no-op `dvc repro` / full run",
            repro_s / ctx.full_flow_s,
            "<=",
            0.02,
            "×",
            noop_s=round(repro_s, 2),
            full_s=round(ctx.full_flow_s, 1),
            stages_rerun=max(stages_run(p.output) for p in repros),
        ),
        Figure.check(
            "no-op pipeline flow / full run",
            flow_s / ctx.full_flow_s,
            "<=",
            0.10,
            "×",
            noop_s=round(flow_s, 2),
            full_s=round(ctx.full_flow_s, 1),
            stages_rerun=max(stages_run(p.output) for p in flows),
        ),
    ]


# --------------------------------------------------------------------------- 6. start-up
def fig_startup(ctx: Ctx) -> list[Figure]:
    radops = str(Path(sys.executable).parent / "radops")
    n = max(3, 2 * ctx.repeats - 1)
    help_s = statistics.median(
        run_proc(ctx, [radops, "--help"], f"radops-help-{i}").seconds for i in range(n)
    )
    bare_s = statistics.median(
        run_proc(ctx, [sys.executable, "-c", "pass"], f"python-pass-{i}").seconds for i in range(n)
    )
    return [
        Figure.check(
            "start-up: `radops --help`",
            help_s,
            "<=",
            1.0,
            "s",
            runs=n,
            python_pass_s=round(bare_s, 3),
            ratio_vs_python_pass=round(help_s / bare_s, 1),
        )
    ]


# --------------------------------------------------------------------------- memory
def fig_memory(ctx: Ctx) -> list[Figure]:
    out = ctx.tmp / "memory"
    ingest = run_proc(ctx, ["radops", "ingest", "--out", str(out / "ingested")], "mem-ingest")
    sets = [f"train.out_dir={out / 'cnn'}", f"train.checkpoint_dir={out / 'ckpt'}"]
    train = run_proc(ctx, ["radops", "train", "-S", sets[0], "-S", sets[1]], "mem-train")
    shutil.rmtree(out, ignore_errors=True)
    return [
        Figure.info("peak RSS: `radops ingest`", ingest.maxrss_mb, "MiB", s=ingest.seconds),
        Figure.info("peak RSS: `radops train`", train.maxrss_mb, "MiB", s=train.seconds),
    ]


# --------------------------------------------------------------------------- 1. ingest
def fig_ingest(ctx: Ctx) -> list[Figure]:
    import inspect

    from bench.ingest_bench import measure

    kwargs = {"work_dir": ctx.tmp} if "work_dir" in inspect.signature(measure).parameters else {}
    r = measure(ctx.dicom_dir, ctx.labels_csv, repeats=ctx.repeats, **kwargs)
    ratio = r["ingest_1w_files_per_s"] / r["bare_files_per_s"]
    speedup = r["ingest_2w_files_per_s"] / r["ingest_1w_files_per_s"]
    common = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()}
    capacity = r.get("parallel_capacity")
    note = {"parallel_capacity": capacity}
    if capacity is not None and capacity < 1.6:
        note["note"] = f"the machine ran only {capacity:.2f} busy loops side by side at full speed"
    return [
        Figure.check(
            "ingest 1 worker (de-id, hashes, every check) / bare dcmread loop",
            ratio,
            ">=",
            0.95,
            "×",
            **common,
        ),
        Figure.check("ingest 2 workers / 1 worker", speedup, ">=", 1.6, "×", **note),
    ]


# --------------------------------------------------------------------------- scaling
def fig_scaling(ctx: Ctx) -> list[Figure]:
    from pipeline.data.deid import load_or_create_key
    from pipeline.data.ingest import ingest_folder

    params = ctx.params()
    big = ctx.work / "scale" / "x4"
    shutil.rmtree(big, ignore_errors=True)
    patients = 4 * params.synth.patients
    run_proc(ctx, ["radops", "synth", "--out", str(big), "--patients", str(patients)], "synth-x4")
    key = load_or_create_key(ctx.project / params.base.secret_key_path)
    cohorts = {"x1": (ctx.dicom_dir, ctx.labels_csv), "x4": (big / "dicom", big / "labels.csv")}
    best: dict[str, tuple[float, int]] = {}
    for i in range(min(ctx.repeats, 2)):
        for name, (dicom, labels) in cohorts.items():
            os.sync()
            out = ctx.tmp / f"scale-{name}-{i}"
            r = ingest_folder(dicom, out, key, labels, workers=1)
            shutil.rmtree(out, ignore_errors=True)
            best[name] = min(best.get(name, (float("inf"), 0)), (r.seconds, r.files_seen))
    (t1, n1), (t4, n4) = best["x1"], best["x4"]
    shutil.rmtree(big.parent, ignore_errors=True)
    per_file = (t4 / t1) / (n4 / n1)
    return [
        Figure.check(
            "ingest scaling 1×→4× cohort: |time per file ratio − 1|",
            abs(per_file - 1),
            "<=",
            0.25,
            "",
            time_ratio=round(t4 / t1, 2),
            files_ratio=round(n4 / n1, 2),
            seconds_x1=round(t1, 2),
            seconds_x4=round(t4, 2),
            time_per_file_ratio=round(per_file, 3),
        )
    ]


# --------------------------------------------------------------------------- 2.–4. training
def fig_data_path(ctx: Ctx) -> list[Figure]:
    from bench import training

    r = training.data_path(ctx.params(), ctx.preprocessed, repeats=2 * ctx.repeats - 1)
    return [
        Figure.check(
            "data path: DataModule epoch / in-memory tensors epoch",
            r["datamodule_epoch_s"] / r["in_memory_epoch_s"],
            "<=",
            1.10,
            "×",
            **{k: round(v, 4) for k, v in r.items()},
        )
    ]


def fig_loop(ctx: Ctx) -> list[Figure]:
    from bench import training

    epochs = 2 if ctx.quick else 5  # ≤ the early-stopping patience: both run every epoch
    repeats = 2 * ctx.repeats - 1  # a 5-epoch run is seconds: 5 pairs steady a shared machine
    r = training.loop_overhead(ctx.params(), ctx.preprocessed, epochs, repeats, ctx.tmp)
    images = r["train_images"] * r["epochs"]  # the same images, epochs and network on both
    detail = {k: round(v, 3) for k, v in r.items()}
    detail |= {"radops_images_per_s": round(images / r["lightning_s"], 1)}
    detail |= {"plain_images_per_s": round(images / r["plain_s"], 1)}
    return [
        Figure.check(
            "training loop: images/s radops (Lightning) / plain PyTorch loop",
            r["plain_s"] / r["lightning_s"],
            ">=",
            0.95,
            "×",
            **detail,
        )
    ]


def fig_seg_loop(ctx: Ctx) -> list[Figure]:
    from bench import seg_training

    epochs = 2 if ctx.quick else 5  # as the classification loop figure
    r = seg_training.loop_overhead(ctx.params(), ctx.preprocessed, epochs, ctx.repeats, ctx.tmp)
    return [
        Figure.check(
            "segmentation training loop (U-Net): Lightning / plain PyTorch",
            r["lightning_s"] / r["plain_s"],
            "<=",
            1.15,
            "×",
            **{k: round(v, 3) for k, v in r.items()},
        )
    ]


def fig_tuning(ctx: Ctx) -> list[Figure]:
    from bench import training

    r = training.pruning(ctx.params(), ctx.preprocessed, ctx.tmp)
    pruned, full = r["pruned"], r["unpruned"]
    detail = {"pruner": r["pruner"], "n_trials": r["n_trials"], "pruned": pruned, "unpruned": full}
    detail["median"] = r["median"]
    return [
        Figure.check(
            "tuning: best val AUC, unpruned − pruned",
            full["best_value"] - pruned["best_value"],
            "<=",
            0.01,
            "AUC",
            **detail,
        ),
        Figure.check(
            "tuning: epochs with pruning / without",
            pruned["total_epochs"] / full["total_epochs"],
            "<=",
            0.60,
            "×",
            pruned_epochs=pruned["total_epochs"],
            unpruned_epochs=full["total_epochs"],
        ),
    ]


# Order: the flow first (it builds the data), subprocess figures, then ingest in-process before
# torch is imported here (forked ingest workers), then the torch figures.
FIGURES: list[tuple[str, Callable[[Ctx], list[Figure]]]] = [
    ("end to end", fig_end_to_end),
    ("reruns", fig_reruns),
    ("start-up", fig_startup),
    ("memory", fig_memory),
    ("ingest", fig_ingest),
    ("scaling", fig_scaling),
    ("data path", fig_data_path),
    ("training loop", fig_loop),
    ("segmentation loop", fig_seg_loop),
    ("tuning", fig_tuning),
    ("parallel tuning", scaling.fig_parallel_tuning),
    ("tracking server", scaling.fig_tracking_server),
    ("ddp", scaling.fig_ddp),
    ("series", fig_series),  # last: it rebuilds the project's series folder
]


def quiet() -> None:
    """Silence a Lightning deprecation warning that says nothing about the figures."""
    import warnings

    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny cohort and budgets (smoke test)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help="run only these figures (by label, e.g. --only 'parallel tuning'); figures that"
        " need the data build it with `dvc repro preprocess` when the end-to-end run is left out",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    quiet()
    ctx = prepare(args.work.resolve(), args.quick)
    figures: list[Figure] = []
    # The scaling rows start servers and worker processes; tests/stack and the DDP and
    # parallel-tuning tests cover their code paths, so the quick smoke run leaves them out
    # (unless named with --only: `--quick --only 'parallel tuning'` is their quick check).
    chosen = [
        (label, fn)
        for label, fn in FIGURES
        if (label in args.only)
        or (not args.only and not (args.quick and fn.__module__ == scaling.__name__))
    ]
    if args.only and "end to end" not in args.only:
        scaling.ensure_data(ctx)  # the data the end-to-end figure would have built
    for label, fn in chosen:
        t0 = time.perf_counter()
        print(f"bench: {label} ...", flush=True)
        try:
            figures += fn(ctx)
        except Exception as exc:
            traceback.print_exc()
            figures.append(Figure(label, None, None, "", False, {"error": repr(exc)[:2000]}))
        print(f"bench: {label} done in {time.perf_counter() - t0:.0f} s", flush=True)
    doc = {
        "quick": args.quick,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "seconds": round(time.perf_counter() - started, 1),
        "figures": [asdict(f) for f in figures],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(table(figures))
    print(f"written: {args.out} ({doc['seconds']:.0f} s in all)")
    return 0 if all(f.value is not None for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
