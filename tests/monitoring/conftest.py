"""A synthetic cohort with planted bad scans, run through the real data stages and QA once.

``qa_cohort``: 120 patients at 64×64 (≈ 400 images), 10 planted bad scans (two of each kind),
synth → ingest → split → preprocess → qa (``qa.action: exclude``, contamination 0.04), with an
SQLite MLflow store under the root. Read-only: tests write their own outputs elsewhere.
``batches``: two new DICOM batches of 15 patients: one from the same generator (another
seed), one from a new site (other manufacturer, finer pixel spacing, much heavier noise).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import pytest

from tests.conftest import build_params

PLANTED = 10
CONTAMINATION = 0.04


class QACohort(NamedTuple):
    root: Path
    params: Any
    result: Any  # QAResult
    truth: pd.DataFrame  # planted.csv with each file's source_id


@pytest.fixture(scope="session")
def qa_cohort(tmp_path_factory: pytest.TempPathFactory) -> QACohort:
    from pipeline.data import ingest, preprocess, split, synth
    from pipeline.monitoring import qa

    root = tmp_path_factory.mktemp("qa_cohort")
    params = build_params(
        root,
        synth={"patients": 120, "image_size": 64, "seed": 7, "plant_bad_scans": PLANTED},
        qa={"contamination": CONTAMINATION, "action": "exclude"},
    )
    synth.run(params, synth.Paths.from_params(params))
    ingested = ingest.run(params, ingest.Paths.from_params(params))
    split.run(params, split.Paths.from_params(params))
    preprocess.run(params, preprocess.Paths.from_params(params))
    result = qa.run(params, qa.Paths.from_params(params))
    truth = pd.read_csv(root / "data/synthetic/planted.csv")
    by_path = {path: source for source, path in ingested.sources.items()}
    truth["source_id"] = truth["path"].map(by_path)
    return QACohort(root, params, result, truth)


@pytest.fixture(scope="session")
def batches(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from pipeline.data import synth

    root = tmp_path_factory.mktemp("batches")
    out: dict[str, Path] = {}
    for name, new_site in (("same", False), ("new_site", True)):
        params = build_params(
            root, synth={"patients": 15, "image_size": 64, "seed": 99, "new_site": new_site}
        )
        synth.run(params, synth.Paths(out_dir=root / name))
        out[name] = root / name / "dicom"
    return out
