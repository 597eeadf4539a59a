"""Issue 8 §4: ingest checks an image's size from its header before decoding (or inflating)
it, and quarantines what exceeds ``ingest.max_megapixels``; peak memory stays small."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, generate_uid

from pipeline.config import IngestSection
from pipeline.data import ingest
from tests.conftest import write_dicom

SIDE = 16384  # 16384 × 16384 × 16 bit: 512 MiB of pixels, 1 GiB as float32


def deflate_bomb(path: Path, side: int = SIDE, nbytes: int | None = None) -> None:
    """A small Deflated Explicit VR Little Endian file declaring ``side`` × ``side`` pixels
    (all zero; ``nbytes`` of pixel data, by default as many as declared), written without
    ever holding the pixels in memory."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.7")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID = "OT", "BOMB0001"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = side
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 0
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)  # header only, deflated by pydicom
    data = buffer.getvalue()
    meta_end = 132 + 12 + int.from_bytes(data[140:144], "little")  # group length element
    body = zlib.decompress(data[meta_end:], -zlib.MAX_WBITS)
    nbytes = side * side * 2 if nbytes is None else nbytes
    pixel_header = b"\xe0\x7f\x10\x00OW\x00\x00" + nbytes.to_bytes(4, "little")
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    with path.open("wb") as fh:
        fh.write(data[:meta_end])
        fh.write(packer.compress(body + pixel_header))
        zeros = bytes(1 << 22)
        for _ in range(nbytes // len(zeros)):
            fh.write(packer.compress(zeros))
        fh.write(packer.compress(bytes(nbytes % len(zeros))))
        fh.write(packer.flush())


SCRIPT = """
import json, sys
from pipeline.data import ingest
result = ingest.ingest_folder(sys.argv[1], sys.argv[2], bytes(range(32)), None, 1)
# VmHWM: this process's own peak (ru_maxrss would carry the forking pytest's peak over exec)
status = open("/proc/self/status").read().split("VmHWM:")[1].split()
peak = int(status[0]) * 1024
print(json.dumps({"peak": peak, "reasons": result.reasons}))
"""


def test_a_deflate_bomb_is_quarantined_from_its_header_with_small_peak_memory(
    tmp_path: Path,
) -> None:
    (tmp_path / "in").mkdir()
    deflate_bomb(tmp_path / "in/bomb.dcm")
    assert (tmp_path / "in/bomb.dcm").stat().st_size < 1 << 20  # ~0.5 MB on disk
    write_dicom(tmp_path / "in/normal.dcm", np.zeros((16, 16), np.int16))
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "in"), str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    reason = "too large: 268.4 megapixels, limit 64 (ingest.max_megapixels)"
    assert got["reasons"] == {reason: 1}
    assert pd.read_csv(out / "quarantine.csv")["reason"].tolist() == [reason]
    assert len(pd.read_parquet(out / "manifest.parquet")) == 1
    assert sum(p.stat().st_size for p in (out / "pixels").iterdir()) == 16 * 16 * 4
    # The interpreter with pandas, pydicom and numpy loaded is ~150-250 MiB; decoding the bomb
    # would need 512 MiB of inflated bytes plus a 1 GiB float32 copy.
    assert got["peak"] < 400 * 2**20, got["peak"] / 2**20


def test_the_limit_is_a_param_and_bounds_frames_and_bits(tmp_path: Path) -> None:
    assert IngestSection().max_megapixels == 64
    write_dicom(tmp_path / "in/frames", np.zeros((5, 40, 50), np.uint8), modality="OT")
    write_dicom(tmp_path / "in/small.dcm", np.zeros((40, 50), np.int16))
    write_dicom(tmp_path / "in/wide_bits.dcm", np.zeros((4, 4), np.int16), BitsAllocated=128)
    result = ingest.ingest_folder(tmp_path / "in", tmp_path / "out", bytes(range(32)),
                                  max_megapixels=0.008)  # fmt: skip
    assert result.reasons == {
        "too large: 0.01 megapixels, limit 0.008 (ingest.max_megapixels)": 1,  # 5 × 40 × 50
        "unsupported: 128 bits allocated (at most 64)": 1,
    }
    assert result.files_ingested == 1


def test_a_deflated_file_larger_than_its_header_says_is_not_inflated(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    deflate_bomb(tmp_path / "in/liar.dcm", side=64, nbytes=64 << 20)  # 64 MiB for 8 KiB
    result = ingest.ingest_folder(tmp_path / "in", tmp_path / "out", bytes(range(32)))
    assert result.reasons == {"deflated data set larger than its header declares (not inflated)": 1}
