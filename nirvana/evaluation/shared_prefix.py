"""A shared-prefix loglikelihood backend for lm-eval: the same answers as its `hf` backend, far less compute.

Multiple-choice requests repeat their context for every choice (ARC, HellaSwag, OpenBookQA, SciQ, PIQA, BoolQ),
and WinoGrande's two requests share the sentence up to the blank. lm-eval's `hf` backend (HFLM) runs every
(context, continuation) pair as its own sequence and computes the log-softmax over the whole vocabulary at every
position, although only the continuation's positions are read. Here, as an lm-eval model class (`SharedPrefixLM`,
a subclass of HFLM registered as `hf-shared-prefix`):
  1. each request is encoded exactly as HFLM encodes it (`_encode_pair`, the same left truncation), giving the
     sequence the model would read, (context + continuation)[:-1];
  2. requests whose sequences share a prefix covering at least half of their context are packed into one row:
     the shared prefix once, then each request's remaining tokens, each segment attending causally to the prefix
     and to itself only (a 4-D attention mask), with the position ids it would have on its own;
  3. the LM head and log-softmax run only at the positions that predict a continuation token.
Every request therefore sees exactly the tokens, at exactly the positions, that HFLM gives it; only summation
order differs (per-item log-likelihoods agree within 1e-4 in fp32, tests/test_shared_prefix.py; sums over long
continuations can differ more, both within fp32 rounding of a float64 evaluation: `make bench`). The LM head is
applied separately only for the families whose adapter says logits = head(final hidden state) (no soft-capping
or logit scaling); other decoders get full logits, still packed. Encoder–decoders and generation are HFLM's own.

Use it from Python (`evaluate_zeroshot(..., lm="hf-shared-prefix")`, the default of eval.zeroshot.lm) or from the
command line: lm-eval 0.4.13 discovers no model classes from other packages, so `nirvana-lm-eval` is the stock
`lm_eval` CLI with this class registered first:
    nirvana-lm-eval --model hf-shared-prefix --model_args pretrained=DIR,trust_remote_code=True \\
        --tasks local_arc_easy --include_path nirvana/tasks
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from tqdm.auto import tqdm

from ..adapters import adapter_class_for

log = logging.getLogger(__name__)
NAME = "hf-shared-prefix"
DEFAULT_ROWS = 16  # packed rows per forward when lm-eval passes batch_size="auto"
TOKENS_PER_ROW = 128  # short rows: a batch holds up to batch_size × this many (padded) tokens


@dataclass
class Row:
    """One packed sequence: a shared prefix, then each member request's own remaining tokens."""

    prefix: list[int]
    members: list[int] = field(default_factory=list)  # request indices
    tails: list[list[int]] = field(default_factory=list)  # each member's tokens after the prefix

    def __len__(self) -> int:
        return len(self.prefix) + sum(len(t) for t in self.tails)

    def layout(self) -> tuple[list[int], list[int], list[int], list[int]]:
        """(tokens, segment ids (0: prefix), position ids, start of each member's tail in the row)."""
        tokens, segments, positions, starts = list(self.prefix), [0] * len(self.prefix), list(range(len(self.prefix))), []
        for k, tail in enumerate(self.tails, start=1):
            starts.append(len(tokens))
            tokens += tail
            segments += [k] * len(tail)
            positions += range(len(self.prefix), len(self.prefix) + len(tail))
        return tokens, segments, positions, starts

    def index(self, member: int, position: int) -> int:
        """Where, in the row, the member's sequence position `position` lives."""
        if position < len(self.prefix):
            return position
        k = self.members.index(member)
        return len(self.prefix) + sum(len(t) for t in self.tails[:k]) + position - len(self.prefix)


def batches(rows: list[Row], max_rows: int, max_tokens: int) -> list[list[Row]]:
    """Rows (longest first) in batches of at most `max_rows`, or more short ones while the padded batch stays
    within `max_tokens`: a batch's cost is its padded area, so short rows share a forward."""
    out: list[list[Row]] = []
    for row in rows:
        if out and (len(out[-1]) + 1) * len(out[-1][0]) <= max(max_tokens, len(out[-1][0]) * max_rows):
            out[-1].append(row)
        else:
            out.append([row])
    return out


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def pack(sequences: list[list[int]], contexts: list[int], max_row: int) -> list[Row]:
    """Greedy packing in lexicographic order (sequences sharing a prefix are then adjacent): a request joins the
    current row when the row's prefix, cut to what it shares with the request, still covers at least half of
    the request's context and the row stays within `max_row` tokens. Any packing gives the same numbers; this
    one only decides how much is shared."""
    rows: list[Row] = []
    for i in sorted(range(len(sequences)), key=lambda j: sequences[j]):
        seq, row = sequences[i], rows[-1] if rows else None
        if row is not None:
            shared = common_prefix(row.prefix, seq)
            grown = shared + sum(len(t) + len(row.prefix) - shared for t in row.tails) + len(seq) - shared
            if shared >= max(1, contexts[i] // 2) and grown <= max_row:
                cut = row.prefix[shared:]
                row.prefix = row.prefix[:shared]
                row.tails = [cut + t for t in row.tails]
                row.members.append(i)
                row.tails.append(seq[shared:])
                continue
        rows.append(Row(prefix=list(seq), members=[i], tails=[[]]))
    return rows


def attention_mask(segments: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, 1, L, L] additive mask: a token attends to earlier tokens of the prefix (segment 0) and of its own
    segment; padding (segment −1) attends to itself only, so no softmax row is empty."""
    L = segments.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=segments.device).tril()
    key, query = segments[:, None, :], segments[:, :, None]
    allowed = causal & ((key == 0) | (key == query)) & (key >= 0) & (query >= 0)
    allowed |= torch.eye(L, dtype=torch.bool, device=segments.device)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segments.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


@register_model(NAME)
class SharedPrefixLM(HFLM):
    """HFLM with shared-prefix packing for loglikelihood requests (module docstring)."""

    def __init__(self, *args, max_row_tokens: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_row_tokens = int(max_row_tokens) if max_row_tokens else 4 * self.max_length
        self._split = None

    def _hidden_and_head(self):
        """The decoder trunk and LM head when logits == head(hidden) for this family, else None."""
        if self._split is None:
            try:
                adapter = adapter_class_for(self.model.config.model_type)
                self._split = adapter.logits_are_head_of_hidden
            except ValueError:
                self._split = False
        return (self.model.get_decoder(), self.model.get_output_embeddings()) if self._split else None

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        if self.backend != "causal":
            log.info("%s: %s models are scored by lm-eval's own hf backend", NAME, self.backend)
            return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
        sequences, contexts, continuations = [], [], []
        for (strings, context, continuation) in requests:
            if not continuation:
                raise ValueError(f"{NAME}: request {strings!r} has an empty continuation; nothing to score")
            if len(continuation) > self.max_length:
                raise ValueError(f"{NAME}: request {strings!r} has a continuation of {len(continuation)} tokens, "
                                 f"more than the model's {self.max_length}")
            whole = (context + continuation)[-(self.max_length + 1):]  # HFLM's left truncation
            sequences.append(whole[:-1])
            contexts.append(len(whole) - len(continuation))
            continuations.append(continuation)
        rows = sorted(pack(sequences, contexts, self.max_row_tokens), key=len, reverse=True)
        batch = override_bs or (self.batch_size if isinstance(self.batch_size, int) else DEFAULT_ROWS)
        answers: list = [None] * len(requests)
        bar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="Running loglikelihood requests")
        for chunk in batches(rows, batch, batch * TOKENS_PER_ROW):
            for i, answer in self._score_rows(chunk, sequences, continuations):
                answers[i] = answer
                strings = requests[i][0]
                if strings is not None:
                    self.cache_hook.add_partial("loglikelihood", strings, answer)
                bar.update(1)
        bar.close()
        return answers

    @torch.no_grad()
    def _score_rows(self, rows: list[Row], sequences, continuations):
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        segments = torch.full((len(rows), width), -1, dtype=torch.long)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        for b, row in enumerate(rows):
            tokens, segs, pos, _ = row.layout()
            ids[b, : len(tokens)] = torch.tensor(tokens)
            segments[b, : len(segs)] = torch.tensor(segs)
            positions[b, : len(pos)] = torch.tensor(pos)
        where, targets, owners = [], [], []  # flat row positions that predict a continuation token
        for b, row in enumerate(rows):
            for i in row.members:
                n, cont = len(sequences[i]), continuations[i]
                for k, token in enumerate(cont):
                    where.append(b * width + row.index(i, n - len(cont) + k))
                    targets.append(token)
                    owners.append(i)
        dtype = next(self.model.parameters()).dtype
        kwargs = dict(input_ids=ids.to(self.device), position_ids=positions.to(self.device), use_cache=False,
                      attention_mask=attention_mask(segments.to(self.device), dtype))
        with torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                            enabled=self.mixed_precision_dtype is not None):
            split = self._hidden_and_head()
            if split is not None:
                trunk, head = split
                hidden = trunk(**kwargs).last_hidden_state.flatten(0, 1)
                logits = head(hidden[torch.tensor(where, device=self.device)])
            else:
                logits = self.model(**kwargs).logits.flatten(0, 1)[torch.tensor(where, device=self.device)]
        logprobs = F.log_softmax(logits, dim=-1, dtype=self.softmax_dtype)
        targets_t = torch.tensor(targets, device=logprobs.device)
        token_lp = logprobs.gather(1, targets_t[:, None]).squeeze(1)
        greedy = logprobs.argmax(dim=-1) == targets_t
        totals: dict[int, list] = {}
        for i, lp, g in zip(owners, token_lp.tolist(), greedy.tolist()):
            t = totals.setdefault(i, [0.0, True])
            t[0] += lp
            t[1] &= g
        for i, (lp, g) in totals.items():
            yield i, (lp, bool(g))


def cli() -> None:
    """The stock lm-eval command line, with `hf-shared-prefix` registered (module docstring)."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()
