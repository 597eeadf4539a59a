"""``make gpu-check``: the same training on ``train.accelerator: auto`` (a GPU when there is
one) and on the CPU, in about 5 minutes at most.

    python -m bench.gpu_check [--quick] [--epochs N] [--work bench/work/gpu-check]

A throw-away project (``bench.harness.prepare``: the default synthetic cohort, or the tiny
one with ``--quick``) is built under WORK and ``dvc repro preprocess`` runs there. Then the
classification CNN of ``params.yaml`` trains for the same N epochs (no early stopping, same
seed) on the CPU and on the accelerator ``auto`` resolves to, with ``train.precision: auto``
(bf16-mixed / 16-mixed on CUDA, 32-true on CPU) and the loaders ``hardware.loader_settings``
picks. Printed: epochs per second on each (the first epoch, with its warm-up, left out when
there are more), peak GPU memory, and the test AUC of the GPU model against the CPU model's
patient-level bootstrap CI. Without a CUDA device the CPU part runs and one line says the GPU
part was skipped. Figures go to ``WORK/gpu_check.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WORK = REPO / "bench" / "work" / "gpu-check"
SKIP_LINE = "gpu-check: GPU part skipped: no CUDA device (torch.cuda.is_available() is False)"


def _epoch_timer() -> Any:
    from lightning.pytorch.callbacks import Callback

    class EpochTimer(Callback):
        """Wall seconds of each training epoch (validation included)."""

        def __init__(self) -> None:
            self.seconds: list[float] = []
            self._start = 0.0

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            self._sync(pl_module)
            self._start = time.perf_counter()

        def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            self._sync(pl_module)
            self.seconds.append(time.perf_counter() - self._start)

        @staticmethod
        def _sync(pl_module: Any) -> None:
            import torch

            if pl_module.device.type == "cuda":
                torch.cuda.synchronize(pl_module.device)

    return EpochTimer()


def held_out_auc(module: Any, data_dir: Path, params: Any, level: float = 0.95) -> dict[str, float]:
    """Test AUC of ``module`` (on the CPU, float32) with its patient-level bootstrap CI."""
    import numpy as np
    import torch

    from pipeline.evaluation.evaluate import load_targets
    from pipeline.metrics.stats import bootstrap_auc_ci

    targets, x, index = load_targets(module.task, data_dir, "test")
    net = module.cpu().eval()
    with torch.inference_mode():
        logits = [net(torch.from_numpy(np.array(b, dtype=np.float32))) for b in _chunks(x)]
    prob = torch.sigmoid(torch.cat(logits).float().ravel()).numpy()
    groups = index["patient_id"].to_numpy() if "patient_id" in index else None
    n_iter = max(100, params.evaluate.bootstrap_iterations)
    auc, low, high = bootstrap_auc_ci(targets.values, prob, groups, n_iter, level, seed=0)
    return {"test_auc": auc, "ci_low": low, "ci_high": high}


def _chunks(x: Any, size: int = 256) -> Any:
    for i in range(0, len(x), size):
        yield x[i : i + size]


def fit(params: Any, data_dir: Path, accelerator: str, epochs: int, work: Path) -> dict[str, Any]:
    """Train the configured CNN for ``epochs`` epochs on ``accelerator``; its figures."""
    import torch

    from bench.training import new_module
    from pipeline.training.callbacks import EpochHistory, silence_known_noise
    from pipeline.training.datasets import make_datamodule
    from pipeline.training.hardware import loader_settings, resolve_precision
    from pipeline.training.lit_module import make_trainer
    from pipeline.training.settings import set_threads

    silence_known_noise()
    cfg = params.train.model_copy(
        update={"accelerator": accelerator, "devices": 1, "strategy": "auto"}
    )
    set_threads(cfg)
    seed = params.base.seed
    data = make_datamodule(data_dir, cfg, seed)
    module = new_module(cfg, data, seed, params.model)
    timer = _epoch_timer()
    cuda = accelerator != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer = make_trainer(
        cfg,
        max_epochs=epochs,
        callbacks=[EpochHistory(log_to_mlflow=False), timer],
        checkpointing=False,
        root_dir=str(work / accelerator),
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    fit_s = time.perf_counter() - start
    steady = timer.seconds[1:] or timer.seconds
    loader = loader_settings(cfg)
    out: dict[str, Any] = {
        "accelerator": type(trainer.accelerator).__name__,
        "precision": resolve_precision(cfg.precision, cfg.accelerator),
        "epochs": len(timer.seconds),
        "epochs_per_s": 1.0 / statistics.median(steady),
        "fit_s": fit_s,
        "torch_threads": torch.get_num_threads(),
        "loader_workers": loader.num_workers,
        "pin_memory": loader.pin_memory,
    }
    if cuda:
        out["peak_gpu_memory_mib"] = torch.cuda.max_memory_allocated() / 1024**2
        out["device_name"] = torch.cuda.get_device_name()
    return out | held_out_auc(module, data_dir, params)


def measure(params: Any, data_dir: Path, epochs: int, work: Path) -> dict[str, Any]:
    """The CPU run, then (with a CUDA device) the ``auto`` run and the comparison."""
    import torch

    # Early stopping is not part of the Trainer here; each run trains exactly `epochs`.
    result: dict[str, Any] = {"cpu": fit(params, data_dir, "cpu", epochs, work)}
    if not torch.cuda.is_available():
        result["gpu"] = None
        result["skipped"] = SKIP_LINE
        return result
    gpu = fit(params, data_dir, "auto", epochs, work)
    cpu = result["cpu"]
    result["gpu"] = gpu
    result["speedup_epochs_per_s"] = gpu["epochs_per_s"] / cpu["epochs_per_s"]
    result["gpu_auc_within_cpu_ci"] = bool(cpu["ci_low"] <= gpu["test_auc"] <= cpu["ci_high"])
    return result


def report(result: dict[str, Any]) -> str:
    def run_line(name: str, r: dict[str, Any]) -> str:
        line = (
            f"gpu-check: {name:<4} {r['accelerator']} {r['precision']}: "
            f"{r['epochs_per_s']:.2f} epochs/s ({r['epochs']} epochs, {r['fit_s']:.1f} s), "
            f"test AUC {r['test_auc']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
        )
        if "peak_gpu_memory_mib" in r:
            line += f", peak GPU memory {r['peak_gpu_memory_mib']:.0f} MiB ({r['device_name']})"
        return line

    lines = [run_line("CPU", result["cpu"])]
    if result["gpu"] is None:
        lines.append(result["skipped"])
    else:
        lines.append(run_line("GPU", result["gpu"]))
        verdict = "PASS" if result["gpu_auc_within_cpu_ci"] else "MISS"
        lines.append(
            f"gpu-check: epochs/s GPU / CPU {result['speedup_epochs_per_s']:.1f}×; "
            f"GPU test AUC within the CPU run's 95% CI: {verdict}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from bench.harness import prepare
    from bench.scaling import ensure_data

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tiny cohort (CI)")
    parser.add_argument("--epochs", type=int, default=None, help="default 5 (--quick: 2)")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    ctx = prepare(args.work.resolve(), args.quick)
    ensure_data(ctx)
    epochs = args.epochs or (2 if args.quick else 5)
    result = measure(ctx.params(), ctx.preprocessed, epochs, ctx.tmp)
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["quick"] = args.quick
    out = ctx.work / "gpu_check.json"
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(report(result))
    print(f"gpu-check: written {out} ({result['seconds']:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
