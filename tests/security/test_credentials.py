"""Issue 8 §5: credentials never reach params.yaml (so dvc.lock), MLflow or the logs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import Params, load_params
from pipeline.credentials import (
    STORAGE_ENV,
    optuna_storage,
    password_in,
    redact_text,
    redact_url,
    tracking_uri_setting,
)
from pipeline.errors import SecretError

REPO = Path(__file__).resolve().parents[2]

# (url, the secret that must disappear, text that must survive)
AWKWARD = [
    ("postgresql://alice:p@ss@db.example.org:5432/optuna", "p@ss", "db.example.org:5432/optuna"),
    ("postgresql://alice:pa:ss@db.example.org/optuna", "pa:ss", "db.example.org/optuna"),
    ("postgresql://alice:pa/ss@db.example.org/optuna", "pa/ss", "db.example.org/optuna"),
    ("postgresql://alice:pa?ss@db.example.org/optuna", "pa?ss", "db.example.org/optuna"),
    ("postgresql://alice:s3cr#t@db.example.org/optuna", "s3cr#t", "db.example.org/optuna"),
    ("postgresql://alice@db.example.org/optuna?password=hunter2&sslmode=require", "hunter2",
     "sslmode=require"),
    ("postgresql+psycopg2://u:p%40ss@h:5432/db?sslpassword=k3ypass&connect_timeout=5", "p%40ss",
     "connect_timeout=5"),
    ("postgresql+psycopg2://u:p%40ss@h:5432/db?sslpassword=k3ypass&connect_timeout=5", "k3ypass",
     "h:5432/db"),
    ("https://bob:t0ken!@mlflow.example.org/", "t0ken!", "mlflow.example.org"),
    ("mysql://u:x@y@z@[::1]:3306/db", "x@y@z", "[::1]:3306/db"),
]  # fmt: skip
SAFE = [
    "sqlite:///.radops/optuna.db",
    "sqlite:////abs/path/optuna.db",
    "postgresql://alice@db.example.org/optuna",
    "postgresql://db.example.org/optuna?sslmode=require",
    "http://127.0.0.1:5000",
    "",
]


@pytest.mark.parametrize(("url", "secret", "kept"), AWKWARD)
def test_redaction_parses_awkward_urls(url: str, secret: str, kept: str) -> None:
    redacted = redact_url(url)
    assert secret not in redacted
    assert kept in redacted
    assert "***" in redacted
    assert password_in(url)
    assert secret not in redact_text(f"could not connect to {url} (timeout)")


@pytest.mark.parametrize("url", SAFE)
def test_urls_without_credentials_are_kept(url: str) -> None:
    assert redact_url(url) == url
    assert password_in(url) is None


def _project(tmp_path: Path, **overrides: str) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        raw[section][key] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(("key", "url", "secret"), [
    ("tune.storage", AWKWARD[0][0], AWKWARD[0][1]),
    ("tune.storage", AWKWARD[5][0], AWKWARD[5][1]),
    ("base.tracking_uri", AWKWARD[8][0], AWKWARD[8][1]),
])  # fmt: skip
def test_a_password_in_params_is_refused_with_where_to_put_it(
    tmp_path: Path, key: str, url: str, secret: str
) -> None:
    with pytest.raises(SecretError) as info:
        load_params(_project(tmp_path, **{key: url}))
    message = str(info.value)
    assert key in message and secret not in message
    assert ("RADOPS_OPTUNA_STORAGE" if key == "tune.storage" else "MLFLOW_TRACKING_URI") in message


def test_the_cli_refuses_a_password_and_never_prints_it(tmp_path: Path) -> None:
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    secret_url = AWKWARD[0][0]
    env = os.environ | {"PYTHONPATH": str(REPO)}
    code = "import sys; from pipeline.cli import main; sys.argv[0] = 'radops'; main()"
    result = subprocess.run(
        [sys.executable, "-c", code, "tune", "-S", f"tune.storage={secret_url}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == SecretError.exit_code, result.stderr[-2000:]
    assert "radops: error: params.yaml: tune.storage" in result.stderr
    assert "p@ss" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_credentials_come_from_the_environment_or_a_private_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(STORAGE_ENV, raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = Params()
    assert optuna_storage(params) == params.tune.storage
    assert tracking_uri_setting(params) == ""
    secret_file = tmp_path / ".radops" / "optuna-storage"
    secret_file.parent.mkdir()
    secret_file.write_text(AWKWARD[0][0] + "\n")
    secret_file.chmod(0o644)
    with pytest.raises(SecretError, match="readable by other users"):
        optuna_storage(params)
    secret_file.chmod(0o600)
    assert optuna_storage(params) == AWKWARD[0][0]
    monkeypatch.setenv(STORAGE_ENV, AWKWARD[5][0])
    assert optuna_storage(params) == AWKWARD[5][0]


def test_default_study_storage_is_not_a_package_named_folder() -> None:
    """A folder `optuna/` at the project root made ruff treat optuna as first-party."""
    storage = Params().tune.storage
    assert storage == "sqlite:///.radops/optuna.db"
    assert load_params(REPO / "params.yaml").tune.storage == storage
    assert "/optuna/" not in (REPO / ".gitignore").read_text()


def test_secrets_never_reach_mlflow_params_or_tags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    from pipeline.config import with_updates
    from pipeline.tracking import log_params_flat, tracked_run

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = with_updates(Params(), base={"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    secrets = [s for _, s, _ in AWKWARD]
    with pytest.raises(RuntimeError), tracked_run(params, "test") as run:
        log_params_flat(
            "tune",
            {
                "storage": AWKWARD[0][0],
                "nested": {"uri": AWKWARD[6][0], "db_password": "plainsecret"},
                "note": f"see {AWKWARD[5][0]}",
            },
        )
        mlflow.set_tag("radops.storage", redact_url(AWKWARD[2][0]))
        raise RuntimeError(f"cannot open {AWKWARD[4][0]}")
    data = MlflowClient().get_run(run.info.run_id).data
    logged = " ".join([*data.params.values(), *data.tags.values()])
    assert data.params["tune.nested.db_password"] == "***"
    assert "db.example.org:5432/optuna" in data.params["tune.storage"]
    for secret in [*secrets, "plainsecret"]:
        assert secret not in logged, secret
    assert "cannot open" in data.tags["radops.failure"]
    for secret in secrets:
        assert secret not in caplog.text


def test_log_redaction_as_the_cli_installs_it(tmp_path: Path) -> None:
    """Whatever a library logs through the CLI's log handler has its URLs redacted."""
    env = os.environ | {"PYTHONPATH": str(REPO)}
    code = (
        "import logging, sys; from pipeline import cli, credentials\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "credentials.install_log_redaction()\n"
        f"logging.getLogger('sqlalchemy').warning('cannot connect to %s', {AWKWARD[0][0]!r})\n"
        f"logging.getLogger('optuna').info({AWKWARD[5][0]!r})\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "cannot connect to postgresql://alice:***@db.example.org:5432/optuna" in result.stderr
    assert AWKWARD[0][1] not in result.stderr and AWKWARD[5][1] not in result.stderr
