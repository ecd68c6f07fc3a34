"""Wall time of the `make demo` job: the demo sweep (prune + evaluate every run) and its report, run exactly
as `make demo` runs them but into a scratch folder, with a cold score cache, so nothing is skipped as done."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from .isolate import run_timed


def run_demo_bench(repo_root: str, extra_args: list[str] | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="nirvana-demo-bench-") as tmp:
        out = Path(tmp)
        sweep = [sys.executable, "-m", "experiments.run", "-m", "experiment=demo",
                 f"job.results_file={out / 'rows.jsonl'}", f"job.score_cache={out / 'scores'}",
                 f"hydra.sweep.dir={out / 'outputs'}", *(extra_args or [])]
        report = [sys.executable, "-m", "experiments.report", "--rows", str(out / "rows.jsonl"),
                  "--out", str(out / "report")]
        stages = {name: run_timed(cmd, f"demo benchmark: {name}", cwd=repo_root)[0]
                  for name, cmd in (("sweep", sweep), ("report", report))}
        n_rows = sum(1 for line in (out / "rows.jsonl").read_text().splitlines() if line.strip())
    return {"seconds": sum(stages.values()), "stages": stages, "rows": n_rows, "args": extra_args or [],
            "command": "python -m experiments.run -m experiment=demo (+ experiments.report), cold score cache"}
