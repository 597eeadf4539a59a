"""The ``series`` stage's entry point (``radops series``): the series volumes are built only
for a task whose samples are series (``Task.sample_unit``); for any other task the stage
writes its marked, empty folder at once. It lives here, above ``pipeline.data``, because the
data layer cannot ask the task (see ``pipeline/data/series_stage.py`` for the stage)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.data import series_stage
from pipeline.data.series_stage import Paths, SeriesResult
from pipeline.tasks import task_class

if TYPE_CHECKING:
    from pipeline.config import Params

__all__ = ["Paths", "SeriesResult", "run"]


def run(params: Params, paths: Paths) -> SeriesResult:
    """Build ``<series.out_dir>`` if ``task.kind`` reads series, else mark it skipped."""
    wanted = task_class(params.task.kind).sample_unit == "series"
    return series_stage.run(params, paths, wanted=wanted)
