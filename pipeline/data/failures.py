"""What a failed data contract says: the offending rows by ``source_id`` and the bound's key.

A failed row-level expectation names its offending rows by ``source_id`` (the keyed file
pseudonym; the way back to the file is the local linkage table under ``.radops/``) and the
``params.yaml`` key that sets the bound, e.g. ``rows 28 below validate.min_size = 32
(source_id F-…; 1 row)``. Numeric offending values are shown, text values never are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


MAX_NAMED = 5  # offending source_ids shown in a message (report.json keeps up to MAX_REPORTED)
MAX_REPORTED = 50


def unexpected_mask(entry: dict[str, Any], frame: pd.DataFrame) -> pd.Series | None:
    """The rows of ``frame`` that fail ``entry``'s expectation (GX semantics: empty values pass
    every check but the not-null one), or None for a table-level expectation."""
    import numpy as np
    import pandas as pd

    kind, kw = entry["expectation"], entry["kwargs"]
    column = kw.get("column")
    if column is not None and column not in frame.columns:
        return None
    values = frame[column] if column is not None else None
    if kind == "expect_column_values_to_not_be_null" and values is not None:
        return values.isna()
    if kind == "expect_column_values_to_be_between" and values is not None:
        number = pd.to_numeric(values, errors="coerce")
        bad = values.notna() & number.isna()
        if kw.get("min_value") is not None:
            low = number <= kw["min_value"] if kw.get("strict_min") else number < kw["min_value"]
            bad |= low
        if kw.get("max_value") is not None:
            bad |= number > kw["max_value"]
        return bad.fillna(False).astype(bool)
    if kind == "expect_column_values_to_be_in_set" and values is not None:
        return values.notna() & ~values.isin(list(kw.get("value_set") or []))
    if kind == "expect_column_values_to_not_be_in_set" and values is not None:
        return values.notna() & values.isin(list(kw.get("value_set") or []))
    if (
        kind
        in (
            "expect_column_values_to_match_regex",
            "expect_column_values_to_not_match_regex",
        )
        and values is not None
    ):
        text = values.astype("string")
        hit = text.str.contains(kw["regex"], regex=True).fillna(False).astype(bool)
        bad = hit if "_not_" in kind else ~hit
        return values.notna() & bad
    if kind == "expect_column_values_to_be_unique" and values is not None:
        return values.notna() & values.duplicated(keep=False)
    if kind == "expect_compound_columns_to_be_unique":
        cols = [c for c in kw.get("column_list") or [] if c in frame.columns]
        if len(cols) != len(kw.get("column_list") or []):
            return None
        return frame.duplicated(subset=cols, keep=False)
    if kind == "expect_column_pair_values_a_to_be_greater_than_b":
        a = pd.to_numeric(frame[kw["column_A"]], errors="coerce")
        b = pd.to_numeric(frame[kw["column_B"]], errors="coerce")
        both = a.notna() & b.notna()
        return pd.Series(np.where(both, ~(a >= b), False), index=frame.index)
    return None


def offenders(
    entry: dict[str, Any], frames: dict[str, pd.DataFrame], manifest: pd.DataFrame
) -> dict[str, Any]:
    """What to name for a failed expectation: the offending rows' ``source_id`` (manifest and
    pixels batches, whose rows are the manifest's rows) or the offending column names (schema
    batch), and for a numeric bound the offending values (a few, never text)."""
    import pandas as pd
    from pandas.api.types import is_numeric_dtype

    frame = frames.get(entry["batch"])
    if frame is None or entry["batch"] not in ("manifest", "pixels", "schema"):
        return {}
    mask = unexpected_mask(entry, frame)
    if mask is None or not bool(mask.any()):
        return {}
    positions = [i for i, bad in enumerate(mask.to_numpy()) if bad]
    found: dict[str, Any] = {"offending_rows": len(positions)}
    if entry["batch"] == "schema":
        names = [str(manifest.columns[i]) for i in positions if i < len(manifest.columns)]
        return found | {"offending_columns": names}
    if "source_id" in manifest.columns and len(manifest) == len(frame):
        ids = manifest["source_id"].iloc[positions]
        found["source_ids"] = [str(v) for v in ids if isinstance(v, str) and _is_source_id(v)][
            :MAX_REPORTED
        ]
    column = entry["kwargs"].get("column")
    if entry["expectation"] == "expect_column_values_to_be_between" and column is not None:
        values = frame[column].iloc[positions]
        if is_numeric_dtype(values):
            number = pd.to_numeric(values, errors="coerce")
            lo, hi = entry["kwargs"].get("min_value"), entry["kwargs"].get("max_value")
            if lo is not None:
                found["below"] = sorted({float(v) for v in number[number < lo]})[:3]
            if hi is not None:
                found["above"] = sorted({float(v) for v in number[number > hi]})[:3]
    return found


def _is_source_id(value: str) -> bool:
    import re

    from pipeline.data.contracts import SOURCE_ID_REGEX

    return re.fullmatch(SOURCE_ID_REGEX, value) is not None


def _g(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def describe(entry: dict[str, Any]) -> str:
    kwargs, observed = entry["kwargs"], entry["observed"]
    target = kwargs.get("column") or kwargs.get("column_list") or ""
    if "column_A" in kwargs:
        target = f"{kwargs['column_A']} >= {kwargs['column_B']}"
    text = f"{entry['batch']}: {entry['expectation']}" + (f"({target})" if target else "")
    if observed.get("unexpected_count") is not None:
        text += f": {observed['unexpected_count']} of {observed.get('element_count', '?')} rows unexpected"
    elif observed.get("observed_value") is not None:
        text += f": observed {observed['observed_value']:.4g}"
        bound = _bound_text(entry, observed["observed_value"])
        if bound:
            text += f" ({bound})"
    for key in ("unexpected_columns", "missing_columns"):
        if observed.get(key):
            text += f"; {key.replace('_', ' ')}: {', '.join(observed[key])}"
    if entry.get("offending_columns"):
        text += f"; column(s): {', '.join(entry['offending_columns'])}"
    elif entry.get("offending_rows"):
        what = _bound_text(entry)
        n = entry["offending_rows"]
        ids = entry.get("source_ids") or []
        shown = ", ".join(ids[:MAX_NAMED]) + (", …" if len(ids) > MAX_NAMED else "")
        rows = f"{n} row{'s' if n != 1 else ''}"
        text += (
            ": "
            + (f"{what} " if what else "")
            + (f"(source_id {shown}; {rows})" if shown else f"({rows})")
        )
    if entry.get("error"):
        text += f" (could not evaluate: {entry['error']})"
    return text


def _bound_text(entry: dict[str, Any], observed: Any = None) -> str:
    """``rows 28 below validate.min_size = 32`` / ``modality not in validate.allowed_modalities``."""
    kwargs, keys = entry["kwargs"], entry.get("params") or {}
    column = kwargs.get("column", "value")
    parts = []
    for side, word, bound in (("min", "below", "min_value"), ("max", "above", "max_value")):
        limit = kwargs.get(bound)
        if limit is None:
            continue
        values = entry.get(word)
        if observed is not None:
            ok = observed >= limit if side == "min" else observed <= limit
            if ok:
                continue
            values = [observed]
        if not values:
            continue
        named = f"{keys[side]} = {_g(limit)}" if side in keys else _g(limit)
        shown = ", ".join(_g(v) for v in values)
        parts.append(f"{column} {shown} {word} {named}")
    if entry["expectation"] == "expect_column_values_to_be_in_set":
        allowed = kwargs.get("value_set") or []
        named = f"{keys['set']} = {list(allowed)}" if "set" in keys else f"{list(allowed)}"
        parts.append(f"{column} not in {named}")
    return "; ".join(parts)
