"""The skeleton every row-producing entry point shares (experiments.run, evaluate, recover): skip a run that has
finished, record its rows in ONE batch at the end, write its summary, end with one line.

A run id present in a rows file means that run finished (rows are written in one atomic batch when it ends), so a
rerun of a sweep skips every id there, and a killed run leaves nothing partial.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..atomic import write_json
from ..results import record_run, recorded, recorded_in
from .pieces import Pieces
from .protocol import summary_line


def finished_in(run_id: str, results_file: str, done_in: Iterable[str] = (), force: bool = False,
                sweep: str | None = None) -> str | None:
    """The rows file where this run already finished, or None: it must run. `done_in`: other rows files whose runs
    count (a sweep extending another one). `force` recomputes, except what the very sweep `sweep` has finished (a
    sweep over pruner × sparsity meets the dense run once per sparsity: it is the same run)."""
    if force:
        return results_file if sweep and recorded(run_id, results_file, sweep) else None
    found = recorded_in(run_id, [results_file, *done_in])
    return found[0] if found else None


def pieces_of(run: dict[str, Any], model, partial_dir: str | None, force: bool = False) -> Pieces:
    """The evaluation pieces an interrupted launch of the run `run` (its row columns) finished
    (nirvana.evaluation.pieces), to be reused; `force` (recompute the run) forgets them first."""
    pieces = Pieces(partial_dir, run, model)
    if force:
        pieces.clear()
    return pieces


def finish(log: logging.Logger, run: dict[str, Any], rows: list[dict], out_dir: str | Path, results_file: str,
           seconds: float, summary: dict[str, Any], summary_dir: str | Path | None = None,
           headline: list[dict] | None = None, pieces: Pieces | None = None) -> list[dict]:
    """Append the rows (one batch) to `results_file` and the run folder, write summary.json (in `summary_dir`,
    default the run folder) and log the run's one-line summary (of the `headline` rows, default all). `pieces`: the
    run's kept evaluation pieces, named in the summary where reused, and removed now that the rows are recorded."""
    record_run(rows, Path(out_dir), results_file)
    if pieces is not None and pieces.reused:
        summary = summary | {"resumed": pieces.reused}
    write_json(Path(summary_dir or out_dir) / "summary.json",
               {"run_id": run["run_id"], **summary, "rows": len(rows), "seconds": round(seconds, 1)})
    if pieces is not None:
        pieces.clear()
    log.info(summary_line(run, rows if headline is None else headline, seconds, results_file))
    return rows
