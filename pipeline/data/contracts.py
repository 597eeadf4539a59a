"""Data contracts: the column sets of docs/stages.md and the Great Expectations suites.

Each bound that ``params.yaml`` sets carries the key in the expectation's ``meta`` so that a
failure names it, with the offending rows by ``source_id`` (see ``validate``).

The suites live apart from ``validate.py`` so that a reviewer can read the whole contract on
one screen; ``validate`` only builds the batches and runs them. GX is imported inside the
functions (it is slow to import).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from pipeline.data.geometry import GEOMETRY_FIELDS

if TYPE_CHECKING:
    from great_expectations.core.expectation_suite import ExpectationSuite

    from pipeline.config import ValidateSection

MANIFEST_COLUMNS: tuple[str, ...] = (
    "image_id",
    "patient_id",
    "study_uid",
    "series_uid",
    "sop_uid",
    "source_id",
    "frame",
    "modality",
    "site",
    "manufacturer",
    "pixel_spacing_row",
    "pixel_spacing_col",
    "rows",
    "columns",
    "bits_allocated",
    "bits_stored",
    "pixel_representation",
    "photometric",
    "label",
    "official_split",
    "pixel_path",
    "pixel_offset",
    "pixel_min",
    "pixel_max",
    "pixel_mean",
    "pixel_std",
    "nonfinite_pixels",
    "pixel_sha256",
    "channels",
    *GEOMETRY_FIELDS,  # slice geometry for series assembly (pipeline/data/geometry.py)
)
SPLITS_COLUMNS: tuple[str, ...] = (
    "image_id",
    "sop_uid",
    "patient_id",
    "label",
    "site",
    "manufacturer",
    "modality",
    "pixel_path",
    "split",
)
INDEX_COLUMNS: tuple[str, ...] = (
    "image_id",
    "sop_uid",
    "patient_id",
    "label",
    "site",
    "manufacturer",
)
SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")
# as in the header; colour ones are stored as RGB (pipeline.data.colour)
PHOTOMETRIC: tuple[str, ...] = (
    "MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL", "YBR_FULL_422", "YBR_ICT",
    "YBR_RCT",
)  # fmt: skip
STATS_KEYS: tuple[str, ...] = (
    "window_center",
    "window_width",
    "image_size",
    "denoise",
    "denoise_sigma",
    "normalization",
    "mean",
    "std",
    "min",
    "max",
    "channels",
    "spacing_mm",
    "intensity",
    "intensity_reason",
    "channel_range",
)

PATIENT_ID_REGEX = r"^P-[0-9a-f]{16}$"
SOURCE_ID_REGEX = r"^F-[0-9a-f]{16}$"
SHA256_REGEX = r"^[0-9a-f]{64}$"
# A column named like a file or folder path (``source_file``, ``path``, ``dicom_dir``, ...) can
# hold identifiers (UIDs, dates, names in folder names): refused in the manifest, whatever it
# holds. ``pixel_path`` (a shard of the pixel store) is the contract's own.
PATH_COLUMN_REGEX = (
    r"^(.*[_ ])?(path|paths|file|files|filename|filenames|filepath|file_path|dir|dirs|"
    r"directory|folder|folders|url|uri)$"
)
UID_REGEX = r"^2\.25\.[0-9]+$"
SITE_REGEX = r"^SITE-([0-9a-f]{8}|unknown)$"

# DICOM attributes that identify a patient, a visit or a place (PS3.15 basic profile, abridged).
# A manifest column with one of these names (any case, or in snake_case) means de-identification
# leaked; the contract's own pseudonymous ``patient_id`` is exempt.
PHI_KEYWORDS: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientMotherBirthName",
    "OtherPatientIDs",
    "OtherPatientNames",
    "MedicalRecordLocator",
    "IssuerOfPatientID",
    "AccessionNumber",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "PhysiciansOfRecord",
    "OperatorsName",
    "RequestingPhysician",
    "StationName",
    "DeviceSerialNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
)


def identifying_column_names() -> list[str]:
    """Lower-case PHI column names (DICOM keyword and snake_case forms) and the path columns of
    older manifests (``source_file``), minus contract columns."""
    names = {"source_file", "source_path", "filename", "file", "path"}
    for keyword in PHI_KEYWORDS:
        names.add(keyword.lower())
        names.add(re.sub(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z]{2})", "_", keyword).lower())
    return sorted(names - set(MANIFEST_COLUMNS))


def target_columns(frame: Any) -> list[str]:
    """The manifest's extra columns, in order: candidate targets carried from the labels file
    (e.g. ``grade``, ``lesion_diameter_mm``). Only numeric ones: the contract refuses others."""
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    contract = set(MANIFEST_COLUMNS) | set(SPLITS_COLUMNS) | {"split"}
    return [
        str(c)
        for c in frame.columns
        if c not in contract
        and is_numeric_dtype(frame[c])
        and not is_bool_dtype(frame[c])
        and str(c).lower() not in set(identifying_column_names())
    ]


def schema_frame(manifest: Any) -> Any:
    """One row per manifest column, for the ``schema`` suite: its lower-case name; for columns
    outside the contract also the name (``extra_column``) and 1/0 for numeric (``extra_numeric``);
    null for contract columns, which GX skips."""
    import pandas as pd
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    names = [str(c) for c in manifest.columns]
    extra = [n not in MANIFEST_COLUMNS for n in names]
    numeric = [
        is_numeric_dtype(manifest[c]) and not is_bool_dtype(manifest[c]) for c in manifest.columns
    ]
    return pd.DataFrame(
        {
            "column_name": [n.lower() for n in names],
            "extra_column": pd.Series(
                [n.lower() if e else None for n, e in zip(names, extra, strict=True)],
                dtype=object,
            ),
            "extra_numeric": pd.Series(
                [float(k) if e else None for k, e in zip(numeric, extra, strict=True)],
                dtype=float,
            ),
        }
    )


def _keys(**keys: str) -> dict[str, Any]:
    """Expectation ``meta``: the params.yaml key that sets each bound (``min``, ``max``, ``set``),
    so that a failure can name it."""
    return {"params": keys}


def build_suites(cfg: ValidateSection, columns: Iterable[str] = ()) -> dict[str, ExpectationSuite]:
    """The four suites, one per batch that ``validate`` builds (see ``validate.batches``).

    ``columns``: the manifest's columns; extra ones named in ``validate.target_ranges`` get a
    range check.
    """
    import great_expectations as gx

    ex = gx.expectations
    lo_hu, hi_hu = cfg.ct_hu_range
    present = set(columns)
    manifest: list[Any] = [
        ex.ExpectTableRowCountToBeBetween(min_value=1),
        # Every contract column; extra columns are checked by the schema suite (numeric
        # candidate targets only, never a path or an identifier).
        ex.ExpectTableColumnsToMatchSet(
            # geometry is optional: manifests from before it (and non-series data) lack it
            column_set=[c for c in MANIFEST_COLUMNS if c not in GEOMETRY_FIELDS],
            exact_match=False,
        ),
        *[
            ex.ExpectColumnValuesToNotBeNull(column=c)
            for c in (
                "image_id",
                "patient_id",
                "source_id",
                "sop_uid",
                "modality",
                "label",
                "pixel_path",
                "pixel_offset",
                "pixel_sha256",
            )
        ],
        ex.ExpectColumnValuesToBeUnique(column="image_id"),
        ex.ExpectCompoundColumnsToBeUnique(column_list=["sop_uid", "frame"]),
        # a byte offset in the shard (pipeline.data.pixels)
        ex.ExpectColumnValuesToBeBetween(column="pixel_offset", min_value=0),
        ex.ExpectCompoundColumnsToBeUnique(column_list=["pixel_path", "pixel_offset"]),
        ex.ExpectColumnValuesToMatchRegex(column="patient_id", regex=PATIENT_ID_REGEX),
        ex.ExpectColumnValuesToMatchRegex(column="source_id", regex=SOURCE_ID_REGEX),
        ex.ExpectColumnValuesToMatchRegex(column="pixel_sha256", regex=SHA256_REGEX),
        *[
            ex.ExpectColumnValuesToMatchRegex(column=c, regex=UID_REGEX)
            for c in ("study_uid", "series_uid", "sop_uid")
        ],
        ex.ExpectColumnValuesToMatchRegex(column="site", regex=SITE_REGEX),
        ex.ExpectColumnValuesToBeInSet(
            column="modality",
            value_set=list(cfg.allowed_modalities),
            meta=_keys(set="validate.allowed_modalities"),
        ),
        ex.ExpectColumnValuesToBeInSet(column="photometric", value_set=list(PHOTOMETRIC)),
        *[
            ex.ExpectColumnValuesToBeBetween(
                column=c,
                min_value=cfg.min_spacing_mm,
                max_value=cfg.max_spacing_mm,
                meta=_keys(min="validate.min_spacing_mm", max="validate.max_spacing_mm"),
            )
            for c in ("pixel_spacing_row", "pixel_spacing_col")
        ],
        *[
            ex.ExpectColumnValuesToBeBetween(
                column=c,
                min_value=cfg.min_size,
                max_value=cfg.max_size,
                meta=_keys(min="validate.min_size", max="validate.max_size"),
            )
            for c in ("rows", "columns")
        ],
        ex.ExpectColumnValuesToBeBetween(column="frame", min_value=0),
        ex.ExpectColumnValuesToBeInSet(column="label", value_set=[-1, 0, 1]),
        ex.ExpectColumnValuesToBeInSet(
            column="official_split", value_set=["", "train", "val", "test"]
        ),
        # Candidate targets with a known range (empty values pass: a row may lack a target).
        *[
            ex.ExpectColumnValuesToBeBetween(
                column=c,
                min_value=lo,
                max_value=hi,
                meta=_keys(min=f"validate.target_ranges.{c}", max=f"validate.target_ranges.{c}"),
            )
            for c, (lo, hi) in sorted(cfg.target_ranges.items())
            if c in present and c not in MANIFEST_COLUMNS
        ],
    ]
    schema = [
        ex.ExpectColumnValuesToNotBeInSet(
            column="column_name", value_set=identifying_column_names()
        ),
        ex.ExpectColumnValuesToNotMatchRegex(column="extra_column", regex=PATH_COLUMN_REGEX),
        ex.ExpectColumnValuesToBeInSet(column="extra_numeric", value_set=[1.0]),
        # only declared targets beyond the contract (ingest drops every other labels column)
        ex.ExpectColumnValuesToBeInSet(
            column="extra_column",
            value_set=sorted({c.lower() for c in cfg.target_ranges}),
            meta=_keys(set="validate.target_ranges"),
        ),
    ]
    labels = [
        ex.ExpectTableRowCountToBeBetween(min_value=2),
        ex.ExpectColumnMeanToBeBetween(
            column="positive",
            min_value=cfg.min_positive_fraction,
            max_value=cfg.max_positive_fraction,
            meta=_keys(min="validate.min_positive_fraction", max="validate.max_positive_fraction"),
        ),
    ]
    pixels = [
        ex.ExpectColumnValuesToBeBetween(column="nonfinite_pixels", min_value=0, max_value=0),
        ex.ExpectColumnValuesToBeBetween(column="pixel_std", min_value=0, strict_min=True),
        *[
            ex.ExpectColumnValuesToBeBetween(
                column=c,
                min_value=lo_hu,
                max_value=hi_hu,
                meta=_keys(min="validate.ct_hu_range", max="validate.ct_hu_range"),
            )
            for c in ("ct_pixel_min", "ct_pixel_max")
        ],
        ex.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="pixel_max", column_B="pixel_mean", or_equal=True
        ),
        ex.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="pixel_mean", column_B="pixel_min", or_equal=True
        ),
        ex.ExpectColumnValuesToBeInSet(column="pixel_file_ok", value_set=[1]),
        ex.ExpectColumnValuesToBeInSet(column="sample_stats_match", value_set=[1.0]),
    ]
    notes = {
        "manifest": "Contract of manifest.parquet (docs/stages.md): columns, ids, ranges.",
        "schema": (
            "No column named after an identifying DICOM attribute or a file path (e.g. "
            "source_file); columns beyond the contract are numeric targets declared in "
            "validate.target_ranges."
        ),
        "labels": "Class balance among labelled images.",
        "pixels": (
            "Per-image pixel statistics: finite, in range, not blank; every image inside its "
            "shard (offset + rows x columns x 4 bytes within the file); a sample re-read "
            "matches its statistics."
        ),
    }
    groups = {"manifest": manifest, "schema": schema, "labels": labels, "pixels": pixels}
    return {
        name: gx.ExpectationSuite(name=f"radops_{name}", expectations=items, notes=notes[name])
        for name, items in groups.items()
    }
