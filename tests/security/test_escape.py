"""Issue 21 §5: header values and file names are escaped where each format is written."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from pipeline.escape import md_text
from pipeline.evaluation import report as rep
from pipeline.io import read_csv, write_csv
from pipeline.monitoring import drift_report
from pipeline.monitoring.qa import cluster_table, cluster_warnings
from pipeline.monitoring.report import _table

HOSTILE = "Globex <img src=x onerror=alert(2)> | `rm` [x](javascript:y)\n# head"


def _cells(line: str) -> list[str]:
    return line.strip().strip("|").split("|")


def _tables_are_rectangular(text: str) -> None:
    assert "<img" not in text and "javascript:y)" not in text.replace("&#93;(javascript", "")
    block: list[str] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append(line)
        elif block:
            widths = {len(_cells(row)) for row in block}
            assert len(widths) == 1, block
            block = []


def test_evaluation_report_keeps_a_hostile_manufacturer_in_its_cell() -> None:
    sub = pd.DataFrame(
        {"model": ["cnn"], "attribute": ["manufacturer"], "group": [HOSTILE], "n": [3],
         "n_positive": [1], "auc": [0.5], "sensitivity": [0.5], "specificity": [0.5]}
    )  # fmt: skip
    _tables_are_rectangular(rep.render_markdown({"cnn": {"test_auc": 0.9}}, "t", {}, sub, 0.95, 9))


def test_qa_cluster_table_and_warning_escape_the_manufacturer() -> None:
    index = pd.DataFrame({"site": ["SITE-a"] * 6, "manufacturer": [HOSTILE] * 5 + ["Initech"],
                          "label": [0, 1] * 3})  # fmt: skip
    table = cluster_table(index, pd.Series([0] * 6).to_numpy())
    text = (
        _table(table) + "\n\n- " + "\n- ".join(md_text(w) for w in cluster_warnings(table, 0.5, 1))
    )
    _tables_are_rectangular(text)
    assert "\n# head" not in text


def test_drift_report_escapes_new_metadata() -> None:
    doc = {"verdict": "warn", "images": 3, "reasons": [f"metadata: new manufacturer: {HOSTILE}"]}
    text = drift_report.markdown(doc, None)
    _tables_are_rectangular(text)
    assert "\n# head" not in text


def test_csv_cells_from_file_names_are_not_formulas(tmp_path: Path) -> None:
    names = ['=HYPERLINK("http://x")', "+SUM(1)", "-2+3", "@cmd", "\tx.dcm", "'q.dcm"]
    out = write_csv(tmp_path / "p.csv", pd.DataFrame({"source_file": names, "p": [-0.5] * 6}))
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert all(r["source_file"].startswith("'") for r in rows)
    assert all(float(r["p"]) == -0.5 for r in rows)  # numbers stay numeric
    assert read_csv(out)["source_file"].tolist() == names


def test_model_card_data_table_keeps_a_hostile_manufacturer_in_its_cell(tmp_path: Path) -> None:
    from pipeline import catalog
    from pipeline.registry.card import _md_table, data_counts

    for split in ("train", "val", "test"):
        pd.DataFrame(
            {"site": ["SITE-1", "SITE-2"], "manufacturer": [HOSTILE, "Initech |"],
             "label": [0, 1]}
        ).to_parquet(catalog.split_file(tmp_path, split, catalog.INDEX_SUFFIX))  # fmt: skip
    table, per_split = data_counts(tmp_path, "label")
    assert per_split == {"train": 2, "val": 2, "test": 2}
    text = _md_table(table)
    _tables_are_rectangular(text)
    assert "\n# head" not in text and "Initech" in text
