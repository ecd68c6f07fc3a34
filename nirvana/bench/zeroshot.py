"""Zero-shot throughput: our evaluation path (`python -m experiments.evaluate eval=zeroshot`) vs the stock
`lm_eval --model hf` CLI on the same model, tasks, limit, batch size and context length.

Both run end to end as fresh processes (imports, model load, task building, scoring) and are timed
alternately; requests/s = lm-eval's loglikelihood requests (one per (document, choice)) / wall seconds. The
two must also agree on every task's metric: the benchmark records whether they do.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path

from .. import paths
from ..evaluation.zeroshot import TASK_METRICS, check_tasks, lm_eval_task_name, task_manager
from .isolate import run_timed


def count_requests(tasks: list[str], limit: int | None) -> int:
    """Loglikelihood requests lm-eval builds for `tasks` (local suite) at `limit`."""
    total = 0
    for task in task_manager("local").load([lm_eval_task_name(t, "local") for t in tasks])["tasks"].values():
        task.build_all_requests(limit=limit, rank=0, world_size=1)
        total += len(task.instances)
    return total


def _stock_command(model_dir: str, tasks, limit, batch_size, max_length, out: Path) -> list[str]:
    lm_eval_bin = str(Path(sys.executable).with_name("lm_eval"))
    return [lm_eval_bin, "--model", "hf",
            "--model_args", f"pretrained={model_dir},max_length={max_length},dtype=float32",
            "--tasks", ",".join(lm_eval_task_name(t, "local") for t in tasks),
            "--include_path", str(paths.tasks_dir()), "--limit", str(limit), "--batch_size", str(batch_size),
            "--device", "cpu", "--output_path", str(out)]


def _ours_command(model_config: str, model_dir: str, tasks, limit, batch_size, max_length, out: Path) -> list[str]:
    return [sys.executable, "-m", "experiments.evaluate", f"model={model_config}", f"model.path={model_dir}",
            "eval=zeroshot", f"eval.limit={limit}", f"eval.zeroshot.tasks=[{','.join(tasks)}]",
            f"eval.zeroshot.batch_size={batch_size}", f"eval.zeroshot.max_length={max_length}",
            f"job.results_file={out / 'rows.jsonl'}", f"hydra.run.dir={out / 'run'}", "job.progress=false"]


def _stock_scores(out: Path, tasks) -> dict[str, float]:
    result = json.loads(next(out.rglob("results*.json")).read_text())["results"]
    return {t: result[lm_eval_task_name(t, "local")][f"{TASK_METRICS[t]},none"] for t in tasks}


def _our_scores(out: Path, tasks) -> dict[str, float]:
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines() if line.strip()]
    return {r["task"]: r["value"] for r in rows if r["task"] in tasks}


def run_zeroshot_bench(model_config: str, model_dir: str, tasks, limit: int, batch_size: int, max_length: int,
                       repeats: int, repo_root: str, progress=None) -> dict:
    tasks = check_tasks(list(tasks), "local")
    if not (Path(model_dir) / "config.json").is_file():
        raise FileNotFoundError(f"zero-shot benchmark model {model_dir}: no config.json (run `make assets`)")
    n_requests = count_requests(tasks, limit)
    runs = {"ours": [], "stock_cli": []}
    scores = {}
    jobs = [(r, who) for r in range(repeats) for who in ("ours", "stock_cli")]
    for _, who in (progress(jobs) if progress else jobs):
        with tempfile.TemporaryDirectory(prefix="nirvana-bench-") as tmp:
            out = Path(tmp)
            if who == "ours":
                cmd = _ours_command(model_config, model_dir, tasks, limit, batch_size, max_length, out)
                runs[who].append(run_timed(cmd, "our zero-shot evaluation", cwd=repo_root)[0])
                scores.setdefault(who, _our_scores(out, tasks))
            else:
                # the stock CLI runs from a scratch directory: nothing of ours on its path but the task YAMLs
                cmd = _stock_command(model_dir, tasks, limit, batch_size, max_length, out)
                runs[who].append(run_timed(cmd, "the stock lm_eval CLI", cwd=tmp)[0])
                scores.setdefault(who, _stock_scores(out, tasks))
    med = {who: statistics.median(s) for who, s in runs.items()}
    return {
        "model": model_dir, "tasks": tasks, "limit": limit, "batch_size": batch_size, "max_length": max_length,
        "requests": n_requests, "seconds": runs, "seconds_median": med,
        "requests_per_s": {who: n_requests / s for who, s in med.items()},
        "ratio_ours_vs_stock": med["stock_cli"] / med["ours"],
        "scores": scores, "same_scores": scores.get("ours") == scores.get("stock_cli"),
    }
