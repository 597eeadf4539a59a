"""Token-style secrets never reach params, dvc.lock or MLflow (issue 21, item 7).

A query key such as ``auth_token``, ``client_secret`` or ``sig`` holds a secret, and so does
the user part of any HTTP(S) URL (``https://<token>@host`` as well as ``user:pw@``). The
config loader looks at every string of the params tree, not only the known URL settings, and
refuses such a value naming the key but never showing the value; logs and MLflow params get
them redacted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.config import load_params
from pipeline.credentials import password_in, redact_text, redact_url
from pipeline.errors import SecretError
from pipeline.tracking import safe_param

REPO = Path(__file__).resolve().parents[2]

# (dotted key, value, the secret in it)
PLANTED = [
    ("data.dicom_dir", "https://pacs.example.net/export?auth_token=Vq7cTz0pLm", "Vq7cTz0pLm"),
    ("data.labels_csv", "https://idp.example.net/t.csv?client_id=a&client_secret=K9xx-31", "K9xx-31"),
    ("base.experiment_name", "see https://blob.example.net/c/f?sv=2024&sig=Ab%2Fcd9Q%3D", "Ab%2Fcd9Q%3D"),
    ("base.tracking_uri", "https://tok_4f1e9a22d@mlflow.example.net/", "tok_4f1e9a22d"),
    ("tune.storage", "https://dora:Pl4in-Pw@optuna.example.net/db", "Pl4in-Pw"),
    ("base.registered_model_name", "git+https://ghx_77abc@git.example.net/m.git", "ghx_77abc"),
]  # fmt: skip


def _params_file(tmp_path: Path, dotted: str, value: Any) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    section, key = dotted.split(".")
    raw[section][key] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(("dotted", "value", "secret"), PLANTED)
def test_any_field_with_a_token_secret_is_refused_without_echo(
    tmp_path: Path, dotted: str, value: str, secret: str
) -> None:
    with pytest.raises(SecretError) as err:
        load_params(_params_file(tmp_path, dotted, value))
    message = str(err.value)
    assert dotted in message and secret not in message and "value not shown" in message


def test_a_secret_in_a_list_item_or_an_override_is_refused(tmp_path: Path) -> None:
    listed = ["site", "https://x.example.net/q?X-Amz-Signature=f00dcafe&X-Amz-Date=1"]
    with pytest.raises(SecretError, match=r"evaluate\.subgroup_columns\[1\]") as err:
        load_params(_params_file(tmp_path, "evaluate.subgroup_columns", listed))
    assert "f00dcafe" not in str(err.value)
    with pytest.raises(SecretError) as err:  # `-S` / `dvc exp run -S` go through the same check
        load_params(
            REPO / "params.yaml",
            {"baseline.out_dir": "https://svc.example.net/o?refresh_token=rT-55e"},
        )
    assert "rT-55e" not in str(err.value) and "baseline.out_dir" in str(err.value)


@pytest.mark.parametrize(("dotted", "value", "secret"), PLANTED)
def test_logs_and_mlflow_params_redact_token_secrets(dotted: str, value: str, secret: str) -> None:
    assert password_in(value.split()[-1])
    assert secret not in redact_text(f"failed to open {value} (403)")
    assert secret not in safe_param(dotted, value)
    assert secret not in redact_url(value.split()[-1])


def test_secret_named_params_are_masked_and_harmless_urls_kept() -> None:
    assert safe_param("x.client_secret", "plain-value") == "***"
    assert safe_param("x.auth_token", "plain-value") == "***"
    assert safe_param("base.secret_key_path", ".radops/pseudonym.key") == ".radops/pseudonym.key"
    for url in (
        "https://mlflow.example.net/#/experiments?design=2&signal=1",
        "http://127.0.0.1:5000",
        "postgresql://alice@db.example.org/optuna",  # PGPASSWORD / ~/.pgpass hold the password
    ):
        assert password_in(url) is None and redact_url(url) == url
    load_params(REPO / "params.yaml")  # the shipped file passes
