"""``radops import``: public dataset formats into a DICOM export and a labels file.

Each importer writes ``OUT/dicom/`` and ``OUT/labels.csv`` (``export``), which the normal,
strict ``radops ingest`` reads: nothing bypasses ingest, de-identification, validation or the
accounting. Importers: ``medmnist`` (MedMNIST ``.npz``), ``images`` (a folder of PNG/JPEG/TIFF/GIF
with a CSV, masks as DICOM SEG). User guide: docs/import.md.
"""
