"""Series networks and the series task end to end: variable-length batches, order, transfer
of the slice encoder, and a tiny synth → series → train → evaluate → predict run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.config import ModelSection
from pipeline.models.networks import architecture, build_network
from pipeline.models.series_nets import load_encoder, slice_weights


def small_arch(name: str, **kw: object) -> dict:
    cfg = ModelSection(name=name, depth=2, base_width=4, dropout=0.0, **kw)  # type: ignore[arg-type]
    return architecture(cfg, 16, 1, 1)


@pytest.mark.parametrize("pooling", ["attention", "mean", "last"])
@pytest.mark.parametrize("rnn", ["gru", "lstm"])
def test_variable_length_batch_equals_one_at_a_time(pooling: str, rnn: str) -> None:
    torch.manual_seed(0)
    net = build_network(small_arch("cnn_rnn", rnn=rnn, rnn_pooling=pooling)).eval()
    lengths = [5, 2, 4]
    series = [torch.randn(n, 1, 16, 16) for n in lengths]
    batch = torch.full((3, 6, 1, 16, 16), float("nan"))
    for i, s in enumerate(series):
        batch[i, : len(s)] = s
    with torch.no_grad():
        together = net(batch)
        alone = torch.stack([net(s[None])[0] for s in series])
    assert torch.allclose(together, alone, atol=1e-5)
    shares = slice_weights(net, batch.numpy())
    assert shares.shape == (3, 6)
    bias = float(net.head.bias[0])
    assert np.allclose(shares.sum(axis=1), together.numpy() - bias, atol=1e-4)  # exact split
    assert (shares[1, 2:] == 0).all()  # padding never contributes


def test_cnn3d_accepts_volumes() -> None:
    torch.manual_seed(0)
    net = build_network(small_arch("cnn3d")).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 8, 1, 16, 16))
    assert out.shape == (2,) and torch.isfinite(out).all()
    assert slice_weights(net, np.zeros((1, 8, 1, 16, 16), np.float32)) is None


def test_slice_encoder_takes_classifier_weights() -> None:
    arch2d = architecture(ModelSection(depth=2, base_width=4), 16, 1, 1)
    classifier = build_network(arch2d)
    series = build_network(small_arch("cnn_rnn"))
    loaded = load_encoder(series, classifier.state_dict())
    assert loaded == sum(1 for k in classifier.state_dict() if k.startswith("features."))
    own = series.state_dict()
    for key, value in classifier.state_dict().items():
        if not key.startswith("features."):
            continue
        mine = own["encoder." + key[9:]]
        if mine.shape != value.shape:  # first conv: 3 input channels (slice_context 1)
            assert mine.shape[1] == 3 * value.shape[1]
            assert torch.equal(mine[:, :1], value)  # the slice itself (then its differences)
            assert not mine[:, 1:].any()
        else:
            assert torch.equal(mine, value)


@pytest.mark.slow
def test_series_task_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Synth 24 series → series stage → train cnn_rnn (2 epochs) → evaluate → predict; the
    trained recurrent model's output for a positive series changes when its slices are
    shuffled."""
    import yaml

    from pipeline.baselines import stage as baseline
    from pipeline.config import load_params
    from pipeline.data import series_stage, synth_series
    from pipeline.evaluation import evaluate
    from pipeline.models.networks import load_model, predict
    from pipeline.serving import predict as serve
    from pipeline.training import train

    monkeypatch.chdir(tmp_path)
    root = Path(__file__).parents[2]
    raw = yaml.safe_load((root / "params.yaml").read_text())
    Path("params.yaml").write_text(yaml.safe_dump(raw))
    params = load_params(
        "params.yaml",
        {
            "synth.series_patients": 24,
            "synth.series_image_size": 32,
            "task.kind": "series_classification",
            "model.name": "cnn_rnn",
            "model.base_width": 4,
            "model.depth": 2,
            "series.image_size": 32,
            "series.slices": 6,
            "train.max_epochs": 2,
            "train.batch_size": 8,
            "train.use_tuned_params": False,
            "evaluate.bootstrap_iterations": 20,
            "baseline.search": False,
            "base.secret_key_path": str(tmp_path / "key"),
        },
    )
    synth_series.write_cohort(params.synth, Path("data/synthetic/series"))
    built = series_stage.run(params, series_stage.Paths.from_params(params))
    assert built.summary_doc["series"] == 24 and built.summary_doc["shape"] == [6, 1, 32, 32]
    index = {
        s: pd.read_parquet(f"data/series/preprocessed/{s}_index.parquet")
        for s in ("train", "val", "test")
    }
    patients = [set(i["patient_id"]) for i in index.values()]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    train.run(params, train.Paths.from_params(params))
    baseline.run(params, baseline.Paths.from_params(params))
    result = evaluate.run(params, evaluate.Paths.from_params(params))
    metrics = result.metrics["cnn"]
    assert {
        "test_auc",
        "test_auc_ci_low",
        "test_sensitivity",
        "test_specificity",
        "test_tp",
    } <= set(metrics)
    assert metrics["test_tp"] + metrics["test_fn"] + metrics["test_tn"] + metrics["test_fp"] == len(
        index["test"]
    )

    net, meta = load_model(Path(params.train.out_dir))
    assert meta["architecture"]["name"] == "cnn_rnn"
    x = np.load("data/series/preprocessed/train_x.npy")
    pos = int(np.flatnonzero(index["train"]["label"].to_numpy() == 1)[0])
    volume = x[pos : pos + 1]
    shuffled = volume[:, np.random.default_rng(0).permutation(volume.shape[1])]
    assert abs(float(predict(net, meta, volume)[0]) - float(predict(net, meta, shuffled)[0])) > 1e-4

    out = tmp_path / "preds.csv"
    done = serve.run(
        params,
        serve.Paths(
            str(Path(params.train.out_dir).resolve()), Path("data/synthetic/series/dicom"), out
        ),
    )
    table = pd.read_csv(out)
    assert done.scored == 24 and (table["status"] == "scored").sum() == 24
    assert done.threshold == pytest.approx(float(meta["threshold"]) if "threshold" in meta else 0.5)
    assert table["top_slice"].between(1, table["n_slices"]).all()
    assert table["top_slice_file"].str.contains("PA0000").all()  # a path: local output only
