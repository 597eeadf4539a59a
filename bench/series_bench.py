"""``make bench`` figures of the series task (``task.kind: series_classification``).

* Peak memory (RSS) of ``radops train`` for one epoch at batch size 4, for ``cnn_rnn`` and
  ``cnn3d`` (the process's whole peak: Python, torch, MLflow logging and the epoch).
* Series data loading: one training epoch fed by the DataModule over the memory-mapped
  volumes against the same epoch over batch tensors built in memory beforehand (the image
  figure's method, ``bench.training.data_path``), target ≤ 1.2×.

Runs last: it (re)builds the project's series folder with ``radops series`` (in ``--quick``
mode after ``radops synth`` with 16 series patients, so the tiny project has a split; the two
``radops train`` memory runs are skipped there).
"""

from __future__ import annotations

from pathlib import Path

from bench.harness import Ctx, Figure, run_proc

SERIES = ["-S", "task.kind=series_classification"]


def fig_series(ctx: Ctx) -> list[Figure]:
    from bench import training
    from pipeline.config import load_params

    if ctx.quick:
        run_proc(ctx, ["radops", "synth", "-S", "synth.series_patients=16"], "series-synth")
        synth_set = ["-S", "synth.series_patients=16"]
    else:
        synth_set = []
    stage = run_proc(ctx, ["radops", "series", *SERIES, *synth_set], "series-stage")
    figures = [
        Figure.info(
            "series stage (ingest, assembly, volumes)",
            stage.seconds,
            "s",
            peak_rss_mib=round(stage.maxrss_mb, 1),
        )
    ]
    for model in () if ctx.quick else ("cnn_rnn", "cnn3d"):  # quick: ~40 s each, skipped
        proc = run_proc(
            ctx,
            [
                "radops",
                "train",
                *SERIES,
                "-S",
                f"model.name={model}",
                "-S",
                "train.max_epochs=1",
                "-S",
                "train.batch_size=4",
                "-S",
                "train.use_tuned_params=false",
                "-S",
                f"train.out_dir=models/series_{model}",
                "-S",
                f"train.checkpoint_dir=models/series_{model}_ckpt",
            ],
            f"series-train-{model}",
        )
        figures.append(
            Figure.info(
                f"peak RSS: series training epoch, {model}, batch 4",
                proc.maxrss_mb,
                "MiB",
                s=round(proc.seconds, 1),
            )
        )
    params = load_params(
        ctx.project / "params.yaml",
        {"task.kind": "series_classification", "model.name": "cnn_rnn", "train.batch_size": 4},
    )
    data_dir = Path(ctx.project) / "data/series/preprocessed"
    r = training.data_path(params, data_dir, repeats=2 * ctx.repeats - 1)
    figures.append(
        Figure.check(
            "series data path: DataModule epoch / in-memory volumes epoch (cnn_rnn, batch 4)",
            r["datamodule_epoch_s"] / r["in_memory_epoch_s"],
            "<=",
            1.2,
            "×",
            **{k: round(v, 4) for k, v in r.items()},
        )
    )
    return figures
