"""Harder variants of the synthetic cohort, for the quality study (``make quality``).

Three ``synth`` params; their defaults leave the cohort byte for byte as it was (a test holds a
digest of it), so only a study that asks for a variant gets one:

- ``lesion_contrast`` (1.0) multiplies every lesion's contrast *as the default soft-tissue
  window shows it* (WC 40 / WW 400 clips below ``WINDOW_FLOOR_HU``). A pleural mass's contrast
  over soft tissue is scaled; a lung nodule's HU is pulled towards the window floor, since
  scaling its contrast against aerated lung (~-850 HU) would push it below the window at
  0.5: invisible, not subtle. Geometry and every random draw stay the same.
- ``noise_scale`` (1.0) multiplies every site's noise sigma range (8-30 HU by default).
- ``test_scanner_shift`` (false): the patients the default cohort draws at its fourth site
  (Riverside, Canon) are scanned on ``synth_shift.new_site()``'s scanner instead (another maker,
  finer pixels, noise sigma 45-60 HU against 8-30), and they, only they, are the test split:
  written to the labels file's ``split`` column (honoured by ``split.use_labels_split``). The
  other patients are split train/val by patient, stratified by whether the patient has a
  lesion. Each patient has its own random stream, so every other patient's images are
  byte-identical to the default cohort's: the variant measures a scanner never seen in
  training, with the rest of the cohort unchanged.
  (Holding out Riverside itself barely moved the test AUC: 0.987 against 0.991; its noise
  overlaps the other sites'.)
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import catalog
from pipeline.errors import ConfigError

if TYPE_CHECKING:
    from pipeline.data.synth_images import Lesion, Site

WINDOW_FLOOR_HU = -160.0  # lower edge of the default preprocessing window (40 - 400/2)
HELD_OUT_SITE = 3  # index in synth_images.SITES whose patients move to the new scanner
# train : val among the other scanners' patients (the split stage's default 0.70 : 0.15).
VAL_SHARE = 0.15 / 0.85


def adjust_sites(sites: tuple[Site, ...], cfg: Any) -> tuple[Site, ...]:
    """The sites as the variant wants them (the same tuple by default): the held-out site
    replaced by the new scanner, every noise sigma range scaled."""
    if cfg.test_scanner_shift:
        from pipeline.data.synth_shift import new_site

        sites = tuple(new_site() if i == HELD_OUT_SITE else s for i, s in enumerate(sites))
    noise_scale = cfg.noise_scale
    if noise_scale == 1.0:
        return sites
    return tuple(
        s._replace(noise=(s.noise[0] * noise_scale, s.noise[1] * noise_scale)) for s in sites
    )


def adjust_lesion(lesion: Lesion, contrast: float) -> Lesion:
    """The lesion with its contrast scaled (see the module docstring); itself at 1.0."""
    if contrast == 1.0:
        return lesion
    if lesion.in_lung:  # absolute HU: scale its height above the window floor
        return lesion._replace(value=WINDOW_FLOOR_HU + contrast * (lesion.value - WINDOW_FLOOR_HU))
    return lesion._replace(value=contrast * lesion.value)  # contrast over soft tissue


def check(cfg: Any) -> None:
    """Refuse combinations that cannot make the asked-for cohort."""
    if cfg.test_scanner_shift and cfg.new_site:
        raise ConfigError(
            "synth.test_scanner_shift holds out one of the four shipped sites; it cannot be "
            "combined with synth.new_site (every patient from the new site)"
        )


def write_scanner_split(out_dir: Path, seed: int) -> dict[str, int]:
    """Rewrite ``out_dir``'s labels file with a ``split`` column: the new scanner's patients
    ``test``, the others ``train``/``val``. Returns patients per split.

    The scanner is read back from each image's header (StationName), so this does not depend
    on how the generator draws sites.
    """
    import numpy as np
    import pydicom

    from pipeline.data.synth_shift import new_site

    held_out = new_site().station
    station: dict[str, str] = {}
    for path in (out_dir / catalog.SYNTH_DICOM_DIR).rglob("*"):
        if path.is_file():
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            if "StationName" in ds:
                station[str(ds.SOPInstanceUID)] = str(ds.StationName)
    labels = out_dir / catalog.LABELS_FILE
    with labels.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    held: dict[str, bool] = {}
    positive: dict[str, bool] = {}
    for row in rows:
        pid = row["patient_id"]
        held[pid] = station[row["sop_instance_uid"]] == held_out
        positive[pid] = positive.get(pid, False) or row["label"] == "1"
    split = {pid: "test" for pid, h in held.items() if h}
    rng = np.random.default_rng([seed, 15015])
    for group in (False, True):  # stratified: patients with and without a lesion
        others = sorted(p for p in held if not held[p] and positive[p] is group)
        order = rng.permutation(len(others))
        n_val = max(1, round(len(others) * VAL_SHARE)) if len(others) > 1 else 0
        for rank, i in enumerate(order):
            split[others[int(i)]] = "val" if rank < n_val else "train"
    fields = [*rows[0].keys(), "split"] if rows else ["split"]
    with labels.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(row | {"split": split[row["patient_id"]]})
    return {name: sum(v == name for v in split.values()) for name in ("train", "val", "test")}
