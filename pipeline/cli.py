"""The ``radops`` command line: one subcommand per stage, each a thin call to ``<stage>.run``.

Stage modules (and their heavy libraries) are imported only when their command runs, so
``radops --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline import catalog
from pipeline.errors import ConfigError, RadopsError

app = typer.Typer(
    help="radops: DICOM folder in; validated data, tuned model, evaluation and registry out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="params.yaml to read.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-S", help="Override a parameter, e.g. -S train.lr=3e-4 (repeatable)."),
]
log = logging.getLogger("radops")
# When set (by the Prefect flows), the CLI writes its exit code for an explained failure to
# this file: `dvc repro` does not pass a command's exit code through.
EXIT_STATUS_ENV = "RADOPS_EXIT_STATUS_FILE"
# A command line that cannot be parsed is a configuration error: permanent, like ConfigError.
USAGE_EXIT_CODE = ConfigError.exit_code

# Which library module runs each subcommand (imported only when its command runs).
STAGE_MODULES = {
    "synth": "pipeline.data.synth",
    "ingest": "pipeline.data.ingest",
    "validate": "pipeline.data.validate",
    "split": "pipeline.data.split",
    "plan": "pipeline.data.plan",
    "preprocess": "pipeline.data.preprocess",
    "series": "pipeline.tasks.series_stage",  # asks the task whether it reads series
    "tune": "pipeline.training.tune",
    "train": "pipeline.training.train",
    "baseline": "pipeline.baselines.stage",  # asks the task for its baseline model
    "evaluate": "pipeline.evaluation.evaluate",
    "register": "pipeline.registry.register",
    "promote": "pipeline.registry.promote",
    "predict": "pipeline.serving.predict",
    "qa": "pipeline.monitoring.qa",
    "monitor": "pipeline.monitoring.monitor",
}


class OverrideError(ConfigError):
    """A malformed ``-S`` pair: a usage error, so its one line also says how ``-S`` is used."""

    def __init__(self, message: str) -> None:
        super().__init__(f"{message}. Usage: radops STAGE -S section.key=value ...")


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """Parse ``key=value`` pairs; values are read as YAML (numbers, booleans, lists).

    A pair without ``=`` or a value YAML cannot read is a :class:`ConfigError` (one line,
    exit code 2: permanent, so the flows do not retry it)."""
    import yaml

    overrides: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or "" in key.strip().split("."):
            raise OverrideError(f"-S {item!r}: expected section.key=value, e.g. -S train.lr=3e-4")
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            problem = str(getattr(exc, "problem", None) or "not a YAML value")
            raise OverrideError(
                f"-S {key.strip()}=...: the value cannot be read ({problem}); quote text, "
                "e.g. -S 'train.name=\"a: b\"'"
            ) from None
    return overrides


def run_stage(
    stage: str,
    params_path: Path,
    sets: list[str] | None,
    param_overrides: dict[str, Any] | None = None,
    **path_overrides: Any,
) -> Any:
    """Load params, build the stage's paths (with overrides), run it and print its summary."""
    from pipeline.catalog import STAGE_IO, output_kind, stage_io
    from pipeline.config import load_params
    from pipeline.io import check_output, check_outputs

    overrides = parse_overrides(sets) | {
        k: v for k, v in (param_overrides or {}).items() if v is not None
    }
    params = load_params(params_path, overrides)
    from pipeline.tasks import get_task

    get_task(params)  # fail fast: task.kind is registered, its loss and task.* keys fit it
    module = importlib.import_module(STAGE_MODULES[stage])
    paths = module.Paths.from_params(params)
    changes = {k: v for k, v in path_overrides.items() if v is not None}
    if changes:
        paths = dataclasses.replace(paths, **changes)
    # Refuse outputs over, above or inside an input, or at /, home or the project folder,
    # before anything is read or written (pipeline/io.py writes only what radops created).
    inputs, outputs = stage_io(stage, paths)
    check_outputs(outputs, inputs)
    for field in STAGE_IO[stage][1]:
        if getattr(paths, field, None) is not None:
            check_output(getattr(paths, field), output_kind(stage, field))
    result = module.run(params, paths)
    summary = getattr(result, "summary", None)
    if callable(summary):
        typer.echo(summary())
    return result


@app.command()
def synth(
    out: Annotated[Path | None, typer.Option(help="Output folder (dicom/ and labels.csv).")] = None,
    patients: Annotated[int | None, typer.Option(help="Number of patients.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (same seed, same bytes).")] = None,
    params: ParamsOpt = catalog.PARAMS_FILE,
    set_: SetOpt = None,
) -> None:
    """Write a synthetic DICOM cohort and its labels file."""
    run_stage("synth", params, set_, {"synth.patients": patients, "synth.seed": seed}, out_dir=out)


@app.command()
def ingest(
    input: Annotated[Path | None, typer.Option("--input", help="DICOM folder.")] = None,
    labels: Annotated[Path | None, typer.Option(help="Labels CSV.")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder.")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes.")] = None,
    params: ParamsOpt = catalog.PARAMS_FILE,
    set_: SetOpt = None,
) -> None:
    """Read, de-identify and store every image; quarantine every file that cannot be used."""
    run_stage(
        "ingest",
        params,
        set_,
        {"ingest.workers": workers},
        input_dir=input,
        labels_csv=labels,
        out_dir=out,
    )


def _simple_stage(stage: str, doc: str) -> None:
    def command(params: ParamsOpt = catalog.PARAMS_FILE, set_: SetOpt = None) -> None:
        run_stage(stage, params, set_)

    command.__doc__ = doc
    app.command(name=stage)(command)


for _stage, _doc in [
    ("validate", "Check the data contracts (Great Expectations); non-zero exit on failure."),
    ("split", "Patient-grouped, label-stratified train/val/test split with a leakage check."),
    ("plan", "Fingerprint the dataset; resolve every auto parameter with its reason."),
    ("preprocess", "Window, resize, denoise and normalise (statistics from train only)."),
    ("qa", "Data QA: PCA, k-means and isolation-forest outliers; report or exclude odd images."),
    ("series", "Assemble, split and preprocess CT series (task.kind series_classification)."),
    ("tune", "Optuna study over the search space in params.yaml, on the validation split."),
    ("train", "Train the CNN with early stopping; save it without pickle; log to MLflow."),
    ("baseline", "Hand-crafted features, feature selection and a kernel SVM."),
    ("evaluate", "Test-set evaluation of the CNN and the baseline, once; plots and metrics."),
    ("register", "Register the evaluated model as a new version in the MLflow registry."),
    ("promote", "Alias the registered version champion if it beats the champion, else challenger."),
]:
    _simple_stage(_stage, _doc)


@app.command()
def predict(
    model: Annotated[str, typer.Option(help="Model URI, e.g. models:/radops-classifier@champion.")],
    input: Annotated[Path, typer.Option("--input", help="DICOM folder to score.")],
    out: Annotated[Path, typer.Option(help="Predictions CSV.")],
    params: ParamsOpt = catalog.PARAMS_FILE,
    set_: SetOpt = None,
    tta: Annotated[
        str | None,
        typer.Option(
            help="Test-time augmentation: auto, none, flips, flips_shifts (default: evaluate.tta)."
        ),
    ] = None,
) -> None:
    """Score new DICOMs with a registered model (same ingest and preprocessing as training)."""
    run_stage(
        "predict",
        params,
        set_,
        {"evaluate.tta": tta},
        model_uri=model,
        input_dir=input,
        out_csv=out,
    )


@app.command()
def monitor(
    input: Annotated[Path, typer.Option("--input", help="DICOM folder of the new batch.")],
    out: Annotated[Path | None, typer.Option(help="Report folder (drift.md, drift.json).")] = None,
    model: Annotated[
        str | None, typer.Option(help="Model whose predictions are compared (default: champion).")
    ] = None,
    params: ParamsOpt = catalog.PARAMS_FILE,
    set_: SetOpt = None,
) -> None:
    """Compare a new batch with the training reference; print the drift verdict."""
    run_stage("monitor", params, set_, input_dir=input, out_dir=out, model_uri=model)


import_app = typer.Typer(
    help="Turn a public dataset format into a DICOM export + labels.csv that ingest reads.",
    no_args_is_help=True,
)
app.add_typer(import_app, name="import")
OutOpt = Annotated[Path, typer.Option("--out", help="Output folder (dicom/ and labels.csv).")]


@import_app.command("medmnist")
def import_medmnist(
    npz: Annotated[Path, typer.Argument(help="MedMNIST .npz file.")],
    out: OutOpt,
    modality: Annotated[str, typer.Option(help="DICOM modality of the images.")] = "US",
    spacing_mm: Annotated[float, typer.Option(help="Pixel spacing (mm).")] = 0.5,
    target: Annotated[str, typer.Option(help="Column for the class (label: binary).")] = "label",
) -> None:
    """MedMNIST .npz (official split in the split column) -> DICOM export + labels.csv."""
    from pipeline.data.importers import medmnist

    result = medmnist.run(npz, out, modality=modality, spacing_mm=spacing_mm, target=target)
    typer.echo(result.summary())


@import_app.command("images")
def import_images(
    folder: Annotated[Path, typer.Argument(help="Folder of PNG/JPEG/TIFF/GIF images.")],
    labels: Annotated[Path, typer.Option(help="CSV: image, label, mask, fov, patient_id, split.")],
    out: OutOpt,
    modality: Annotated[str, typer.Option(help="DICOM modality of the images.")] = "OT",
    spacing_mm: Annotated[float, typer.Option(help="Pixel spacing (mm).")] = 1.0,
    segment: Annotated[str, typer.Option(help="Segment name of the masks.")] = "lesion",
) -> None:
    """Images + CSV (masks -> BINARY DICOM SEG) -> DICOM export + labels.csv."""
    from pipeline.data.importers import images

    result = images.run(
        folder, labels, out, modality=modality, spacing_mm=spacing_mm, segment=segment
    )
    typer.echo(result.summary())


@import_app.command("nifti")
def import_nifti(
    folder: Annotated[Path, typer.Argument(help="Folder with imagesTr/ and labelsTr/.")],
    out: OutOpt,
    images_dir: Annotated[str, typer.Option(help="Volumes' folder in FOLDER.")] = "imagesTr",
    labels_dir: Annotated[str, typer.Option(help="Label maps' folder in FOLDER.")] = "labelsTr",
    modality: Annotated[str, typer.Option(help="DICOM modality of the volumes.")] = "MR",
    segment: Annotated[str, typer.Option(help="Segment name of the label maps.")] = "lesion",
) -> None:
    """NIfTI volumes + label maps -> DICOM series + BINARY SEG per slice, and labels.csv."""
    from pipeline.data.importers import nifti

    result = nifti.run(
        folder, out, images_dir=images_dir, labels_dir=labels_dir, modality=modality,
        segment=segment,
    )  # fmt: skip
    typer.echo(result.summary())


@app.command()
def clean(
    root: Annotated[Path, typer.Option(help="Project folder.")] = Path("."),
) -> None:
    """Remove exactly what radops wrote under data/, models/, reports/ (other files stay)."""
    from pipeline.ownership import clean as clean_outputs

    typer.echo(clean_outputs(root).summary())


def main() -> None:
    """Run the CLI: an explained failure prints ``radops: error: <message>`` (URLs redacted)
    and exits with its code; a usage error (unknown option, bad value) is reported by Click
    and exits 2 (``USAGE_EXIT_CODE``)."""
    from pipeline.credentials import install_log_redaction, redact_text

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    install_log_redaction()
    try:
        app()
    except RadopsError as exc:
        typer.echo(f"radops: error: {redact_text(str(exc))}", err=True)
        if status_file := os.environ.get(EXIT_STATUS_ENV):
            Path(status_file).write_text(f"{exc.exit_code}\n")
        sys.exit(exc.exit_code)
