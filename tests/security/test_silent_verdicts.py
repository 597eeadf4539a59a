"""Silent wrong verdicts and unclear failures (issue 21, item 6: monitor input, -S values,
duplicate keys in params.yaml).

* ``radops monitor`` on a missing folder, or one without files, fails (exit 3), and the
  retraining flow's drift gate fails with it instead of reading "no drift".
* A malformed ``-S`` value is one line and exit code 2, which the flows treat as permanent.
* A key written twice in ``params.yaml`` (a section or a key inside one) is refused, naming
  the key and its lines.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.errors import ConfigError, InputError, is_permanent
from tests.conftest import build_params


def _radops(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    code = "from pipeline.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


# --------------------------------------------------------------------------- monitor


@pytest.mark.parametrize("kind", ["missing", "only-folders"])
def test_monitor_on_a_missing_or_empty_batch_fails(tmp_path: Path, kind: str) -> None:
    from pipeline.monitoring import monitor

    batch = tmp_path / "inbox-2026-12" / "scans"
    if kind == "only-folders":
        (batch / "ward-b" / "empty").mkdir(parents=True)
    params = build_params(tmp_path, monitor={"incoming_dir": str(batch)})
    paths = monitor.Paths.from_params(params)
    with pytest.raises(InputError, match="no drift verdict") as err:
        monitor.run(params, paths)
    assert str(batch) in str(err.value)
    assert not paths.out_dir.exists()  # no report that a reader could take for "none"


def test_monitor_cli_exit_code_on_a_misspelt_batch_folder(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("{}\n")
    done = _radops("monitor", "--input", str(tmp_path / "incomming"), cwd=tmp_path)
    assert done.returncode == InputError.exit_code, done.stderr
    assert "does not exist" in done.stderr and "Traceback" not in done.stderr


def test_drift_gate_does_not_read_a_missing_batch_as_no_drift(tmp_path: Path) -> None:
    from flows.drift_gate import monitor_incoming

    missing = tmp_path / "nightly-drop"
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump({"monitor": {"incoming_dir": str(missing)}})
    )
    with pytest.raises(InputError, match="does not exist"):
        monitor_incoming.fn(str(tmp_path))


# --------------------------------------------------------------------------- -S values


@pytest.mark.parametrize(
    "item",
    [
        "tune.n_trials",  # no '='
        "split.val_ratio=[0.1",  # YAML cannot read it
        "qa.contamination=@high",
        "base.seed=!!python/name:os.getcwd ''",
        "=7",
        "train..max_epochs=3",
    ],
)
def test_malformed_set_value_is_one_line_and_permanent(tmp_path: Path, item: str) -> None:
    (tmp_path / "params.yaml").write_text("{}\n")
    done = _radops("split", "-S", item, cwd=tmp_path)
    assert done.returncode == ConfigError.exit_code and is_permanent(done.returncode)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("radops: error: -S "), done.stderr


def test_set_value_of_the_wrong_type_is_one_line_and_permanent(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("{}\n")
    done = _radops("split", "-S", "split.val_ratio=ten percent", cwd=tmp_path)
    assert done.returncode == ConfigError.exit_code, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "split.val_ratio" in lines[0], done.stderr


def test_parse_overrides_raises_config_error() -> None:
    from pipeline.cli import parse_overrides

    assert parse_overrides(["split.val_ratio=0.2"]) == {"split.val_ratio": 0.2}
    with pytest.raises(ConfigError, match=r"expected section\.key=value"):
        parse_overrides(["split.val_ratio"])
    with pytest.raises(ConfigError, match="cannot be read"):
        parse_overrides(["split.val_ratio={"])


# --------------------------------------------------------------------------- duplicate keys


def test_a_section_written_twice_is_refused(tmp_path: Path) -> None:
    from pipeline.config import load_params

    params = tmp_path / "params.yaml"
    params.write_text(
        "split:\n  val_ratio: 0.2\n\nqa:\n  contamination: 0.02\n\nsplit:\n  test_ratio: 0.2\n"
    )
    with pytest.raises(ConfigError) as err:
        load_params(params)
    message = str(err.value)
    assert "'split'" in message and "line 7" in message and "line 1" in message


def test_a_key_written_twice_inside_a_section_is_refused(tmp_path: Path) -> None:
    from pipeline.config import load_params

    params = tmp_path / "params.yaml"
    params.write_text("qa:\n  contamination: 0.02\n  action: report\n  contamination: 0.3\n")
    with pytest.raises(ConfigError, match=r"line 4: key 'contamination'.*first on line 2"):
        load_params(params)
    done = _radops("split", cwd=tmp_path)
    assert done.returncode == ConfigError.exit_code
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_shipped_params_file_has_no_duplicate_keys() -> None:
    from pipeline import catalog
    from pipeline.yaml_strict import safe_load_strict

    text = (Path(__file__).parents[2] / catalog.PARAMS_FILE).read_text()
    assert safe_load_strict(text) == yaml.safe_load(text)
