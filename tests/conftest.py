"""Root fixtures, shared by every test package.

``make_params(root, **sections)``
    The shipped defaults (``Params()`` equals ``params.yaml``) with every output folder,
    pseudonym key, MLflow store and Optuna storage under ``root``, and one synthetic series
    patient (``synth.series_patients``; set it to test the series cohort); keyword arguments
    update sections, e.g.
    ``make_params(tmp_path, synth={"patients": 4}, ingest={"workers": 2})``.
    (tests/model overrides this fixture name with its own factory.)

``small_cohort``
    A synthetic DICOM cohort (16 patients, 64×64 pixels), written once per session by the real
    ``synth`` stage. Read-only: copy it (``shutil.copytree``) before changing anything.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from pipeline import catalog
from pipeline.config import Params, with_updates
from tests.stack.fixtures import running_stack  # noqa: F401  (tests/stack and tests/ui share it)

# section -> its path fields, relative to the root handed to build_params.
_PATH_FIELDS: dict[str, dict[str, str]] = {
    "data": {"dicom_dir": "data/synthetic/dicom", "labels_csv": "data/synthetic/labels.csv"},
    "synth": {"out_dir": "data/synthetic"},
    "ingest": {"out_dir": "data/ingested"},
    "validate": {"out_dir": "data/validation"},
    "split": {"out_dir": "data/split"},
    "plan": {"out_dir": "data/plan"},
    "preprocess": {"out_dir": "data/preprocessed"},
    "series": {
        "out_dir": "data/series",
        "dicom_dir": "data/synthetic/series/dicom",
        "labels_csv": "data/synthetic/series/labels.csv",
    },
    "train": {"out_dir": "models/cnn", "checkpoint_dir": "models/checkpoints"},
    "tune": {"out_dir": "models/tune"},
    "baseline": {"out_dir": "models/baseline"},
    "evaluate": {"out_dir": "reports"},
    "register": {"out_dir": "models/registry"},
    "qa": {"out_dir": "data/qa"},
    "monitor": {"out_dir": "reports/monitor"},
}


@pytest.fixture(autouse=True)
def _mlflow_uri_stays_in_its_test() -> Any:
    """``mlflow.set_tracking_uri`` also sets ``MLFLOW_TRACKING_URI`` in ``os.environ``, which
    radops honours over ``base.tracking_uri``: without this, one test's store would receive
    the next tests' runs (order-dependent failures)."""
    import os
    import sys

    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID")
    saved = {k: os.environ.get(k) for k in keys}
    yield
    if "mlflow" in sys.modules:
        from mlflow.tracking import fluent
        from mlflow.tracking._model_registry import utils as registry_utils
        from mlflow.tracking._tracking_service import utils as tracking_utils

        # back to "not set": the environment (restored below) decides
        tracking_utils._tracking_uri = None
        registry_utils._registry_uri = None
        # an experiment id set in one test's store means nothing in the next test's store
        fluent._active_experiment_id = None
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


# The only settings (besides paths) in which build_params departs from the shipped defaults.
# synth also writes the series cohort beside the images (default 160 patients: most of synth's
# time, and no test built on these params reads it): one series patient unless a test sets
# series_patients. The image cohort's bytes do not depend on it.
TEST_SETTINGS: dict[str, dict[str, Any]] = {"synth": {"series_patients": 1}}


def build_params(root: Path, **sections: dict[str, Any]) -> Params:
    """Default Params with every path under ``root``, then ``sections`` applied on top."""
    root = Path(root)
    updates: dict[str, dict[str, Any]] = {
        name: {key: str(root / rel) for key, rel in fields.items()}
        for name, fields in _PATH_FIELDS.items()
    }
    updates["base"] = {
        "secret_key_path": str(root / ".radops/pseudonym.key"),
        "tracking_uri": f"sqlite:///{root / 'mlruns/mlflow.db'}",
    }
    updates["tune"]["storage"] = f"sqlite:///{root / catalog.OPTUNA_DB}"
    for name, values in TEST_SETTINGS.items():
        updates[name].update(values)
    for name, values in sections.items():
        updates.setdefault(name.rstrip("_"), {}).update(values)
    return with_updates(Params(), **updates)


@pytest.fixture
def make_params() -> Callable[..., Params]:
    """``make_params(root, **sections)``: see :func:`build_params`."""
    return build_params


class SmallCohort(NamedTuple):
    root: Path  # synth output folder
    dicom_dir: Path
    labels_csv: Path
    params: Params  # the params synth ran with (data.* point at this cohort)
    result: Any  # pipeline.data.synth.SynthResult


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory: pytest.TempPathFactory) -> SmallCohort:
    """16 synthetic patients, 64×64 CT slices, written once per test session."""
    from pipeline.data import synth

    base = tmp_path_factory.mktemp("small_cohort")
    root = base / "data/synthetic"
    params = build_params(base, synth={"patients": 16, "image_size": 64, "seed": 7})
    result = synth.run(params, synth.Paths(out_dir=root))
    return SmallCohort(root, root / "dicom", root / "labels.csv", params, result)


SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "MR": "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
    "CR": "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
    "OT": "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
}


def write_dicom(
    path: Path,
    pixels: Any,
    modality: str = "CT",
    transfer_syntax: str = "1.2.840.10008.1.2.1",
    pixel_bytes: bytes | None = None,
    **attrs: Any,
) -> Any:
    """Write a small, valid grey-scale DICOM file (tests craft odd cases with ``attrs``).

    ``pixels``: 2-D (one frame) or 3-D (frames) integer array; its dtype sets Bits Allocated
    and Pixel Representation. ``pixel_bytes`` replaces the pixel data as written (for a
    compressed ``transfer_syntax`` it is encapsulated as one fragment).
    """
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID, generate_uid

    pixels = np.asarray(pixels)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SOP_CLASSES[modality]
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = modality
    ds.PatientName, ds.PatientID = "TESTCASE^PATIENT", "TST000001"
    ds.Manufacturer, ds.InstitutionName = "ACME", "Test Institute"
    ds.PixelSpacing = ["0.5", "0.5"]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.BitsAllocated = ds.BitsStored = pixels.dtype.itemsize * 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    for key, value in attrs.items():
        setattr(ds, key, value)
    data = (
        pixel_bytes
        if pixel_bytes is not None
        else pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    )
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.PixelData = encapsulate([data])
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = data
        ds["PixelData"].VR = "OW" if ds.BitsAllocated > 8 else "OB"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds


def tree_digest(root: Path, skip: tuple[str, ...] = ()) -> str:
    """SHA-256 over every file under ``root`` (relative path and bytes, in path order), the
    relative paths in ``skip`` left out."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix()
        if relative not in skip:
            h.update(relative.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="session", autouse=True)
def _radops_on_path() -> None:
    """DVC stages call `radops` and `dvc`: make sure this interpreter's are found, whichever
    test a pytest-xdist worker runs first."""
    bin_dir = str(Path(sys.executable).parent)
    if bin_dir not in os.environ["PATH"].split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ["PATH"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Group tests for pytest-xdist's ``--dist loadgroup`` (``make test`` runs two workers):
    the tests sharing an expensive session fixture (the PostgreSQL stack, the pipeline flow
    run) stay on one worker, so it is built once; every other module is its own group,
    keeping its module-scoped servers and fixtures on one worker."""
    here = Path(__file__).parent
    shared = ("running_stack", "flow_project")
    for item in items:
        names = getattr(item, "fixturenames", ())
        group = next((n for n in shared if n in names), str(Path(str(item.path)).relative_to(here)))
        item.add_marker(pytest.mark.xdist_group(group))
