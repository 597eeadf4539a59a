"""The synthetic cohort's DICOM SEG objects: the drawn lesion's exact mask, as hospitals send it.

For every image with a lesion, synth writes one SEG (highdicom, ``BINARY``) beside its image
series, referencing the image's SOP Instance UID. Patients with an even index get a
multi-segment SEG (``Lesion`` and ``Lung``), the others a single-segment one (``Lesion``), so
``task.segments`` has a choice and both kinds are read. A few broken SEGs exercise ingest's
quarantine: an orphan (its source image is not in the export), one whose frames are half the
image's size (geometry mismatch), and a ``FRACTIONAL`` one (unsupported type).

SEG UIDs come from their own seeded generator, so the images' bytes (and every classification
result) are exactly those of a cohort without SEGs.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.seg_io import build_seg

# folder of each broken SEG (under the first patient's first study), one per quarantine path
BROKEN = ("orphan", "geometry", "fractional")
SEG_FOLDER = "SG"  # series folder prefix of SEG objects, beside the image series (SE...)


def _uid(rng: np.random.Generator) -> str:
    return "2.25." + str(int.from_bytes(rng.bytes(16), "big"))


class SegWriter:
    """Collects one SEG per lesion image during synth; ``finish`` adds the broken ones."""

    def __init__(self, dicom_dir: Path, seed: int) -> None:
        self.dicom_dir = dicom_dir
        self.seed = seed
        self.written = 0
        self._examples: list[tuple[str, Any, np.ndarray]] = []

    def add(self, rel_image: str, patient: int, ds: Any, masks: dict[str, np.ndarray]) -> None:
        """Write the SEG of image ``ds`` (saved at ``rel_image``) from its drawn ``masks``."""
        rng = np.random.default_rng([self.seed, patient, 0x5E6, self.written])
        labels = ["Lesion", "Lung"] if patient % 2 == 0 else ["Lesion"]
        stack = np.stack([masks[label.lower()] for label in labels])
        seg = build_seg(
            ds,
            stack,
            labels,
            series_uid=_uid(rng),
            sop_uid=_uid(rng),
            manufacturer="radops synth",
            model="ground truth",
        )
        parts = rel_image.split("/")
        rel = "/".join([*parts[:2], SEG_FOLDER + parts[2][2:], "SG000001.dcm"])
        self._save(seg, rel)
        self.written += 1
        if len(self._examples) < len(BROKEN):
            self._examples.append((rel, ds, stack[:1]))

    def _save(self, seg: Any, rel: str) -> None:
        _fix_clock_and_uids(seg, np.random.default_rng([self.seed, 0xD1E, len(rel), self.written]))
        target = self.dicom_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        seg.save_as(target, enforce_file_format=True)

    def finish(self) -> int:
        """Write the broken SEGs (as many as lesion images allow); return how many."""
        for (rel, ds, mask), kind in zip(self._examples, BROKEN, strict=False):
            rng = np.random.default_rng([self.seed, 0xBAD, BROKEN.index(kind)])
            source = copy.deepcopy(ds)
            if kind == "orphan":  # an image that was never exported
                source.SOPInstanceUID = _uid(rng)
            elif kind == "geometry":  # frames of another size than the image
                source.Rows, source.Columns = ds.Rows // 2, ds.Columns // 2
                mask = mask[:, ::2, ::2]
            seg = build_seg(
                source,
                mask,
                ["Lesion"],
                series_uid=_uid(rng),
                sop_uid=_uid(rng),
                fractional=kind == "fractional",
                manufacturer="radops synth",
                model=kind,
            )
            folder = rel.rsplit("/", 2)[0]
            self._save(seg, f"{folder}/{SEG_FOLDER}9{BROKEN.index(kind):05d}/SG000001.dcm")
        return min(len(self._examples), len(BROKEN))


def _fix_clock_and_uids(seg: Any, rng: np.random.Generator) -> None:
    """Same seed, same bytes: highdicom stamps the creation time and draws a dimension
    organisation UID; use the study's date and time and a seeded UID instead."""
    day, at = str(seg.StudyDate), str(seg.StudyTime)
    seg.InstanceCreationDate = seg.ContentDate = day
    seg.InstanceCreationTime = seg.ContentTime = at
    for item in getattr(seg, "ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = day + at
    uid = _uid(rng)
    for item in (*seg.DimensionOrganizationSequence, *seg.DimensionIndexSequence):
        item.DimensionOrganizationUID = uid
