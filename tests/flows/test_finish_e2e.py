"""End to end with the finishing steps on: a 2-seed ensemble, temperature calibration and
flip TTA through the real Prefect flow, register, promote and ``radops predict``."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.flows.conftest import make_project

pytestmark = pytest.mark.slow

FINISH = {"train.ensemble_size": 2, "train.calibration": "temperature", "evaluate.tta": "flips"}


def test_ensemble_calibration_tta_end_to_end(tmp_path: Path, prefect_harness: None) -> None:
    import mlflow
    import pandas as pd
    import torch

    from flows.pipeline_flow import pipeline_flow
    from pipeline import catalog, tasks
    from pipeline.cli import run_stage
    from pipeline.config import load_params
    from pipeline.models.networks import load_model, predict

    root = make_project(tmp_path / "project", FINISH)
    result = pipeline_flow("params.yaml", None, True, str(root))
    assert {"train", "evaluate", "register"} <= set(result["stages_run"])
    assert result["promotion"]["alias"] == "champion"

    net, meta = load_model(root / "models" / "cnn")
    assert meta["architecture"]["ensemble_size"] == 2
    temperature = float(meta["output"]["temperature"])
    metrics = json.loads((root / "reports" / "metrics_cnn.json").read_text())
    assert {"test_ece", "test_ece_uncalibrated", "test_ppv_at_prevalence"} <= set(metrics)
    assert "evaluate.tta: flips" in (root / "reports" / "evaluation.md").read_text()

    with contextlib.chdir(root):
        params = load_params(Path("params.yaml"))
        x = np.load(catalog.split_file(tasks.model_data_dir(params), "test", catalog.IMAGES_SUFFIX))
        uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        served = mlflow.pyfunc.load_model("models:/radops-classifier@champion")
        # the ensemble's calibrated probabilities, by hand from its two members
        member_nets: Any = net.members
        with torch.inference_mode():
            members = [m(torch.from_numpy(x)).double().numpy() for m in member_nets]
        mean_p = np.mean([1 / (1 + np.exp(-z)) for z in members], axis=0)
        want = 1 / (1 + np.exp(-np.log(mean_p / (1 - mean_p)) / temperature))
        plain = served.predict(x, params={"tta": "none"})
        np.testing.assert_allclose(plain, want, rtol=1e-4, atol=1e-6)
        # served by default as evaluated (evaluate.tta flips, model.json "inference")
        assert meta["inference"]["tta"] == "flips"
        np.testing.assert_allclose(served.predict(x), predict(net, meta, x, tta="flips"), rtol=1e-5)

        cohort = tmp_path / "new"
        run_stage(
            "synth", Path("params.yaml"), ["synth.patients=3", "synth.seed=7"], out_dir=cohort
        )
        out = tmp_path / "preds.csv"
        scored: dict[str, Any] = {}
        for tta in ("flips", "none"):
            predicted = run_stage(
                "predict",
                Path("params.yaml"),
                None,
                {"evaluate.tta": tta},
                model_uri="models:/radops-classifier@champion",
                input_dir=cohort / "dicom",
                out_csv=out,
            )
            table = pd.read_csv(out)
            scored[tta] = table.loc[table["status"] == "scored", "probability"].to_numpy()
            assert predicted.scored == len(scored[tta]) > 0
    assert np.all((scored["flips"] >= 0) & (scored["flips"] <= 1))
    assert not np.allclose(scored["flips"], scored["none"])  # predict applied the TTA
