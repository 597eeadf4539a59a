"""The shared pieces of the synthetic cohorts (``synth``, its series cohort and its variants):
the sites and scanners, the names that look like PHI, the lesion, the CT slice renderer and
the CT Image Storage dataset. The cohort writers import this module, never each other, so
the data package has no import cycle (issue 20).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import numpy as np

REF_SIZE = 128  # lesion and vessel sizes are given in pixels at this image size


class Site(NamedTuple):
    institution: str
    address: str
    manufacturer: str
    model: str
    station: str
    spacing_512: float  # in-plane spacing (mm) of a 512 matrix; scaled to the image size
    slice_thickness: float
    noise: tuple[float, float]  # Gaussian noise sigma range (HU)
    extension: str  # how this site's PACS names exported files


SITES: tuple[Site, ...] = (
    Site("Northfield General Hospital", "1200 Northfield Avenue, Springfield, IL 62704",
         "GE MEDICAL SYSTEMS", "Revolution CT", "NFGCT01", 0.68, 1.25, (8.0, 14.0), ".dcm"),
    Site("Saint Agnes Medical Center", "45 Harbor Street, Baltimore, MD 21230",
         "SIEMENS", "SOMATOM Force", "AGNESCT2", 0.74, 1.0, (12.0, 20.0), ""),
    Site("Lakeview University Clinic", "900 Lakeshore Drive, Chicago, IL 60611",
         "Philips", "IQon Spectral CT", "LVUCTSCAN", 0.80, 2.0, (16.0, 24.0), ""),
    Site("Riverside Community Hospital", "77 Millbrook Road, Sacramento, CA 95814",
         "CANON_MEC", "Aquilion ONE", "RSCHCT1", 0.86, 0.5, (22.0, 30.0), ".dcm"),
)  # fmt: skip

# Names of five letters or more, so a test can search output bytes for them without chance hits.
LAST_NAMES = (
    "HARRISON", "OKAFOR", "LINDQVIST", "MORETTI", "KOWALSKI", "FERREIRA", "NAKAMURA", "ABERNATHY",
    "CASTELLANO", "DUBOIS", "WHITFIELD", "GALLAGHER", "PETROVIC", "SANTIAGO", "HOLLOWAY",
    "BRENNAN", "YAMAMOTO", "ACHTERBERG", "OLIVEIRA", "MACKENZIE", "THORNTON", "VASQUEZ",
    "KRISHNAN", "SORENSEN", "BELLAMY", "CALDERON", "FITZGERALD", "HAWTHORNE", "NOVAKOVA",
    "RAMIREZ",
)  # fmt: skip
FIRST_NAMES = (
    "MARGARET", "THEODORE", "BEATRICE", "HAROLD", "ROSALIND", "FREDERICK", "CLEMENTINE", "ARTHUR",
    "VIOLET", "EDMUND", "PRIYA", "MATTEO", "INGRID", "TOBIAS", "AMELIA", "DESMOND", "CORDELIA",
    "RAFAEL", "ELOISE", "GUNNAR",
)  # fmt: skip
PHYSICIANS = ("WHITAKER^SUSAN", "OYELARAN^DAVID", "STRAUSS^HELENA", "MENDOZA^CARLOS")


class Lesion(NamedTuple):
    in_lung: bool
    side: int  # -1 left, +1 right (lung lesions)
    rho: float  # relative distance from the region centre (0..1)
    theta: float  # angle (rad)
    radius_px: float  # at REF_SIZE
    value: float  # HU inside (lung) or contrast over tissue (soft tissue)


def _uid(rng: np.random.Generator) -> str:
    return "2.25." + str(int.from_bytes(rng.bytes(16), "big"))


def _dataset(
    rng: np.random.Generator,
    site: Site,
    patient: dict[str, str],
    study: dict[str, str],
    series_index: int,
    sop: str,
    hu: np.ndarray,
    size: int,
) -> Any:
    """A CT Image Storage dataset with realistic (and identifying) header values."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    spacing = f"{site.spacing_512 * 512 / size:.4g}"
    z = f"{rng.uniform(-180.0, -60.0):.1f}"
    half = f"{-float(spacing) * size / 2:.1f}"
    when, at = study["StudyDate"], study["StudyTime"]
    attributes: dict[str, Any] = {
        "SpecificCharacterSet": "ISO_IR 100", "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
        "SOPClassUID": CTImageStorage, "SOPInstanceUID": sop,
        "StudyDate": when, "SeriesDate": when, "AcquisitionDate": when, "ContentDate": when,
        "StudyTime": at, "SeriesTime": at, "AcquisitionTime": at, "ContentTime": at,
        "AccessionNumber": study["AccessionNumber"], "Modality": "CT",
        "Manufacturer": site.manufacturer, "InstitutionName": site.institution,
        "InstitutionAddress": site.address,
        "ReferringPhysicianName": study["ReferringPhysicianName"], "StationName": site.station,
        "StudyDescription": "CT CHEST WITHOUT CONTRAST",
        "SeriesDescription": f"AX CHEST {site.slice_thickness:g}mm" + " LUNG" * series_index,
        "InstitutionalDepartmentName": "Radiology", "OperatorsName": "TECH^RADIOLOGY",
        "ManufacturerModelName": site.model, **patient, "PatientAge": study["PatientAge"],
        "BodyPartExamined": "CHEST", "SliceThickness": f"{site.slice_thickness:g}",
        "KVP": str(rng.choice([100, 120, 120, 140])), "PatientPosition": "HFS",
        "StudyInstanceUID": study["StudyInstanceUID"], "SeriesInstanceUID": _uid(rng),
        "StudyID": study["StudyID"], "SeriesNumber": series_index + 2, "InstanceNumber": 1,
        "ImagePositionPatient": [half, half, z], "ImageOrientationPatient": [1, 0, 0, 0, 1, 0],
        "FrameOfReferenceUID": study["FrameOfReferenceUID"], "SliceLocation": z,
        "SamplesPerPixel": 1, "PhotometricInterpretation": "MONOCHROME2", "Rows": size,
        "Columns": size, "PixelSpacing": [spacing, spacing], "BitsAllocated": 16,
        "BitsStored": 16, "HighBit": 15, "PixelRepresentation": 1, "BurnedInAnnotation": "NO",
        "WindowCenter": "40", "WindowWidth": "400", "RescaleIntercept": "-1024",
        "RescaleSlope": "1", "RescaleType": "HU",
    }  # fmt: skip
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.PixelData = np.clip(np.rint(hu + 1024.0), 0, 4095).astype("<i2").tobytes()
    return ds


def _ellipse(grid: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    """Normalised elliptic radius (<= 1 inside)."""
    return ((grid[0] - cy) / ry) ** 2 + ((grid[1] - cx) / rx) ** 2


def _blob(img: np.ndarray, cy: float, cx: float, sigma: float, amp: float) -> None:
    """Add a Gaussian spot, computed only on its bounding box."""
    import numpy as np

    r = int(np.ceil(3 * sigma)) + 1
    y0, y1 = max(int(cy) - r, 0), min(int(cy) + r + 1, img.shape[0])
    x0, x1 = max(int(cx) - r, 0), min(int(cx) + r + 1, img.shape[1])
    if y0 >= y1 or x0 >= x1:
        return
    yy, xx = np.ogrid[y0:y1, x0:x1]
    img[y0:y1, x0:x1] += amp * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))


def _line(img: np.ndarray, p0: np.ndarray, p1: np.ndarray, sigma: float, amp: float) -> None:
    """Add a thin bright segment (vessel) with a Gaussian cross-section."""
    import numpy as np

    lo = np.floor(np.minimum(p0, p1) - 3 * sigma).astype(int).clip(0, img.shape[0] - 1)
    hi = np.ceil(np.maximum(p0, p1) + 3 * sigma).astype(int).clip(0, img.shape[0] - 1) + 1
    yy, xx = np.mgrid[lo[0] : hi[0], lo[1] : hi[1]].astype(np.float32)
    d = p1 - p0
    t = ((yy - p0[0]) * d[0] + (xx - p0[1]) * d[1]) / max(float(d @ d), 1e-6)
    t = t.clip(0, 1)
    dist2 = (yy - p0[0] - t * d[0]) ** 2 + (xx - p0[1] - t * d[1]) ** 2
    img[lo[0] : hi[0], lo[1] : hi[1]] += amp * np.exp(-dist2 / (2 * sigma**2))


def _disk(shape: tuple[int, int], cy: float, cx: float, radius: float, rng: Any) -> Any:
    """Soft-edged, slightly lobulated disk weights in [0, 1] over the whole image."""
    import numpy as np

    yy, xx = np.ogrid[0 : shape[0], 0 : shape[1]]
    dy, dx = yy - cy, xx - cx
    angle = np.arctan2(dy, dx)
    lobes = 1 + 0.12 * np.sin(int(rng.integers(2, 5)) * angle + rng.uniform(0, 6.3))
    return np.clip(radius * lobes - np.sqrt(dy**2 + dx**2) + 0.5, 0.0, 1.0)


def render_image(
    rng: np.random.Generator,
    size: int,
    grid: np.ndarray,
    site: Site,
    enhanced: bool,
    lesion: Lesion | None,
    masks: dict[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, float]:
    """One chest slice in HU (float32), with a lesion when ``lesion`` is given; and the drawn
    lesion's radius in pixels of this image (0.0 without one). ``masks`` (if given) receives
    the drawn ``lesion`` (disk weight ≥ ½) and ``lung`` masks; no random draw is added."""
    import numpy as np
    from scipy.ndimage import gaussian_filter

    k = size / REF_SIZE
    spacing = site.spacing_512 * 512 / size
    cy = size / 2 + rng.normal(0, 0.02 * size)
    cx = size / 2 + rng.normal(0, 0.02 * size)
    a = min(rng.uniform(135, 158) / spacing, 0.47 * size)  # half-width (x)
    b = min(rng.uniform(95, 112) / spacing, 0.40 * size)  # half-height (y)
    tissue = rng.uniform(30, 55)
    img = np.full((size, size), -1000.0, dtype=np.float32)
    body = _ellipse(grid, cy, cx, b, a)
    img[body <= 1] = -100 + rng.normal(0, 8)  # subcutaneous fat rim
    img[body <= rng.uniform(0.75, 0.87)] = tissue
    lungs = np.zeros((size, size), dtype=bool)
    lung_geo = []
    for side in (-1, 1):
        geo = (
            cy - 0.08 * b + rng.normal(0, 0.02 * b),
            cx + side * 0.42 * a + rng.normal(0, 0.02 * a),
            rng.uniform(0.55, 0.68) * b,
            rng.uniform(0.28, 0.35) * a,
        )
        lung_geo.append(geo)
        lungs |= _ellipse(grid, *geo) <= 1
    img[lungs] = rng.uniform(-870, -830)
    boost = rng.uniform(90, 170) if enhanced else 0.0
    heart = _ellipse(grid, cy + 0.12 * b, cx + 0.1 * a, 0.32 * b, 0.2 * a) <= 1
    img[heart] = tissue + rng.uniform(0, 15) + boost
    lungs &= ~heart
    aorta = _ellipse(grid, cy - 0.3 * b, cx - 0.06 * a, 0.08 * a, 0.08 * a) <= 1
    img[aorta] = tissue + boost * 1.3
    spine = _ellipse(grid, cy + 0.74 * b, cx, 0.14 * b, 0.12 * b) <= 1
    img[spine] = rng.uniform(250, 450)
    soft = (body <= 1) & ~lungs
    inner = soft & (body <= 0.7) & ~spine & ~heart & ~aorta  # soft tissue away from the rim
    texture = gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), 3 * k)
    texture *= 1.0 / max(float(texture.std()), 1e-6)
    img += texture * np.where(lungs, 20.0, np.where(soft, 10.0, 0.0)).astype(np.float32)
    # Distractors: lung vessels (dots, lines) and small bright/dark blobs in soft tissue.
    vessels = np.zeros_like(img)
    for _ in range(int(rng.poisson(9))):
        gy, gx, ry, rx = lung_geo[int(rng.integers(2))]
        r, t = np.sqrt(rng.random()) * 0.9, rng.uniform(0, 2 * np.pi)
        _blob(vessels, gy + r * ry * np.sin(t), gx + r * rx * np.cos(t),
              rng.uniform(0.5, 1.0) * k, rng.uniform(650, 900))  # fmt: skip
    for _ in range(int(rng.poisson(4))):
        gy, gx, ry, rx = lung_geo[int(rng.integers(2))]
        t = rng.uniform(0, 2 * np.pi)
        p0 = np.array([gy + 0.2 * ry * np.sin(t), gx + 0.2 * rx * np.cos(t)])
        step = rng.uniform(6, 20) * k
        p1 = p0 + step * np.array([np.sin(t + rng.normal(0, 0.4)), np.cos(t + rng.normal(0, 0.4))])
        _line(vessels, p0, p1, rng.uniform(0.5, 0.9) * k, rng.uniform(600, 850))
    img += vessels * lungs
    spots = np.zeros_like(img)
    ys, xs = np.nonzero(inner)
    for _ in range(int(rng.poisson(2))):
        i = int(rng.integers(len(ys)))
        _blob(spots, ys[i], xs[i], rng.uniform(0.8, 1.5) * k, rng.uniform(80, 200))
    for _ in range(int(rng.poisson(2))):
        i = int(rng.integers(len(ys)))
        spots -= rng.uniform(60, 120) * _disk(img.shape, ys[i], xs[i], rng.uniform(2, 5) * k, rng)
    img += spots * soft
    radius = 0.0
    if lesion is not None:
        radius = _add_lesion(img, rng, lesion, lung_geo, lungs, tissue, k, masks)
    if masks is not None:
        masks["lung"] = lungs.copy()
    gain = rng.uniform(0.94, 1.06)  # slight contrast variation inside the body
    inside = body <= 1
    img[inside] = tissue + (img[inside] - tissue) * gain
    img = gaussian_filter(img, rng.uniform(0.5, 0.8) * k)
    noise = gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), 0.6)
    sigma = rng.uniform(*site.noise)
    img += noise * (sigma / max(float(noise.std()), 1e-6))
    return img.astype(np.float32), radius


def _add_lesion(
    img: np.ndarray,
    rng: np.random.Generator,
    lesion: Lesion,
    lung_geo: list[tuple[float, float, float, float]],
    lungs: np.ndarray,
    tissue: float,
    k: float,
    masks: dict[str, np.ndarray] | None = None,
) -> float:
    """Paint the patient's lesion (with per-study jitter in position, size and density); return
    its radius in pixels of this image (the disk's edge, where its weight is one half)."""
    import numpy as np
    from scipy.ndimage import distance_transform_edt

    radius = max(lesion.radius_px + rng.normal(0, 0.5), 3.0) * k
    rho = float(np.clip(lesion.rho + rng.normal(0, 0.08), 0, 0.75))
    theta = lesion.theta + rng.normal(0, 0.25)
    gy, gx, ry, rx = lung_geo[0 if lesion.side < 0 else 1]
    if lesion.in_lung:  # wholly inside aerated lung (not behind the heart), near the usual spot
        depth = distance_transform_edt(lungs)
        reach = 1.12 * radius + 1  # lobulation adds up to 12 %
        for _ in range(20):
            cy, cx = gy + rho * ry * np.sin(theta), gx + rho * rx * np.cos(theta)
            if (
                depth[int(np.clip(cy, 0, img.shape[0] - 1)), int(np.clip(cx, 0, img.shape[1] - 1))]
                > reach
            ):
                break
            rho, theta = 0.9 * rho, theta + rng.normal(0, 0.5)
        else:  # too large for this lung near that spot: its deepest point, shrunk to fit
            mid = int((lung_geo[0][1] + lung_geo[1][1]) / 2)
            side = np.zeros_like(lungs)
            side[:, :mid] = lesion.side < 0
            side[:, mid:] = lesion.side > 0
            deepest = np.where(side, depth, 0)
            cy, cx = np.unravel_index(int(np.argmax(deepest)), deepest.shape)
            radius = min(radius, max((float(deepest[cy, cx]) - 1) / 1.12, 1.5 * k))
        value = lesion.value + rng.normal(0, 10)
    else:  # a pleural-based mass: centred on the lateral lung border, hyperdense
        angle = (0.0 if lesion.side > 0 else np.pi) + (theta % 2.4 - 1.2)
        cy, cx = gy + ry * np.sin(angle), gx + rx * np.cos(angle)
        value = tissue + lesion.value + rng.normal(0, 5)
        radius *= 1.3  # about half of it hides in the chest wall
    w = _disk(img.shape, cy, cx, radius, rng).astype(np.float32)
    img[:] = img * (1 - w) + value * w
    if masks is not None:
        masks["lesion"] = w >= 0.5
    return float(radius)
