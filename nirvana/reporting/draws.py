"""Table 2 over calibration draws: each method's mean over draws with an interval that includes the draw, its
comparisons with the reference paired by draw and by item, the headline family's verdicts adjusted for
multiplicity, and two checks of the task mix (docs/protocol.md, "Evidence across calibration draws").

Rows: one model, several calibration draws (`calibration_seed`) of each method — Table 2's rows are draw 12,
conf/experiment/draws.yaml adds 13–16. A method whose calibration was *selected* (`calibration_selection` not
none, e.g. `nirvana:kl`, the lowest-KL of draws 12–19) is one selection, its own line, never a draw.

The interval of a mean over D draws has two levels (`two_level`):
- items (windows): the bootstrap over items of the draw-averaged item results, the same indices in every draw
  and, for a comparison, for both methods (the items are the same in every run: they are crossed with the draws,
  not nested in them). Its variance in closed form (nirvana.reporting.stats.bootstrap_variance), so no bootstrap
  seed can move a word;
- draws: the spread of the D per-draw statistics, s² / D — what resampling the draws estimates, without the
  bootstrap's (D − 1) / D shrinkage — with Student's t on D − 1 degrees of freedom (Satterthwaite for the sum):
  five draws cannot support the 99.9 % tails a Holm-adjusted interval reads, and a resample of five draws never
  reaches beyond the most extreme of them. One draw: that part is unmeasured, and every output says so.
Perplexity is averaged on the log scale (the geometric mean of the draws' perplexities; ratios: the geometric
mean of the per-draw ratios).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..evaluation.chance import load_floors
from ..evaluation.zeroshot import TASK_METRICS
from ..provenance import describe
from ..results import latest
from . import stats, verdicts
from .pairing import (
    ACHIEVED_COLUMN,
    AVG_COLUMN,
    KEPT_COLUMN,
    REFERENCE,
    UNEQUAL,
    is_perplexity,
    labelled,
    method_rank,
    reference_name,
)
from .tables import markdown, provenance

NORMALISED = "avg_norm"  # the chance-normalised zero-shot mean (a column of this view only)
SEQ_LEN = 512


# --- evidence ----------------------------------------------------------------------------------------------
@dataclass
class Cell:
    """One method at one sparsity: its rows per draw (seed → column → row). `selected`: a calibration chosen by a
    selection (one selection, not a draw); a calibration-free or dense model is one draw keyed None."""

    method: str
    sparsity: float
    selected: bool
    draws: dict = field(default_factory=dict)

    @property
    def seeds(self) -> list:
        return sorted(self.draws, key=lambda s: -1 if s is None else s)

    @property
    def single(self) -> bool:
        """One realisation whatever the draw: a selection, a dense or calibration-free model."""
        return self.selected or self.seeds == [None]


def _seed(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else int(x)


def draw_cells(rows: pd.DataFrame, model: str | None = None) -> dict[tuple[str, float], Cell]:
    """(method label, sparsity) → Cell, the newest row of every (method, sparsity, draw, column)."""
    df = labelled(rows, model)
    df = df.assign(seed=[_seed(s) for s in df["calibration_seed"]],
                   selected=[s not in (None, "none") and s == s for s in df["calibration_selection"]])
    df = latest(df.assign(seed_key=df["seed"].fillna(-1)), ["method", "sparsity", "seed_key", "column"])
    out: dict[tuple[str, float], Cell] = {}
    for _, r in df.iterrows():
        cell = out.setdefault((r["method"], r["sparsity"]), Cell(r["method"], r["sparsity"], bool(r["selected"])))
        cell.selected |= bool(r["selected"])
        cell.draws.setdefault(_seed(r["seed"]), {})[r["column"]] = r
    return out


def _extra(row) -> dict:
    return row["extra"] if isinstance(row["extra"], dict) else {}


def task_items(draw: dict) -> dict[str, np.ndarray] | None:
    """{task: per-item metric} of one draw's rows, every task of the zero-shot mean (None: some lack items)."""
    items = {t: _extra(draw[t]).get("items") for t in TASK_METRICS if t in draw}
    if not items or not all(items.values()):
        return None
    return {t: np.asarray(x, dtype=float) for t, x in items.items()}


def windows(draw: dict, column: str) -> np.ndarray | None:
    """Per-window log perplexity contributions (NLL / tokens) of one draw's perplexity row (None: not carried)."""
    if column not in draw:
        return None
    e = _extra(draw[column])
    nll, tokens = e.get("window_nll"), e.get("window_tokens")
    return np.asarray(nll, dtype=float) / tokens if nll and tokens else None


@dataclass(frozen=True)
class View:
    """How a column reads a draw's evidence as {"task": values} whose mean of means is the statistic: the zero-shot
    mean (all tasks or all but `without`), its chance-normalised form (each task (x − chance) / (dense − chance)
    over the tasks `scale` names), or one perplexity's windows."""

    column: str
    without: str | None = None
    scale: tuple | None = None  # ((task, chance, dense − chance), …) for the normalised mean

    @property
    def perplexity(self) -> bool:
        return is_perplexity(self.column)

    def evidence(self, draw: dict) -> dict[str, np.ndarray] | None:
        if self.perplexity:
            w = windows(draw, self.column)
            return None if w is None else {"windows": w}
        items = task_items(draw)
        if items is None:
            return None
        if self.scale is not None:
            return {t: (items[t] - chance) / above for t, chance, above in self.scale if t in items} or None
        return {t: x for t, x in items.items() if t != self.without}


def _compatible(samples: list[dict[str, np.ndarray]]) -> bool:
    first = samples[0]
    return all(sorted(s) == sorted(first) and all(s[t].shape == first[t].shape for t in first) for s in samples)


# --- the two-level interval --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Spread:
    """An `Estimate` (nirvana.reporting.verdicts) with the per-draw statistics it averages."""

    estimate: verdicts.Estimate
    per_draw: tuple

    @property
    def measured(self) -> bool:
        """Whether the draw level is in the interval (two draws or more)."""
        return self.estimate.draws >= 2


def twolevel_label(samples: list[dict[str, np.ndarray]]) -> Spread:
    """Mean over draws of the mean over tasks of the mean over items, with its two-level standard error.

    `samples`: one {task: values} per draw (for a comparison: per pair of draws, the item-by-item difference), all
    with the same tasks and items. Items level: the closed-form bootstrap variance of the draw-averaged values
    (every draw resampled with the same item indices). Draws level: s² / D of the per-draw statistics, Student's t
    with Satterthwaite's degrees of freedom for the sum (the items level has hundreds: taken as normal); one draw:
    unmeasured, the items level alone (and `Spread.measured` is False)."""
    if not samples or not _compatible(samples):
        raise ValueError("two_level needs one sample per draw, all with the same tasks and items")
    per_draw = [float(np.mean([x.mean() for x in s.values()])) for s in samples]
    averaged = {t: np.mean([s[t] for s in samples], axis=0) for t in samples[0]}
    v_items = stats.bootstrap_variance(averaged)
    d = len(samples)
    v_draws = float(np.var(per_draw, ddof=1)) / d if d >= 2 else 0.0
    df = (v_items + v_draws) ** 2 * (d - 1) / v_draws ** 2 if v_draws > 0 else math.inf
    estimate = verdicts.Estimate(float(np.mean(per_draw)), math.sqrt(v_items + v_draws), df, d)
    return Spread(estimate, tuple(per_draw))


def method_spread(cell: Cell, view: View) -> Spread | None:
    samples = [e for s in cell.seeds if (e := view.evidence(cell.draws[s])) is not None]
    if len(samples) < len(cell.seeds) or not samples or not _compatible(samples):
        return None  # a draw without this column's evidence: no mean over draws that silently drops it
    return twolevel_label(samples)


def pairs(a: Cell, b: Cell) -> list[tuple]:
    """The draws a comparison pairs: the same seed (the same calibration text) for two methods over draws; every
    draw of the other against a single realisation (a selection, a dense model)."""
    if a.single and b.single:
        return [(a.seeds[0], b.seeds[0])]
    if a.single:
        return [(a.seeds[0], s) for s in b.seeds]
    if b.single:
        return [(s, b.seeds[0]) for s in a.seeds]
    return [(s, s) for s in a.seeds if s in b.draws]


def paired_spread(a: Cell, b: Cell, view: View) -> Spread | None:
    """a − b (perplexity: log a ÷ b) paired by draw and by item; None where nothing pairs."""
    samples = []
    for sa, sb in pairs(a, b):
        x, y = view.evidence(a.draws[sa]), view.evidence(b.draws[sb])
        if x is None or y is None or not _compatible([x, y]):
            return None
        samples.append({t: x[t] - y[t] for t in x})
    return twolevel_label(samples) if samples else None


# --- natural scale -----------------------------------------------------------------------------------------
def natural(x: float, perplexity: bool) -> float:
    return math.exp(x) if perplexity else x


def natural_interval(spread: Spread, tail: float, perplexity: bool) -> tuple[float, float]:
    lo, hi = spread.estimate.interval(tail)
    return natural(lo, perplexity), natural(hi, perplexity)


def spread_range(spread: Spread, perplexity: bool) -> tuple[float, float]:
    return natural(min(spread.per_draw), perplexity), natural(max(spread.per_draw), perplexity)


# --- the task mix ------------------------------------------------------------------------------------------
def normalised_view(dense: Cell | None, floors: dict | None) -> tuple[View | None, list[str]]:
    """The chance-normalised mean: each task's (accuracy − chance) / (dense − chance), over the tasks whose dense
    accuracy is above chance by its 95 % interval (below or at chance the ratio has no meaning: BoolQ's dense
    38 % against 50 %), with the dense model's accuracy on these items as a fixed scale. Returns the view and the
    tasks left out (with why)."""
    if dense is None or floors is None:
        return None, []
    items = task_items(dense.draws[dense.seeds[0]])
    if items is None:
        return None, []
    scale, left_out = [], []
    for t, x in sorted(items.items()):
        chance = floors[t]["chance"]
        lo = x.mean() - 1.96 * math.sqrt(x.var() / x.size)
        if lo > chance:
            scale.append((t, chance, float(x.mean() - chance)))
        else:
            left_out.append(f"{t} (dense {100 * x.mean():.1f} % vs chance {100 * chance:.1f} %)")
    return (View(NORMALISED, scale=tuple(scale)) if scale else None), left_out


# --- the report --------------------------------------------------------------------------------------------
@dataclass
class Comparison:
    method: str
    sparsity: float
    column: str
    spread: Spread
    unequal: bool

    @property
    def perplexity(self) -> bool:
        return is_perplexity(self.column)

    def margin(self) -> float:
        m = verdicts.MARGIN_NORMALISED if self.column == NORMALISED else None
        return verdicts.analysis_margin(self.perplexity, m)

    def pvalues(self) -> tuple[float, float]:
        return self.spread.estimate.p_difference(), self.spread.estimate.p_equivalence(self.margin())

    def word(self, tail: float) -> str:
        lo, hi = natural_interval(self.spread, tail, self.perplexity)
        m = verdicts.MARGIN_NORMALISED if self.column == NORMALISED else None
        return verdicts.word(lo, hi, self.perplexity, m)


def _find(cells: dict, name: str, sparsity: float) -> Cell | None:
    """The cell of a method named by its pruner label (`nirvana`, `flap:kl`) at a sparsity."""
    found = [c for (m, s), c in cells.items() if s == sparsity and m.split(" ")[0] == name]
    return sorted(found, key=lambda c: c.method)[0] if found else None


def _achieved(cell: Cell) -> float | None:
    values = [d[ACHIEVED_COLUMN]["value"] for d in cell.draws.values() if ACHIEVED_COLUMN in d]
    return float(np.mean(values)) if values else None


def _unequal(a: Cell, b: Cell) -> bool:
    x, y = _achieved(a), _achieved(b)
    return x is not None and y is not None and abs(x - y) > UNEQUAL


@dataclass
class DrawReport:
    cells: dict
    reference: str
    family: list[str]
    also: list[str]
    columns: list[str]
    floors: dict | None
    normalised: View | None
    left_out: list[str]
    headline: list[Comparison]
    tail: float  # the Holm-adjusted tail every headline interval is printed at
    secondary: list[Comparison]

    def loto(self, c: Comparison) -> dict[str, str]:
        """The word of a zero-shot comparison with each task left out of the mean, at the headline's level."""
        a, b = self.cells[(c.method, c.sparsity)], _find(self.cells, self.reference, c.sparsity)
        out = {}
        for task in TASK_METRICS:
            spread = paired_spread(a, b, View(AVG_COLUMN, without=task))
            if spread is not None:
                out[task] = Comparison(c.method, c.sparsity, AVG_COLUMN, spread, c.unequal).word(self.tail)
        return out

    def normalised_word(self, c: Comparison) -> tuple[Spread | None, str]:
        if self.normalised is None:
            return None, verdicts.NO_VERDICT
        a, b = self.cells[(c.method, c.sparsity)], _find(self.cells, self.reference, c.sparsity)
        spread = paired_spread(a, b, self.normalised)
        if spread is None:
            return None, verdicts.NO_VERDICT
        return spread, Comparison(c.method, c.sparsity, NORMALISED, spread, c.unequal).word(self.tail)


def default_columns(cells: dict, reference: str) -> list[str]:
    present = {col for c in cells.values() for d in c.draws.values() for col in d}
    ppl = sorted(c for c in present if is_perplexity(c) and c.endswith(f"@{SEQ_LEN}"))
    zero_shot = AVG_COLUMN in present or any(c in TASK_METRICS for c in present)
    return ([AVG_COLUMN] if zero_shot else []) + ppl


def default_family(cells: dict, reference: str) -> list[str]:
    """Every method compared over draws (not a selection, not dense or calibration-free) but the reference."""
    names = {c.method.split(" ")[0] for c in cells.values() if not c.single}
    return sorted(names - {reference}, key=method_rank)


def draw_report(rows: pd.DataFrame, model: str | None = None, reference: str = REFERENCE,
                family: list[str] | None = None, also: list[str] | None = None,
                columns: list[str] | None = None, alpha: float = verdicts.ALPHA) -> DrawReport:
    """Everything the draw-aware tables print. `family`: the baselines of the headline family (default: every
    method with calibration draws); `columns`: its metrics (default: the zero-shot mean and every perplexity at
    512 tokens); `also`: single selections (`nirvana:kl`) compared unadjusted, as secondary lines."""
    cells = draw_cells(rows, model)
    family = family or default_family(cells, reference)
    columns = columns or default_columns(cells, reference)
    also = also or []
    unknown = [m for m in [reference, *family, *also] if not any(k[0].split(" ")[0] == m for k in cells)]
    if unknown:
        present = sorted({k[0].split(" ")[0] for k in cells})
        raise ValueError(f"no rows of {unknown} for the draw-aware report; present: {present}")
    keep = {reference, *family, *also, "dense"}
    cells = {k: c for k, c in cells.items() if k[0].split(" ")[0] in keep}
    limits = {str(r["limit"]) for c in cells.values() for d in c.draws.values() for col, r in d.items()
              if col in TASK_METRICS}
    limit = limits.pop() if len(limits) == 1 else "mixed"  # one item limit, or no floors to read against
    floors = None if limit == "mixed" else load_floors(None if limit in ("None", "nan") else int(float(limit)))
    dense = next((c for (m, _), c in cells.items() if m == "dense"), None)
    norm, left_out = normalised_view(dense, floors)

    def compare(names, cols):
        out = []
        for s in sorted({s for _, s in cells if s > 0}):
            ref = _find(cells, reference, s)
            for name in names:
                cell = _find(cells, name, s)
                if ref is None or cell is None:
                    continue
                for column in cols:
                    spread = paired_spread(cell, ref, View(column))
                    if spread is not None:
                        out.append(Comparison(cell.method, s, column, spread, _unequal(cell, ref)))
        return out

    headline = compare(family, columns)
    tail = verdicts.holm_tail([p for c in headline for p in c.pvalues()], alpha)
    return DrawReport(cells, reference, family, also, columns, floors, norm, left_out, headline, tail,
                      compare(also, columns))


# --- rendering ---------------------------------------------------------------------------------------------
def _points(x: float) -> str:
    return f"{100 * x:.1f}"


def _signed(x: float) -> str:
    return f"{100 * x:+.1f}"


def _value(spread: Spread, column: str, tail: float = verdicts.ALPHA, signed: bool = False) -> str:
    """`mean [interval]` on the printed scale: points (zero-shot; the normalised mean in % of the dense model's
    accuracy above chance), perplexity, or a ratio (×); then, over two draws or more, (min–max over draws)."""
    p = is_perplexity(column)
    v = natural(spread.estimate.value, p)
    lo, hi = natural_interval(spread, tail, p)
    if p:
        fmt = (lambda x: f"{x:.2f}") if signed else (lambda x: f"{x:.1f}")
        unit = "×" if signed else ""
    else:
        fmt, unit = (_signed if signed else _points), ""
    text = f"{fmt(v)}{unit} [{fmt(lo)}, {fmt(hi)}]"
    if spread.measured:
        mn, mx = spread_range(spread, p)
        text += f" ({fmt(mn)} to {fmt(mx)})" if signed and not p else f" ({fmt(mn)}–{fmt(mx)})"
    return text


def _draws(cell: Cell) -> str:
    if cell.selected:
        return f"selected: {cell.seeds[0]}"
    if cell.seeds == [None]:
        return "–"
    return ", ".join(str(s) for s in cell.seeds)


def _column_title(column: str) -> str:
    return {AVG_COLUMN: "zero-shot avg", NORMALISED: "chance-normalised avg"}.get(column, f"ppl {column}")


def method_table(report: DrawReport) -> pd.DataFrame:
    """One line per method and sparsity: its draws, each metric's mean over draws [95 % two-level interval]
    (min–max over draws), then its comparison with the reference paired by draw and item (95 %, unadjusted: the
    descriptive view; the words are in draws_verdict.md)."""
    name, lines = reference_name(report.reference), []
    views = [View(c) for c in report.columns]
    if report.normalised is not None and AVG_COLUMN in report.columns:
        views.insert(1, report.normalised)
    for (method, s), cell in sorted(report.cells.items(), key=lambda kv: (kv[0][1], *method_rank(kv[0][0]))):
        ref = _find(report.cells, report.reference, s) if s > 0 else None
        kept = [d[KEPT_COLUMN]["value"] for d in cell.draws.values() if KEPT_COLUMN in d]
        line = {"method": method, "sparsity": f"{s:g}", "draws": _draws(cell),
                "params kept %": _points(np.mean(kept)) if kept else ""}
        for view in views:
            spread = method_spread(cell, view)
            line[_column_title(view.column)] = _value(spread, view.column) if spread else ""
        for view in views:
            paired = paired_spread(cell, ref, view) if ref is not None and ref is not cell else None
            sign = "÷" if view.perplexity else "Δ"
            line[f"{_column_title(view.column)} {sign} {name}"] = \
                _value(paired, view.column, signed=True) if paired else ""
        lines.append(line)
    return pd.DataFrame(lines).fillna("")


def level_label(tail: float) -> str:
    """An interval's level, two decimals at most: 95 %, 98.75 %, 99.84 %."""
    return f"{100 * (1 - tail):.2f}".rstrip("0").rstrip(".") + " %"


def verdict_table(report: DrawReport, comparisons: list[Comparison], tail: float | None) -> pd.DataFrame:
    """One line per comparison: draws, the estimate with the interval that decided its word (min–max of the
    per-draw differences), the word; for the zero-shot mean also the chance-normalised mean's word and the tasks
    whose removal changes the word. `tail` None: each comparison unadjusted (95 %)."""
    name, lines = reference_name(report.reference), []
    t = verdicts.ALPHA if tail is None else tail
    for c in comparisons:
        word = c.word(t)
        line = {"method": c.method, "sparsity": f"{c.sparsity:g}", "metric": _column_title(c.column),
                "draws": c.spread.estimate.draws,
                f"vs {name}: Δ points or ÷ [{level_label(t)} interval] (per draw)": _value(c.spread, c.column, t, True),
                "word": word + (" ‡" if not c.spread.measured else "") + (" †" if c.unequal else "")}
        if tail is not None:
            norm, loto = "", ""
            if not c.perplexity:
                norm = report.normalised_word(c)[1]
                changed = {task: w for task, w in report.loto(c).items() if w != word}
                loto = "none" if not changed else "; ".join(f"{task} ({w})" for task, w in changed.items())
            line["chance-normalised"] = norm
            line["tasks that change the word when left out"] = loto
        lines.append(line)
    table = pd.DataFrame(lines).fillna("")
    return table[[c for c in table.columns if (table[c] != "").any()]]  # a perplexity-only family: no mix columns


def task_table(report: DrawReport) -> pd.DataFrame:
    """Each task's chance and majority-class accuracy beside the dense model and every method's mean over draws."""
    lines = []
    for task in TASK_METRICS:
        f = (report.floors or {}).get(task, {})
        line = {"task": task, "metric": TASK_METRICS[task],
                "chance %": _points(f["chance"]) if f else "?",
                "majority class %": _points(f["majority"]) + f" ({f['majority_answer']})"
                if f.get("majority") is not None else "–"}
        for (method, s), cell in sorted(report.cells.items(), key=lambda kv: (kv[0][1], *method_rank(kv[0][0]))):
            values = [d[task]["value"] for d in cell.draws.values() if task in d]
            if values:
                label = method if s == 0 else f"{method} {s:g}"
                line[label] = _points(np.mean(values))
        lines.append(line)
    return pd.DataFrame(lines).fillna("")


def loto_table(report: DrawReport) -> pd.DataFrame:
    """Every zero-shot headline comparison's word with each task left out (at the headline's level)."""
    lines = []
    for c in report.headline:
        if c.perplexity:
            continue
        words = report.loto(c)
        lines.append({"method": c.method, "sparsity": f"{c.sparsity:g}", "all nine": c.word(report.tail),
                      **{f"without {t}": w for t, w in words.items()}})
    return pd.DataFrame(lines)


def long_rows(report: DrawReport) -> pd.DataFrame:
    """Every number of the view, one line each (draws.csv)."""
    out = []

    def add(kind, method, s, column, spread, tail, word="", against=""):
        e, p = spread.estimate, is_perplexity(column)
        lo, hi = natural_interval(spread, verdicts.ALPHA, p)
        alo, ahi = natural_interval(spread, tail, p)
        mn, mx = spread_range(spread, p)
        out.append({"kind": kind, "method": method, "against": against, "sparsity": s, "column": column,
                    "draws": e.draws, "value": natural(e.value, p), "lo95": lo, "hi95": hi, "tail": tail,
                    "lo_at_tail": alo, "hi_at_tail": ahi, "se_analysis_scale": e.se, "df": e.df,
                    "p_difference": e.p_difference(), "min_over_draws": mn, "max_over_draws": mx, "word": word})

    views = [View(c) for c in report.columns] + ([report.normalised] if report.normalised else [])
    for (method, s), cell in report.cells.items():
        for view in views:
            if (spread := method_spread(cell, view)) is not None:
                add("method", method, s, view.column, spread, verdicts.ALPHA)
    for kind, comparisons, tail in (("headline", report.headline, report.tail),
                                    ("secondary", report.secondary, verdicts.ALPHA)):
        for c in comparisons:
            add(kind, c.method, c.sparsity, c.column, c.spread, tail, c.word(tail), reference_name(report.reference))
            out[-1]["p_equivalence"] = c.pvalues()[1]
    return pd.DataFrame(out)


def write_draw_report(rows: pd.DataFrame, out_dir, model: str | None = None, reference: str = REFERENCE,
                      family: list[str] | None = None, also: list[str] | None = None,
                      columns: list[str] | None = None, command: str | None = None) -> list:
    """draws.md (each method over draws, paired with the reference), draws_verdict.md (the headline family's
    words at Holm's level, the task-mix checks, secondary unadjusted lines), draws_tasks.md (task floors, each
    task's means, every leave-one-task-out word), draws.csv (every number)."""
    from pathlib import Path

    report = draw_report(rows, model, reference, family, also, columns)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prov = provenance(rows if model is None else rows[rows["model"] == model])
    name = reference_name(reference)
    single = sorted({f"{m} {s:g}" for (m, s), c in report.cells.items()
                     if s > 0 and not c.single and len(c.seeds) < 2})
    head = [f"Produced by `{command}`.\n"] if command else []
    if prov["dirty"]:
        head.append(f"> **Warning**: rows from a dirty work tree ({', '.join(prov['dirty'])}): not a clean result.\n")
    if single:
        head.append(f"> **One calibration draw only** for {', '.join(single)}: their draw variance is "
                    "**unmeasured** — intervals and words there (‡) cover the evaluation items alone and hold for "
                    "that draw, not for the method.\n")
    foot = (f"Commits: {', '.join(describe(h, prov['verified'].get(h)) for h in prov['commits'])}; "
            f"{prov['runs']} runs; limits: {', '.join(prov['limits']) or 'none'}.\n")
    intervals = ("Cells: the mean over draws [95 % interval] (min–max over draws, from two draws on); Δ in points, "
                 "÷ a perplexity ratio, the row's method against the reference. Intervals: two levels — the bootstrap over items (windows) of the draw-averaged results, the "
                 "same items in every draw and for both methods (closed form), plus the spread of the per-draw "
                 "statistics (s²/D, Student's t on D − 1 degrees of freedom); one draw: items only. Perplexity "
                 "and ÷ are geometric means over draws. Comparisons are paired by draw (the same calibration text) "
                 "and by item; a selection (`nirvana:kl`) is one realisation, paired with every draw of the other. "
                 "docs/protocol.md, \"Evidence across calibration draws\".\n")
    paths = []

    methods = method_table(report)
    paths.append(out / "draws.md")
    paths[-1].write_text("\n".join(head + [intervals, markdown(methods, numparse=False), foot]))

    n_hyp = 2 * len(report.headline)
    low, high = verdicts.band(True)
    family_text = (f"**Headline family** ({len(report.headline)} comparisons, {n_hyp} hypotheses): "
                   f"{', '.join(report.family)} against {name} at every sparsity × "
                   f"{', '.join(_column_title(c) for c in report.columns)}. For each, H0 \"no difference\" (two-"
                   "sided) and H0 \"a difference at least the margin\" (TOST), Holm's step-down over all "
                   f"{n_hyp} at a family-wise error of {100 * verdicts.ALPHA:.0f} %. Holm's last step tests at "
                   f"{report.tail:.3g}, so every interval below is printed at **{level_label(report.tail)}** (Holm-"
                   "adjusted) and its word is read from it: **equivalent** inside ±"
                   f"{100 * verdicts.MARGIN_POINTS:.1f} points / {low:.3f}–{high:.2f}×, else **better** or **worse**"
                   " where it excludes no difference, else **inconclusive** — exactly Holm's rejections. Words: "
                   f"the row's method against {name}. ‡ one draw: draw variance unmeasured; † the two remove "
                   f"shares of parameters more than {UNEQUAL:.0%} apart.\n")
    mix = ("**Task mix** (zero-shot lines, at the same level): `chance-normalised` is the word of the mean of "
           "(accuracy − chance) / (dense − chance) over the tasks where the dense model is above chance "
           f"(margin ±{verdicts.MARGIN_NORMALISED:.2f}; left out: {', '.join(report.left_out) or 'none'}); "
           "`without one task` lists the tasks whose removal from the nine-task mean changes the word.\n")
    zero = [c for c in report.headline if not c.perplexity]
    carried = [c for c in zero if any(w != c.word(report.tail) for w in report.loto(c).values())]
    mix += f"**{len(carried)} of {len(zero)} zero-shot headline words depend on a single task**" + (
        ": " + ", ".join(f"{c.method} at {c.sparsity:g}" for c in carried) + ".\n" if carried else ".\n")
    if report.floors is None:
        mix += "> Task floors unknown for these rows' item limit: no chance-normalised mean.\n"
    parts = head + [family_text] + ([mix] if zero else []) + [
        markdown(verdict_table(report, report.headline, report.tail), numparse=False)]
    if report.secondary:
        parts += [f"**Secondary, unadjusted** (95 % intervals, not part of the family): {', '.join(report.also)} "
                  f"against {name} over its draws — one selection, its own variability unmeasured.\n",
                  markdown(verdict_table(report, report.secondary, None), numparse=False)]
    paths.append(out / "draws_verdict.md")
    paths[-1].write_text("\n".join(parts + [intervals, foot]))

    tasks = task_table(report)
    loto = loto_table(report)
    floors_note = ("Chance: the mean over the scored items of 1 / (number of choices); majority class: always the "
                   "most frequent gold answer, where every item offers the same answers (else –: no constant "
                   "answer exists); both from the task definitions on the built data "
                   "(nirvana/evaluation/task_floors.json, `python -m experiments.task_floors`). Accuracies: "
                   "means over draws, %.\n")
    parts = [floors_note, markdown(tasks, numparse=False)]
    if not loto.empty:
        parts += [f"Each zero-shot headline word with one task left out of the mean ({level_label(report.tail)} "
                  "intervals, as the headline):\n", markdown(loto, numparse=False)]
    paths.append(out / "draws_tasks.md")
    paths[-1].write_text("\n".join(parts + [foot]))

    paths.append(out / "draws.csv")
    long_rows(report).to_csv(paths[-1], index=False, float_format="%.6g")
    return paths
