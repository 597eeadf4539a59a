"""``train.precision: auto`` and the loaders follow the device; the CUDA device is faked."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.config import TrainSection
from pipeline.training import hardware


def fake_cuda(monkeypatch: pytest.MonkeyPatch, available: bool, bf16: bool = True) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)


@pytest.mark.parametrize(
    ("available", "bf16", "accelerator", "expected"),
    [
        (True, True, "auto", "bf16-mixed"),
        (True, False, "auto", "16-mixed"),
        (True, True, "gpu", "bf16-mixed"),
        (True, True, "cpu", "32-true"),  # a GPU in the machine, the run on the CPU
        (False, False, "auto", "32-true"),
        (False, False, "cpu", "32-true"),
    ],
)
def test_auto_precision_resolves_for_the_device(
    monkeypatch: pytest.MonkeyPatch, available: bool, bf16: bool, accelerator: str, expected: str
) -> None:
    fake_cuda(monkeypatch, available, bf16)
    assert hardware.resolve_precision("auto", accelerator) == expected
    assert hardware.resolve_precision("16-mixed", accelerator) == "16-mixed"  # explicit: as is


def test_the_default_is_auto_and_the_trainer_gets_the_resolved_precision(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pipeline.training.lit_module import make_trainer

    fake_cuda(monkeypatch, available=False)
    cfg = TrainSection()
    assert cfg.precision == "auto"
    trainer = make_trainer(cfg, max_epochs=1, callbacks=[], checkpointing=False)
    assert trainer.precision == "32-true"


def test_loaders_pin_memory_and_use_workers_on_a_gpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.training.datasets import make_datamodule

    cfg = TrainSection()  # num_workers: 0
    fake_cuda(monkeypatch, available=False)
    cpu = make_datamodule(Path("unused"), cfg, seed=0)
    assert (cpu.num_workers, cpu.pin_memory) == (0, False)

    fake_cuda(monkeypatch, available=True)
    monkeypatch.setattr(hardware, "usable_cores", lambda: 16)
    gpu = make_datamodule(Path("unused"), cfg, seed=0)
    assert gpu.pin_memory and gpu.num_workers == hardware.MAX_GPU_LOADER_WORKERS
    explicit = hardware.loader_settings(cfg.model_copy(update={"num_workers": 2}))
    assert explicit == hardware.LoaderSettings(2, True)
    forced_cpu = hardware.loader_settings(cfg.model_copy(update={"accelerator": "cpu"}))
    assert forced_cpu == hardware.LoaderSettings(0, False)
