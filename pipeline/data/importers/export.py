"""The output every importer writes: ``OUT/dicom/`` and ``OUT/labels.csv``, as a PACS export would.

One DICOM file per image (``dicom/PA<patient>/ST<n>/SE000001/IM000001.dcm``: one study and
series per 2-D image; a volume's slices are ``IM000001.dcm``, ``IM000002.dcm``… of one series,
with their planes' geometry), grey-scale (``MONOCHROME2``, 8 or 16 bits, unsigned or signed,
as the source) or colour (``RGB``, 8 bits), Explicit VR Little Endian, written in pydicom's
RAISE validation mode as synth writes its cohort. The SOP class is Ultrasound Image Storage for ``US`` and Secondary Capture for every
other modality (``ConversionType`` WSD: converted from another format). The header says only
what the source says plus what the user gave: the modality, the pixel spacing, a pseudonymous
patient (``IMP0000001``… unless the source names patients), ``Manufacturer`` and
``InstitutionName`` "radops import"; no names, dates or other identifiers. A full-range VOI
window (``WindowCenter``/``WindowWidth``) is written for grey images: the source has no window,
and its full range is how it was meant to be seen.

Masks become one ``BINARY`` DICOM SEG per image (``seg_io.build_seg``, as synth writes its
SEGs) beside the image series (``ST<n>/SG000001/SG<slice>.dcm``), one segment per mask.

UIDs are derived from a digest of the source (``seed``) and the image's position, so the same
input gives the same image files. ``labels.csv`` has the columns ingest reads
(``pipeline.data.labels``): ``sop_instance_uid``, ``patient_id``, ``label``, ``split`` and any
target columns.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from pipeline import catalog
from pipeline.errors import InputError

if TYPE_CHECKING:
    import numpy as np

LABELS_HEADER = ("sop_instance_uid", "patient_id", "label", "split")
MANUFACTURER = "radops import"
US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
SEG_FOLDER = "SG000001"


class Item(NamedTuple):
    """One image to write, with its row of ``labels.csv``."""

    pixels: np.ndarray  # rows × cols (uint8, uint16, int16) or rows × cols × 3 (uint8, RGB)
    patient_id: str
    split: str  # train, val, test or ""
    label: int  # 0 or 1
    targets: tuple[float | int | str, ...] = ()  # values of ``ExportWriter.targets``
    masks: tuple[tuple[str, np.ndarray], ...] = ()  # (segment label, bool rows × cols)


class Plane(NamedTuple):
    """Where a slice of a volume lies (DICOM patient coordinates, mm) and how values scale."""

    position: tuple[float, float, float]  # ImagePositionPatient
    orientation: tuple[float, ...]  # ImageOrientationPatient (row, then column direction)
    spacing: tuple[float, float]  # PixelSpacing: between rows, between columns
    thickness: float
    rescale: tuple[float, float] = (1.0, 0.0)  # RescaleSlope, RescaleIntercept
    window: tuple[float, float] | None = None  # WindowCenter, WindowWidth (None: full range)


@dataclass(frozen=True)
class ImportResult:
    out_dir: Path
    images: int
    patients: int
    segs: int
    splits: dict[str, int]
    seconds: float
    notes: tuple[str, ...] = ()  # what the user must add to params.yaml besides the two lines
    targets: tuple[str, ...] = field(default=())

    def params_lines(self) -> list[str]:
        """The two ``params.yaml`` lines that point radops at the result."""
        out = self.out_dir.resolve()
        return [
            f"data.dicom_dir: {out / catalog.SYNTH_DICOM_DIR}",
            f"data.labels_csv: {out / catalog.LABELS_FILE}",
        ]

    def summary(self) -> str:
        split = ", ".join(f"{k or 'unsplit'} {v}" for k, v in sorted(self.splits.items()))
        lines = [
            f"import: {self.images} images of {self.patients} patients ({split}), "
            f"{self.segs} SEG -> {self.out_dir} in {self.seconds:.1f} s",
            "params.yaml:",
            *(f"  {line}" for line in self.params_lines()),
            *(f"  # {note}" for note in self.notes),
        ]
        return "\n".join(lines)


def digest(*parts: bytes | str) -> str:
    """A hex digest of the source, the seed of the export's UIDs."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()


class ExportWriter:
    """Writes the export under ``root`` (a staging folder from ``pipeline.io.atomic_path``)."""

    def __init__(
        self,
        root: Path,
        *,
        modality: str,
        spacing_mm: float,
        seed: str,
        targets: tuple[str, ...] = (),
    ) -> None:
        if not modality.isalnum() or not modality.isupper() or len(modality) > 16:
            raise InputError(
                f"modality must be a DICOM modality code such as US or OT, not {modality!r}"
            )
        if not spacing_mm > 0:
            raise InputError("--spacing-mm must be a positive number (mm per pixel)")
        self.root = root
        self.dicom_dir = root / catalog.SYNTH_DICOM_DIR
        self.modality = modality
        self.spacing = f"{spacing_mm:.6g}"
        self.seed = seed
        self.targets = targets
        self.images = self.segs = 0
        self.sides: tuple[int, int] | None = None  # smallest and largest image side
        self.positives = 0
        self.splits: dict[str, int] = {}
        self._patients: dict[str, tuple[int, int]] = {}  # id -> (folder number, images so far)
        self.dicom_dir.mkdir(parents=True)
        self._fh = (root / catalog.LABELS_FILE).open("w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._fh, lineterminator="\n")
        self._csv.writerow((*LABELS_HEADER, *targets))

    def __enter__(self) -> ExportWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()

    @property
    def patients(self) -> int:
        return len(self._patients)

    def _uid(self, *what: object) -> str:
        h = hashlib.sha256("/".join([self.seed, *map(str, what)]).encode()).digest()
        return "2.25." + str(int.from_bytes(h[:16], "big"))

    def add(self, item: Item) -> str:
        """Write one image (and its SEG) as a study of its own; return its SOP Instance UID."""
        return self.add_series([item])[0]

    def add_series(self, items: list[Item], planes: list[Plane] | None = None) -> list[str]:
        """Write ``items`` as the slices of one series of one study (``planes``: where each
        lies; default: one plane at the origin), each with its SEG; return their UIDs."""
        if not items or len({i.patient_id for i in items}) != 1:
            raise ValueError("a series holds one patient's images")
        patient = items[0].patient_id
        number, seen = self._patients.get(patient, (len(self._patients) + 1, 0))
        self._patients[patient] = (number, seen + 1)
        folder = self.dicom_dir / f"PA{number:06d}/ST{seen + 1:06d}"
        first = self.images  # the series' UIDs derive from its first image's number
        uids = {k: self._uid(k, first) for k in ("study", "series", "frame", "seg-series")}
        if planes is not None and len(planes) != len(items):
            raise ValueError("one plane per slice")
        return [
            self._write(item, planes[k] if planes else None, folder, k, uids)
            for k, item in enumerate(items)
        ]

    def _write(
        self, item: Item, plane: Plane | None, folder: Path, k: int, uids: dict[str, str]
    ) -> str:
        from pydicom import config as dcm_config

        n = self.images
        name = f"{k + 1:06d}.dcm"
        previous = dcm_config.settings.writing_validation_mode
        dcm_config.settings.writing_validation_mode = dcm_config.RAISE
        try:
            ds = self._dataset(item, n, plane, k, uids)
            target = folder / "SE000001" / f"IM{name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(target, enforce_file_format=True)
            if item.masks:
                self._seg(ds, item, n, folder / SEG_FOLDER / f"SG{name}", uids["seg-series"])
        finally:
            dcm_config.settings.writing_validation_mode = previous
        sop = str(ds.SOPInstanceUID)
        lo, hi = min(item.pixels.shape[:2]), max(item.pixels.shape[:2])
        self.sides = (min(lo, self.sides[0]), max(hi, self.sides[1])) if self.sides else (lo, hi)
        self._csv.writerow((sop, item.patient_id, item.label, item.split, *item.targets))
        self.images += 1
        self.positives += item.label
        self.splits[item.split] = self.splits.get(item.split, 0) + 1
        return sop

    def _dataset(
        self, item: Item, n: int, plane: Plane | None, k: int, uids: dict[str, str]
    ) -> Any:
        import numpy as np
        from pydicom.dataset import Dataset, FileMetaDataset
        from pydicom.uid import UID, ExplicitVRLittleEndian

        pixels = np.ascontiguousarray(item.pixels)
        colour = pixels.ndim == 3
        sop_class = US_IMAGE_STORAGE if self.modality == "US" else SECONDARY_CAPTURE
        sop = self._uid("image", n)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
        ds.file_meta.MediaStorageSOPInstanceUID = UID(sop)
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        bits = pixels.dtype.itemsize * 8
        attributes: dict[str, Any] = {
            "SpecificCharacterSet": "ISO_IR 192", "ImageType": ["DERIVED", "SECONDARY"],
            "SOPClassUID": sop_class, "SOPInstanceUID": sop, "StudyDate": "", "StudyTime": "",
            "AccessionNumber": "", "Modality": self.modality, "Manufacturer": MANUFACTURER,
            "InstitutionName": MANUFACTURER, "ReferringPhysicianName": "",
            "PatientName": "", "PatientID": item.patient_id, "PatientBirthDate": "",
            "PatientSex": "", "StudyInstanceUID": uids["study"],
            "SeriesInstanceUID": uids["series"], "StudyID": "", "SeriesNumber": 1,
            "InstanceNumber": k + 1, "FrameOfReferenceUID": uids["frame"],
            "ImagePositionPatient": [_ds(v) for v in plane.position] if plane else [0, 0, 0],
            "ImageOrientationPatient": [_ds(v) for v in plane.orientation] if plane
            else [1, 0, 0, 0, 1, 0],
            "PixelSpacing": [_ds(v) for v in plane.spacing] if plane
            else [self.spacing, self.spacing],
            "SliceThickness": _ds(plane.thickness) if plane else self.spacing,
            "SamplesPerPixel": 3 if colour else 1,
            "PhotometricInterpretation": "RGB" if colour else "MONOCHROME2",
            "Rows": pixels.shape[0], "Columns": pixels.shape[1], "BitsAllocated": bits,
            "BitsStored": bits, "HighBit": bits - 1,
            "PixelRepresentation": int(pixels.dtype.kind == "i"),
            "BurnedInAnnotation": "NO", "LossyImageCompression": "00",
        }  # fmt: skip
        if sop_class == SECONDARY_CAPTURE:
            attributes["ConversionType"] = "WSD"
        if colour:
            attributes["PlanarConfiguration"] = 0
        elif plane and plane.window:
            attributes["WindowCenter"], attributes["WindowWidth"] = map(_ds, plane.window)
        else:
            low = -(2 ** (bits - 1)) if pixels.dtype.kind == "i" else 0
            attributes["WindowCenter"] = _ds(low + 2 ** (bits - 1) - 0.5)
            attributes["WindowWidth"] = str(2**bits)
        if plane and plane.rescale != (1.0, 0.0):
            attributes["RescaleSlope"], attributes["RescaleIntercept"] = map(_ds, plane.rescale)
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
        ds["PixelData"].VR = "OB" if bits == 8 else "OW"
        return ds

    def _seg(self, ds: Any, item: Item, n: int, target: Path, series_uid: str) -> None:
        import numpy as np

        from pipeline.data.seg_io import build_seg

        labels = [label for label, _ in item.masks]
        stack = np.stack([mask.astype(bool) for _, mask in item.masks])
        seg = build_seg(
            ds,
            stack,
            labels,
            series_uid=series_uid,
            sop_uid=self._uid("seg", n),
            manufacturer=MANUFACTURER,
            model="imported mask",
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        seg.save_as(target, enforce_file_format=True)
        self.segs += 1


def _ds(value: float) -> str:
    """A decimal string (DS) of at most 16 characters."""
    text = f"{value:.10g}"
    return text if len(text) <= 16 else f"{value:.8g}"
