"""What users see, in a real browser (Playwright + Debian's Chromium), against the real stack
of tests/stack/fixtures.py after one scheduled retraining ran through the work pool.

MLflow 3.17's UI opens an experiment on the GenAI "Overview" unless the workflow is "Model
training": the ``mlflow.experimentKind`` tag is ignored by this UI version (its workflow
switch wins, default GenAI), so radops links carry ``?workflowType=machine_learning``
(``pipeline.tracking.ui_link``), which these tests follow as a user would.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from pipeline.tracking import ui_link
from tests.stack.fixtures import RunningStack

pytestmark = [pytest.mark.stack, pytest.mark.slow, pytest.mark.ui]
TIMEOUT_MS = 60_000


def _runs(running_stack: RunningStack) -> tuple[str, dict[str, Any]]:
    import mlflow

    uri = running_stack.settings["MLFLOW_TRACKING_URI"]
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("radops")
    assert experiment is not None
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    return experiment.experiment_id, runs


def test_mlflow_ui_shows_a_pipeline_runs_models_datasets_and_nested_trials(
    running_stack: RunningStack, page: Any
) -> None:
    from playwright.sync_api import expect

    url = running_stack.settings["MLFLOW_TRACKING_URI"]
    experiment_id, runs = _runs(running_stack)
    page.goto(ui_link(url, experiment_id))
    expect(page.get_by_role("heading", name="Runs")).to_be_visible(timeout=TIMEOUT_MS)
    for name in ("cnn", "baseline-svm", "tune"):
        expect(page.get_by_role("link", name=name, exact=True)).to_be_visible(timeout=TIMEOUT_MS)
    # the Dataset column: each split with the data version as digest
    version = runs["cnn"].data.tags["radops.data_version"]
    expect(page.get_by_role("button", name=f"test ({version})").first).to_be_visible()
    # the trials are nested under the tuning run: expand it
    tune_cell = page.get_by_role("gridcell").filter(
        has=page.get_by_role("link", name="tune", exact=True)
    )
    tune_cell.get_by_role("button").click()
    for trial in ("trial-0", "trial-1"):
        expect(page.get_by_role("link", name=trial, exact=True)).to_be_visible(timeout=TIMEOUT_MS)

    for name in ("cnn", "baseline-svm"):
        page.goto(ui_link(url, experiment_id, runs[name].info.run_id))
        expect(page.get_by_text("test_auc", exact=True).first).to_be_visible(timeout=TIMEOUT_MS)
        auc = f"{runs[name].data.metrics['test_auc']:.4g}"[:5]
        expect(page.get_by_text(re.compile(re.escape(auc))).first).to_be_visible()


def test_mlflow_ui_shows_the_registered_model_with_its_champion_alias(
    running_stack: RunningStack, page: Any
) -> None:
    from playwright.sync_api import expect

    url = running_stack.settings["MLFLOW_TRACKING_URI"]
    page.goto(f"{url}/#/models/radops-classifier?workflowType=machine_learning")
    expect(page.get_by_text("radops-classifier").first).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.get_by_text(re.compile(r"^@?\s*champion$")).first).to_be_visible(timeout=TIMEOUT_MS)


def test_prefect_ui_shows_the_deployment_schedule_and_a_completed_run(
    running_stack: RunningStack, page: Any
) -> None:
    import httpx
    from playwright.sync_api import expect

    api = running_stack.settings["PREFECT_API_URL"]
    ui = api.removesuffix("/api")
    # the UI's API URL follows the server's port (not Prefect's default 4200)
    assert httpx.get(f"{ui}/ui-settings", timeout=10).json()["api_url"] == api

    page.goto(f"{ui}/deployments")
    # the UI asks once for the API auth string (.radops/prefect-api-auth)
    page.locator("input[type=password]").fill(running_stack.settings["PREFECT_API_AUTH_STRING"])
    page.keyboard.press("Enter")
    expect(page.get_by_text(running_stack.deployment_name).first).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.get_by_text("At 01:30 AM every day").first).to_be_visible()  # 30 1 * * *
    page.goto(f"{ui}/runs")
    expect(page.get_by_text("radops-retrain").first).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.get_by_text(running_stack.flow_run.name).first).to_be_visible()
    expect(page.get_by_text("Completed").first).to_be_visible(timeout=TIMEOUT_MS)
