"""The model card written at register: its content against the run and files it describes."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pipeline import catalog
from pipeline.registry import register
from tests.model.eval_fixtures import (
    log_training_run,
    make_preprocessed,
    mlflow_env,
    params_for,
    save_cnn,
    train_tiny_cnn,
)

METRICS = {
    "test_auc": 0.8731,
    "test_auc_ci_low": 0.7912,
    "test_auc_ci_high": 0.9388,
    "test_sensitivity": 0.8125,
    "test_specificity": 0.7778,
    "test_brier": 0.1432,
    "threshold": 0.4321,
    "n_test": 48,
}
QA_META = {
    "flagged": {"train": 3, "val": 1, "test": 0},
    "excluded": 3,
    "action": "exclude",
    "warnings": ["cluster 1 (20 images) is 100% site SITE-0a1b2c3d: the model may learn the site"],
}


@pytest.fixture(scope="module")
def card_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("card")
    data = make_preprocessed(root / "data")
    with mlflow_env(root):
        model = save_cnn(
            train_tiny_cnn(data, steps=5), root / "model", transfer="models:/radops-ae/3 encoder"
        )
        params = params_for(
            root,
            base={"registered_model_name": "radops-card-test"},
            qa={"out_dir": str(root / "qa")},
            evaluate={"out_dir": str(root / "reports"), "threshold_method": "youden"},
        )
        (root / "qa").mkdir()
        (root / "qa" / catalog.QA_META_FILE).write_text(json.dumps(QA_META))
        yield {"root": root, "data": data, "model": model, "params": params}


def _register(env: dict[str, Any], tag: str) -> tuple[dict[str, Any], register.Paths]:
    root, params = env["root"], env["params"]
    cnn = root / f"cnn-{tag}"
    shutil.copytree(env["model"], cnn)
    reports = root / "reports"
    reports.mkdir(exist_ok=True)
    (reports / "metrics_cnn.json").write_text(json.dumps(METRICS))
    pd.DataFrame(
        {"model": ["cnn", "cnn"], "attribute": ["site", "site"],
         "group": ["SITE-0a1b2c3d", "SITE-4e5f6a7b"], "n": [20, 28], "auc": [0.91, 0.84]}
    ).to_csv(reports / catalog.SUBGROUPS_FILE, index=False)  # fmt: skip
    log_training_run(params, cnn)
    paths = register.Paths(cnn_dir=cnn, reports_dir=reports, out_dir=root / f"registry-{tag}")
    register.run(params, paths)
    return json.loads((paths.out_dir / catalog.REGISTRATION_FILE).read_text()), paths


def test_model_card_describes_its_run(card_env: dict[str, Any]) -> None:
    from mlflow.tracking import MlflowClient

    with mlflow_env(card_env["root"]):
        reg, paths = _register(card_env, "first")
        card = (paths.reports_dir / catalog.MODEL_CARD).read_text()
        assert (paths.out_dir / catalog.MODEL_CARD).read_text() == card
        assert f"version {reg['version']}" in card and reg["run_id"] in card
        # data: counts per split and site from the preprocessed indexes the model used
        for split in ("train", "val", "test"):
            index = pd.read_parquet(card_env["data"] / f"{split}_index.parquet")
            assert f"{split} {len(index)}" in card
            for site, n in index["site"].value_counts().items():
                row = next(line for line in card.splitlines() if f"| site | {site} |" in line)
                assert f" {n} " in row
        assert "| label | 0 |" in card and "| label | 1 |" in card
        assert "**3 training images excluded**" in card and "may learn the site" in card
        # training: hyperparameters and the transferred weights named in the model meta
        assert "lr 0.02" in card and "optimizer adam" in card
        assert "transfer: models:/radops-ae/3 encoder" in card
        # evaluation: every metric with its CI, the threshold and how it was chosen
        assert "| test_auc | 0.8731 | 0.7912–0.9388 |" in card
        assert "| test_brier | 0.1432 |" in card and "Brier score 0.1432" in card
        assert "Operating threshold 0.4321" in card and "Youden" in card
        assert "| cnn | site | SITE-4e5f6a7b | 28 | 0.84 |" in card
        assert "No champion at register time" in card
        # CLAIM 2024: machine-filled items ticked, the rest left for a human
        assert "- [x] **auto** Data partitions" in card
        assert "- [ ] **human** Ground truth" in card
        # the registry version links to the card, logged to the training run
        client = MlflowClient()
        version = client.get_model_version(reg["name"], reg["version"])
        assert f"Model card: {reg['model_card']}" in version.description
        logged = client.list_artifacts(reg["run_id"], "model_card")
        assert [Path(f.path).name for f in logged] == [f"model_card_v{reg['version']}.md"]
        local = client.download_artifacts(reg["run_id"], logged[0].path, str(card_env["root"]))
        assert Path(local).read_text() == card


def test_model_card_names_the_champion_it_will_face(card_env: dict[str, Any]) -> None:
    from mlflow.tracking import MlflowClient

    with mlflow_env(card_env["root"]):
        first, _ = _register(card_env, "champ")
        MlflowClient().set_registered_model_alias(first["name"], "champion", first["version"])
        second, paths = _register(card_env, "next")
        card = (paths.reports_dir / catalog.MODEL_CARD).read_text()
        assert f"version {first['version']} with test_auc 0.8731" in card
        assert "decision" in card and "radops promote" in card
        assert int(second["version"]) > int(first["version"])
