"""The report layer: the self-contained HTML report of a run, and `run`, the pipeline followed by its report."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .. import pipeline
from ..distributed import RayOptions
from ..models import LanguageModel
from ..rundir import RunConfig
from ..storage import write_json
from .document import write_report

__all__ = ["run", "write_report"]

log = logging.getLogger(__name__)


def run(run_dir: str | Path, cfg: RunConfig, lm: LanguageModel | None = None, progress: bool = True,
        allow_drift: bool = False, ray: RayOptions | None = None) -> dict[str, Any]:
    """`pipeline.run` (every stage, resumable), then `report.html`; returns the summary with the report's path.

    A failing analysis must not cost the user the run: the report error is logged and the summary kept.
    """
    summary = pipeline.run(run_dir, cfg, lm=lm, progress=progress, allow_drift=allow_drift, ray=ray)
    try:
        summary["report"] = str(write_report(run_dir, lm))
    except Exception as exc:  # noqa: BLE001 - any analysis failure: keep the run, say how to retry
        log.warning("report not written (%s: %s); retry with `emovec report %s`", type(exc).__name__, exc, run_dir)
    else:
        write_json(Path(run_dir) / "summary.json", summary)
    return summary
