"""How many DICOM files ingest takes or quarantines, by Photometric Interpretation.

Not a test: a measurement for colour support (issue 9 §7). Ingests every ``*.dcm`` under the
given folders (default: pydicom's bundled test files) into a temporary folder and prints, per
Photometric Interpretation, how many files were ingested and why the others were quarantined.

    python -m tests.data.photometric_census [FOLDER ...]
"""

from __future__ import annotations

import secrets
import shutil
import sys
import tempfile
import warnings
from collections import Counter
from pathlib import Path


def census(folders: list[Path]) -> Counter[tuple[str, str]]:
    import pandas as pd
    import pydicom

    from pipeline.data.ingest import ingest_folder

    files = sorted(f for folder in folders for f in folder.rglob("*.dcm"))
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        pi: dict[str, str] = {}
        for i, f in enumerate(files):
            name = f"file-{i:03d}.dcm"
            shutil.copyfile(f, src / name)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ds = pydicom.dcmread(f, stop_before_pixels=True, force=True)
                pi[name] = str(ds.get("PhotometricInterpretation", "(none)"))
            except Exception:
                pi[name] = "(unreadable)"
        sources = ingest_folder(src, Path(tmp) / "out", secrets.token_bytes(32)).sources
        quarantine = pd.read_csv(Path(tmp) / "out" / "quarantine.csv")
        names = quarantine["source_id"].map(sources)
        reasons = dict(zip(names, quarantine["reason"], strict=True))
        return Counter((pi[name], reasons.get(name, "ingested")) for name in pi)


def main(argv: list[str]) -> None:
    import pydicom

    folders = [Path(a) for a in argv] or [Path(pydicom.__file__).parent / "data" / "test_files"]
    counts = census(folders)
    total = sum(counts.values())
    photometric = sum(
        n for (_, reason), n in counts.items() if "photometric" in reason or "samples per" in reason
    )
    for (pi, reason), n in sorted(counts.items()):
        print(f"{n:4d}  {pi:<16} {reason}")
    print(f"{total} files; quarantined for photometric reasons: {photometric}")


if __name__ == "__main__":
    main(sys.argv[1:])
