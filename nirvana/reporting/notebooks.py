"""Execute the analysis notebooks headless (nbclient) against a results folder; keep .ipynb in sync with .py.

The percent-format `notebooks/<name>.py` is the source of truth (reviewable diffs); `notebooks/<name>.ipynb` is
its jupytext pair, committed without outputs. Execution reads the .py, so an unsynced .ipynb cannot be run by
mistake. The kernel gets the results folder as `NIRVANA_RESULTS` and the plans glob as `NIRVANA_PLANS`. A
notebook whose rows do not exist yet raises FileNotFoundError("no result rows …: produce them with `<command>`");
that is reported as skipped (with the command). Any other error fails it.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..paths import REPO_ROOT

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
MISSING_ROWS = "no result rows"


def notebook_sources(only: list[str] | None = None) -> list[Path]:
    sources = sorted(p for p in NOTEBOOK_DIR.glob("*.py") if not p.name.startswith("_"))
    if only:
        unknown = set(only) - {p.stem for p in sources}
        if unknown:
            raise ValueError(f"unknown notebook(s) {sorted(unknown)}; choose among {[p.stem for p in sources]}")
        sources = [p for p in sources if p.stem in only]
    return sources


def read_notebook(source: Path):
    import jupytext

    return jupytext.read(source, fmt="py:percent")


def sync(sources: list[Path]) -> list[Path]:
    """Write each .py's paired .ipynb (no outputs); returns the files that changed."""
    import jupytext

    changed = []
    for src in out_of_sync(sources):
        target = src.with_suffix(".ipynb")
        nb = read_notebook(src.with_suffix(".py"))
        for i, cell in enumerate(nb.cells):  # stable ids (nbformat draws random ones): no churn in diffs
            cell.id = f"cell-{i}"
        target.write_text(jupytext.writes(nb, fmt="ipynb"))
        changed.append(target)
    return changed


def out_of_sync(sources: list[Path]) -> list[Path]:
    """Notebooks whose committed .ipynb cells differ from their .py (outputs and metadata ignored)."""
    import jupytext

    stale = []
    for src in sources:
        pair = src.with_suffix(".ipynb")
        if not pair.exists():
            stale.append(pair)
            continue
        want = [(c.cell_type, c.source) for c in read_notebook(src).cells]
        have = [(c.cell_type, c.source) for c in jupytext.read(pair).cells]
        if want != have:
            stale.append(pair)
    return stale


@dataclass
class Outcome:
    name: str
    status: str  # ok | skipped | failed
    seconds: float
    message: str = ""
    output: Path | None = None


@contextmanager
def kernel_env(results: str | None, plans: str | None):
    """The kernel inherits this process's environment: set the inputs there for the duration of the run."""
    saved = {k: os.environ.get(k) for k in ("NIRVANA_RESULTS", "NIRVANA_PLANS", "MPLBACKEND")}
    try:
        if results:
            os.environ["NIRVANA_RESULTS"] = str(Path(results).resolve())
        if plans:
            os.environ["NIRVANA_PLANS"] = plans
        os.environ.pop("MPLBACKEND", None)  # let ipykernel use its inline backend so figures are captured
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def execute_one(source: Path, out_dir: Path | None, timeout: int = 600) -> Outcome:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = read_notebook(source)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(source.parent)}})
    t0 = time.perf_counter()
    status, message = "ok", ""
    try:
        client.execute()
    except CellExecutionError as e:
        if e.ename == "FileNotFoundError" and MISSING_ROWS in (e.evalue or ""):
            status, message = "skipped", e.evalue
        else:
            status, message = "failed", str(e)[-3000:]
    output = None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        output = out_dir / f"{source.stem}.ipynb"
        nbformat.write(nb, output)
    return Outcome(source.stem, status, time.perf_counter() - t0, message, output)


def execute_all(results: str | None = None, plans: str | None = None, out_dir: str | Path | None = None,
                only: list[str] | None = None, jobs: int = 1, timeout: int = 600) -> list[Outcome]:
    sources = notebook_sources(only)
    out = Path(out_dir) if out_dir is not None else None
    with kernel_env(results, plans):
        if jobs <= 1:
            return [execute_one(s, out, timeout) for s in sources]
        with ThreadPoolExecutor(max_workers=jobs) as pool:  # one kernel per notebook
            return list(pool.map(lambda s: execute_one(s, out, timeout), sources))
