"""A tiny end-to-end segmentation run: SEG ingest → preprocess masks → U-Net (1 epoch) →
classical baseline → evaluation with CIs and figures → predict writing DICOM SEG objects that
highdicom reads back as exactly the model's masks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipeline import catalog
from tests.conftest import build_params


@pytest.mark.slow
def test_segmentation_train_evaluate_predict(small_cohort: Any, tmp_path: Path) -> None:
    import highdicom as hd
    import pydicom
    from pydicom.pixels import apply_modality_lut

    from pipeline.baselines import stage as baseline
    from pipeline.data import ingest, preprocess, split, validate
    from pipeline.data.preprocess import transform_image
    from pipeline.data.seg_masks import to_source
    from pipeline.evaluation import evaluate
    from pipeline.models.networks import load_model, predict
    from pipeline.serving import predict as serve
    from pipeline.training import train

    params = build_params(
        tmp_path,
        data={"dicom_dir": str(small_cohort.dicom_dir), "labels_csv": str(small_cohort.labels_csv)},
        task={"kind": "segmentation"},
        model={"depth": 2, "base_width": 8, "unet_res_units": 1},
        train={
            "max_epochs": 1,
            "batch_size": 16,
            "use_tuned_params": False,
            "accelerator": "cpu",
            "devices": 1,
        },
        preprocess={"image_size": 32},
        evaluate={"bootstrap_iterations": 100},
    )
    for stage in (ingest, validate, split, preprocess):
        stage.run(params, stage.Paths.from_params(params))  # type: ignore[attr-defined]
    masks = np.load(catalog.split_file(params.preprocess.out_dir, "train", catalog.MASKS_SUFFIX))
    assert masks.shape[1:] == (2, 32, 32) and set(np.unique(masks)) <= {0, 1}
    result = train.run(params, train.Paths.from_params(params))
    assert result.monitor == "val_dice"
    baseline.run(params, baseline.Paths.from_params(params))
    ev = evaluate.run(params, evaluate.Paths.from_params(params))
    for model in ("cnn", "baseline"):
        m = ev.metrics[model]
        for key in (
            "test_dice",
            "test_iou",
            "test_hd95_mm",
            "test_assd_mm",
            "test_lesion_sensitivity",
            "test_fp_per_image",
        ):
            assert key in m
        assert 0.0 <= m["test_dice_ci_low"] <= m["test_dice"] <= m["test_dice_ci_high"] <= 1.0
    assert catalog.dice_plot(params.evaluate.out_dir / catalog.FIGURES_DIR).exists()
    assert catalog.overlay_plot(params.evaluate.out_dir / catalog.FIGURES_DIR, "cnn").exists()

    # predict: one SEG per image, referencing it, equal to the model's own mask
    images = sorted(p for p in small_cohort.dicom_dir.rglob("IM*") if p.is_file())[:3]
    inputs = tmp_path / "new"
    for p in images:
        (inputs / p.parent.name).mkdir(parents=True, exist_ok=True)
        (inputs / p.parent.name / p.name).write_bytes(p.read_bytes())
    out_csv = tmp_path / "out" / "predictions.csv"
    serve.run(params, serve.Paths(str(params.train.out_dir), inputs, out_csv))
    table = pd.read_csv(out_csv)
    assert {"lesion_count", "lesion_area_mm2", "seg_file"} <= set(table.columns)
    network, meta = load_model(params.train.out_dir)
    stats = meta["preprocessing"]
    for _, row in table.iterrows():
        seg = hd.seg.segread(out_csv.parent / row["seg_file"])
        source = pydicom.dcmread(inputs / row["source_file"])
        assert [u for _, _, u in seg.get_source_image_uids()] == [source.SOPInstanceUID]
        got = seg.get_pixels_by_source_instance([source.SOPInstanceUID], segment_numbers=[1])
        hu = apply_modality_lut(source.pixel_array, source).astype(np.float32)
        x = transform_image(hu, stats, spacing=tuple(float(v) for v in source.PixelSpacing))
        prob = predict(network, meta, x[None].astype(np.float32))[0, 0]
        want = to_source(prob, source.Rows, source.Columns, stats) > 0.5
        np.testing.assert_array_equal(got[0, :, :, 0] > 0, want)
        spacing = float(source.PixelSpacing[0]) * float(source.PixelSpacing[1])
        assert row["lesion_area_mm2"] == pytest.approx(want.sum() * spacing, abs=1e-2)
