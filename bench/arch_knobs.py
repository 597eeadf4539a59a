"""Compare issue 15's model knobs (family, augmentations, label smoothing, mixup, warm-up) on a
preprocessed cohort: one ``train`` run per setting with the default params otherwise, then
validation AUC (best epoch), test AUC and seconds per epoch (train + validation, 1 thread).

    python -m bench.arch_knobs DATA_DIR OUT_DIR [NAME ...]

DATA_DIR holds ``{train,val,test}_x.npy`` etc. (``data/preprocessed`` after ``dvc repro
preprocess``); results are appended to ``OUT_DIR/results.jsonl`` as each run ends.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

SETTINGS: dict[str, dict[str, Any]] = {
    "cnn": {},
    "resnet": {"model.name": "resnet"},
    "densenet": {"model.name": "densenet"},
    "resnet_small": {"model.name": "resnet", "model.depth": 2, "model.base_width": 8},
    "resnet_small_aug": {
        "model.name": "resnet",
        "model.depth": 2,
        "model.base_width": 8,
        "train.augmentation.shift": 0.05,
        "train.augmentation.noise": 0.05,
    },
    "cnn_mild_aug": {
        "train.augmentation.shift": 0.05,
        "train.augmentation.rotation_deg": 10.0,
        "train.augmentation.elastic": 0.1,
        "train.augmentation.noise": 0.05,
    },
    "cnn_shift": {"train.augmentation.shift": 0.05},
    "cnn_rot10": {"train.augmentation.rotation_deg": 10.0},
    "cnn_elastic": {"train.augmentation.elastic": 0.1},
    "cnn_noise": {"train.augmentation.noise": 0.05},
    "cnn_smooth": {"train.label_smoothing": 0.1},
    "cnn_mixup": {"train.mixup_alpha": 0.2},
    "cnn_warmup": {"train.warmup_epochs": 2},
    "cnn_focal": {"train.loss": "focal"},
    "cnn_input48": {"model.input_size": 48},
    "cnn_seed1": {"base.seed": 1},
    "cnn_seed2": {"base.seed": 2},
    "resnet_seed1": {"model.name": "resnet", "base.seed": 1},
    "cnn_noise_seed1": {"train.augmentation.noise": 0.05, "base.seed": 1},
    "cnn_smooth_seed1": {"train.label_smoothing": 0.1, "base.seed": 1},
    "cnn_mixup_seed1": {"train.mixup_alpha": 0.2, "base.seed": 1},
    "cnn_warmup_seed1": {"train.warmup_epochs": 2, "base.seed": 1},
    "cnn_focal_seed1": {"train.loss": "focal", "base.seed": 1},
    "cnn_mild_aug_seed1": {
        "train.augmentation.shift": 0.05,
        "train.augmentation.rotation_deg": 10.0,
        "train.augmentation.elastic": 0.1,
        "train.augmentation.noise": 0.05,
        "base.seed": 1,
    },
    "densenet_seed1": {"model.name": "densenet", "base.seed": 1},
    "resnet_small_seed1": {
        "model.name": "resnet",
        "model.depth": 2,
        "model.base_width": 8,
        "base.seed": 1,
    },
}


def run_one(name: str, data_dir: Path, out: Path) -> dict[str, Any]:
    import numpy as np
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    from pipeline.config import Params, with_updates
    from pipeline.models.networks import load_model, predict
    from pipeline.training import train

    overrides = SETTINGS[name]
    work = out / name
    sections: dict[str, dict[str, Any]] = {
        "base": {"tracking_uri": f"sqlite:///{out / 'mlflow.db'}", "experiment_name": "knobs"},
        "train": {
            "out_dir": str(work / "model"),
            "checkpoint_dir": str(work / "ckpt"),
            "accelerator": "cpu",
            "devices": 1,
        },
    }
    params = with_updates(Params(), **sections)
    hyper = {k: v for k, v in overrides.items() if not k.startswith("base.")}
    tr, model = train.apply_overrides(params.train, params.model, hyper)
    base = params.base.model_dump() | {
        k.split(".", 1)[1]: v for k, v in overrides.items() if k.startswith("base.")
    }
    params = with_updates(params, train=tr.model_dump(), model=model.model_dump(), base=base)
    paths = train.Paths(data_dir, work / "none.json", work / "model", work / "ckpt")
    start = time.perf_counter()
    result = train.run(params, paths)
    seconds = time.perf_counter() - start
    network, meta = load_model(work / "model")
    x = np.load(data_dir / "test_x.npy")
    y = pd.read_parquet(data_dir / "test_index.parquet")["label"].to_numpy()
    test_auc = float(roc_auc_score(y, predict(network, meta, x)))
    return {
        "setting": name,
        "overrides": overrides,
        "val_auc": round(result.best_value, 4),
        "test_auc": round(test_auc, 4),
        "best_epoch": result.best_epoch,
        "epochs": result.epochs_run,
        "s_per_epoch": round(seconds / max(1, result.epochs_run), 2),
    }


def main(argv: list[str]) -> None:
    data_dir, out = Path(argv[0]), Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for name in argv[2:] or list(SETTINGS):
        row = run_one(name, data_dir, out)
        print(json.dumps(row), flush=True)
        with (out / "results.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
