"""Series assembly: slice order from shuffled files (axial, oblique, coronal, multi-frame,
instance-number fallback), every quarantine reason, label rules, patient-grouped split."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pipeline.data import series as S
from pipeline.data.geometry import GEOMETRY_FIELDS


def stack(
    n: int = 8,
    spacing: float = 2.5,
    tilt_deg: float = 0.0,
    coronal: bool = False,
    uid: str = "2.25.1",
    patient: str = "P-1",
    seed: int = 0,
) -> pd.DataFrame:
    """Manifest rows of one contiguous stack, in shuffled order; ``instance`` = true order."""
    t = math.radians(tilt_deg)
    row = np.array([1.0, 0.0, 0.0])
    col = np.array([0.0, 0.0, -1.0]) if coronal else np.array([0.0, math.cos(t), math.sin(t)])
    normal = np.cross(row, col)
    origin = np.array([-100.0, -80.0, -150.0])
    rows = []
    for i in range(n):
        ipp = origin + i * spacing * normal
        rows.append(
            {
                "image_id": f"{uid}.{i}",
                "series_uid": uid,
                "study_uid": "2.25.9",
                "patient_id": patient,
                "label": 0,
                "site": "S",
                "manufacturer": "M",
                "modality": "CT",
                "rows": 64,
                "columns": 64,
                "pixel_spacing_row": 0.7,
                "pixel_spacing_col": 0.7,
                "frame": 0,
                "pixel_sha256": f"{i:064x}",
                "ipp_x": ipp[0],
                "ipp_y": ipp[1],
                "ipp_z": ipp[2],
                "iop_row_x": row[0],
                "iop_row_y": row[1],
                "iop_row_z": row[2],
                "iop_col_x": col[0],
                "iop_col_y": col[1],
                "iop_col_z": col[2],
                "instance_number": float(i + 1),
                "slice_thickness": spacing,
            }
        )
    frame = pd.DataFrame(rows)
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def instances(frame: pd.DataFrame, ordered: S.Ordered) -> list[int]:
    return frame["instance_number"].to_numpy()[ordered.rows].astype(int).tolist()


@pytest.mark.parametrize(
    ("tilt", "coronal", "oblique"), [(0.0, False, False), (20.0, False, True), (0.0, True, True)]
)
def test_order_by_position_along_the_normal(tilt: float, coronal: bool, oblique: bool) -> None:
    frame = stack(10, tilt_deg=tilt, coronal=coronal, seed=3)
    ordered = S.order_slices(frame)
    assert instances(frame, ordered) == list(range(1, 11))
    assert ordered.source == "position" and ordered.oblique is oblique
    assert ordered.spacing_mm == pytest.approx(2.5)
    if coronal:  # every slice at the same z: ordering by z alone could not work
        assert frame["ipp_z"].nunique() == 1


def test_order_falls_back_to_instance_number() -> None:
    frame = stack(6, seed=1)
    frame.loc[2, "ipp_x"] = np.nan
    ordered = S.order_slices(frame)
    assert ordered.source == "instance_number"
    assert instances(frame, ordered) == list(range(1, 7))


def test_multiframe_frames_in_order() -> None:
    frame = stack(5, seed=2).assign(image_id=lambda f: [f"2.25.7.f{i}" for i in range(len(f))])
    frame["frame"] = frame["instance_number"].astype(int) - 1
    ordered = S.order_slices(frame)
    assert frame["frame"].to_numpy()[ordered.rows].tolist() == [0, 1, 2, 3, 4]


def _drop(frame: pd.DataFrame, instance: int) -> pd.DataFrame:
    return frame[frame["instance_number"] != instance].reset_index(drop=True)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda f: f.head(2), S.TOO_FEW),
        (lambda f: f.assign(rows=[64] * (len(f) - 1) + [128]), S.INCONSISTENT_PLANE),
        (lambda f: f.assign(iop_col_y=[1.0] * (len(f) - 1) + [0.9]), S.INCONSISTENT_ORIENTATION),
        (lambda f: f.assign(ipp_x=np.nan, instance_number=np.nan), S.NO_GEOMETRY),
        (lambda f: pd.concat([f, f.head(1).assign(image_id="dup")]), S.DUPLICATE_POSITION),
        (lambda f: _drop(f, 4), S.MISSING_SLICES),
        (
            lambda f: f.assign(ipp_z=f["ipp_z"] + (f["instance_number"] > 4) * 1.2),
            S.INCONSISTENT_SPACING,
        ),
    ],
)
def test_each_quarantine_reason(change, reason: str) -> None:
    frame = change(stack(8)).reset_index(drop=True)
    with pytest.raises(S.Rejected) as caught:
        S.order_slices(frame)
    assert caught.value.reason == reason
    made = S.assemble(pd.concat([frame, stack(8, uid="2.25.2")], ignore_index=True))
    assert made.quarantine[["series_uid", "reason"]].values.tolist() == [["2.25.1", reason]]
    assert made.series["series_uid"].tolist() == ["2.25.2"]  # the good one is kept
    assert set(S.REASONS) >= set(made.quarantine["reason"])


def test_series_labels_by_rule_and_file() -> None:
    assert S.series_label(np.array([0, 0, 1, 0])) == 1
    assert S.series_label(np.array([0, 0, 1, 0]), "majority") == 0
    assert S.series_label(np.array([1, 1, 0]), "majority") == 1
    assert S.series_label(np.array([-1, -1])) == -1
    a = stack(6, uid="2.25.1").assign(label=lambda f: (f["instance_number"] == 3).astype(int))
    made = S.assemble(pd.concat([a, stack(6, uid="2.25.2")], ignore_index=True))
    assert made.series.set_index("series_uid")["label"].to_dict() == {"2.25.1": 1, "2.25.2": 0}
    file = pd.DataFrame({"series_instance_uid": ["orig-2"], "label": [1]})
    relabelled = S.apply_series_labels(made.series, file, {"orig-2": "2.25.2"}.get)
    assert relabelled.set_index("series_uid")["label"].to_dict() == {"2.25.1": 1, "2.25.2": 1}


def test_series_split_keeps_each_patient_in_one_split() -> None:
    from pipeline.errors import LeakageError

    frames = []
    for p in range(30):  # 2 series per patient
        for s in range(2):
            lab = int(p % 2 == 0 and s == 0)
            frames.append(
                stack(4, uid=f"2.25.{p}.{s}", patient=f"P-{p}", seed=p).assign(
                    label=lab,
                    pixel_sha256=lambda f, p=p, s=s: [
                        f"{p:032x}{s:02x}{i:030x}" for i in range(len(f))
                    ],
                )
            )
    made = S.assemble(pd.concat(frames, ignore_index=True))
    split = S.assign_splits(made.series, {"train": 0.7, "val": 0.15, "test": 0.15}, seed=42)
    assert split.groupby("patient_id")["split"].nunique().max() == 1
    assert set(split["split"]) == {"train", "val", "test"}
    leaked = split.copy()
    leaked.loc[leaked.index[0], "split"] = "test" if leaked["split"].iloc[0] != "test" else "train"
    from pipeline.data.split import check_leakage

    with pytest.raises(LeakageError):
        check_leakage(leaked)


def test_synthetic_series_files_come_back_in_order(tmp_path) -> None:
    """Real DICOM files with shuffled names (incl. an oblique series) → ingest → assembly."""
    from pipeline.config import SynthSection
    from pipeline.data import synth_series
    from pipeline.data.deid import SYNTHETIC_KEY
    from pipeline.data.ingest import ingest_folder
    from pipeline.io import read_json  # noqa: F401 - import check only

    counts = synth_series.write_cohort(SynthSection(series_patients=4), tmp_path / "series")
    assert counts.oblique >= 1
    ingest_folder(
        tmp_path / "series" / "dicom",
        tmp_path / "ing",
        SYNTHETIC_KEY,
        tmp_path / "series" / "labels.csv",
    )
    manifest = pd.read_parquet(tmp_path / "ing" / "manifest.parquet")
    assert set(GEOMETRY_FIELDS) <= set(manifest.columns)
    made = S.assemble(manifest)
    assert len(made.series) == 4 and made.quarantine.empty
    assert int(made.series["oblique"].sum()) == counts.oblique
    by_id = manifest.set_index("image_id")["instance_number"]
    for _, g in made.slices.groupby("series_uid"):
        inst = by_id[g.sort_values("slice")["image_id"]].to_numpy()
        assert (np.diff(inst) == 1).all() or (np.diff(inst) == -1).all()
    positives = made.series["label"].sum()
    assert positives == counts.positives


def test_enhanced_multiframe_geometry_orders_frames() -> None:
    """Per-frame positions from the functional groups (frames stored out of order)."""
    from pydicom.dataset import Dataset

    from pipeline.data.geometry import frame_geometry

    def item(**kw: object) -> Dataset:
        ds = Dataset()
        for k, v in kw.items():
            setattr(ds, k, v)
        return ds

    z = [6.0, 0.0, 9.0, 3.0]  # frame f is at z[f]
    ds = Dataset()
    ds.SharedFunctionalGroupsSequence = [
        item(PlaneOrientationSequence=[item(ImageOrientationPatient=[1, 0, 0, 0, 1, 0])])
    ]
    ds.PerFrameFunctionalGroupsSequence = [
        item(PlanePositionSequence=[item(ImagePositionPatient=[-50, -50, v])]) for v in z
    ]
    ds.SliceThickness = "3"
    geo = frame_geometry(ds, len(z))
    assert [g[2] for g in geo] == z and all(g[5] == 0.0 and g[7] == 1.0 for g in geo)
    rows = pd.DataFrame(geo, columns=list(GEOMETRY_FIELDS)).assign(
        frame=range(len(z)), rows=64, columns=64
    )
    ordered = S.order_slices(rows)
    assert rows["frame"].to_numpy()[ordered.rows].tolist() == [1, 3, 0, 2]
    assert ordered.spacing_mm == pytest.approx(3.0)
