"""Independent reference implementation of the official NIRVANA pruning plan (test oracle only).

Written from the semantics in docs/method.md (sections 1 and 2) and checked, step by step,
against the official code (github.com/iDEA-iSAIL-Lab-UIUC/NIRVANA, ``Llama/main.py``: the scoring loop,
the closed-form budget and ``get_pruning_idx``). It does not import anything from ``nirvana`` and follows
the official algorithm's naive structure: one forward/backward over the whole calibration batch, all weight
gradients held at once, then a plain Python loop over layers.

What the official code does (and what this file reproduces):

* Target (``prune_type == 'NIRVANA'``): ``logits = model(ids).logits`` of shape [B, T, V];
  ``f = mean(max(logits, dim=1).values)`` (max over the sequence T, mean over B and V); one backward.
  The ``labels=`` the official code passes only computes an unused loss. Official dtype is bf16 on GPU
  (logits are *not* upcast by its vendored modeling file); here everything stays in the model's dtype
  (float32 for the oracle), which is what exact parity with our implementation is defined on.
* Weight score: ``|grad * W|`` ("nirvana") or ``|W|`` ("magnitude"), for the *weight* matrices only.
  Biases are never scored (the official loop only scores parameters whose name contains ``.weight``).
* Group score of GQA group g (KV head g; query heads h with h // n_rep == g):
  per-row L1 of q_proj/k_proj/v_proj and per-column L1 of o_proj, summed over the group's rows/columns,
  then q + k + v + o. (The official ``view(num_kv_heads, head_dim, -1).sum((1, 2))`` just cuts each
  vector into n_kv contiguous chunks, i.e. exactly the rows of query heads g*n_rep .. g*n_rep+n_rep-1.)
* Neuron score: row L1 of gate_proj + row L1 of up_proj + column L1 of down_proj.
* Counts (closed form, see ``official_counts``): k_a from the budget, k_m = int(k_a_untruncated * gamma *
  N_m / N_a), k_a truncated afterwards.
* Thresholds: one global pool per module type over all layers; threshold = k-th smallest score of the pool
  (``topk(largest=False)[-1]``); every unit with ``score <= threshold`` is a pruning candidate, so ties at
  the threshold prune more than k. If k_a == 0 the official threshold becomes the constant 0, i.e. groups
  with score <= 0 are still pruned (reproduced); k_m == 0 crashes the official code (here: nothing pruned).
* Attention guard: if every group of a layer is a candidate, the official code drops the *last* element of
  the ascending index list, i.e. it spares the highest-INDEX group (not the best-scoring one).
* MLP guard: kept width = number of non-candidates, rounded UP to a multiple of 8, capped at the layer
  width, and at least 8; the extra kept neurons are the highest-scoring candidates of that layer. If the
  spare count reaches the number of candidates nothing is pruned in that layer. (The official MLP path
  also passes through the "drop last if all pruned" line, but then recomputes the candidate set from the
  threshold, so that line has no effect on MLPs.)

Tie-breaking that the official code leaves to ``torch.topk`` (which neuron is spared among candidates with
equal scores) is resolved here deterministically: higher score first, then lower index.
"""

from __future__ import annotations

import torch

__all__ = ["official_counts", "official_plan", "official_unit_scores"]


# ----------------------------------------------------------------------------------------------------------
# Closed-form budget
# ----------------------------------------------------------------------------------------------------------
def official_counts(num_layers, n_groups, group_cost, n_neurons, neuron_cost, sparsity, gamma):
    """Numbers (k_a, k_m) of attention groups / MLP neurons to prune, summed over all layers.

    num_layers L, n_groups N_a (GQA groups per layer), group_cost c_a (parameters per group, i.e.
    2*head_dim*(n_rep+1)*d_model), n_neurons N_m (MLP width per layer), neuron_cost c_m (3*d_model),
    sparsity s, gamma (MLP pruned fraction = gamma * attention pruned fraction).

    Mathematically  k_a = s*L*(N_a*c_a + N_m*c_m) / (c_a + gamma*c_m*N_m/N_a),
                    k_m = gamma * k_a * N_m / N_a  (from the UN-truncated k_a), both truncated with int().

    The arithmetic is done in the official code's order of floating-point operations (the official code
    works with costs divided by d_model, so that a neuron costs 3), so that values which are integers in
    exact arithmetic (e.g. s=0.5, gamma=1) truncate identically.
    """
    if n_groups <= 0 or n_neurons <= 0:
        raise ValueError("need at least one group and one neuron per layer")
    if gamma <= 0:
        raise ValueError("gamma must be > 0")
    d_unit = neuron_cost / 3.0  # = d_model when neuron_cost = 3*d_model
    a = group_cost / d_unit  # official: head_dim * 2 * (kv_groups + 1)
    a_int = int(round(a))
    if abs(a - a_int) < 1e-9:
        a = a_int  # keep integer arithmetic where the official code has it
    inv_gamma = 1.0 / gamma
    pruned_per_layer = (a * n_groups + n_neurons * 3) * sparsity
    attn_mlp_ratio = (a * n_groups) / (n_neurons * 3) * inv_gamma * 3 / a  # == N_a / (gamma * N_m)
    cost_per_attn_unit = a + 1 / attn_mlp_ratio * 3  # == c_a + gamma*c_m*N_m/N_a (in units of d)
    k_a_float = pruned_per_layer / cost_per_attn_unit * num_layers
    k_m = int(k_a_float / attn_mlp_ratio)
    k_a = int(k_a_float)
    return k_a, k_m


# ----------------------------------------------------------------------------------------------------------
# Scores
# ----------------------------------------------------------------------------------------------------------
def _dims(model):
    cfg = model.config
    n_heads = cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    return dict(
        n_layers=len(model.model.layers),
        n_heads=n_heads,
        n_kv=n_kv,
        n_rep=n_heads // n_kv,
        head_dim=head_dim,
        d_model=cfg.hidden_size,
        ffn=cfg.intermediate_size,
    )


def _prunable_weights(model):
    """List of (layer index, module name, nn.Linear) for every prunable projection."""
    out = []
    for i, layer in enumerate(model.model.layers):
        attn, mlp = layer.self_attn, layer.mlp
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            out.append((i, name, getattr(attn, name)))
        for name in ("gate_proj", "up_proj", "down_proj"):
            out.append((i, name, getattr(mlp, name)))
    return out


def _nirvana_gradients(model, ids, include_bias):
    """One forward/backward of f = mean_{B,V} max_T logits; returns {param: grad} (model left untouched)."""
    linears = _prunable_weights(model)
    params = []
    for _, _, lin in linears:
        params.append(lin.weight)
        if include_bias and lin.bias is not None:
            params.append(lin.bias)
    old_flags = [p.requires_grad for p in params]
    was_training = model.training
    model.eval()
    try:
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            logits = model(ids).logits  # [B, T, V]
            f = logits.max(dim=1).values.mean()  # max over T, mean over B and V
            grads = torch.autograd.grad(f, params)  # only the needed grads; .grad is not touched
        del logits, f
    finally:
        for p, flag in zip(params, old_flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)
    return {id(p): g for p, g in zip(params, grads, strict=True)}


def official_unit_scores(model, ids=None, criterion="nirvana", include_bias=False):
    """Per-layer unit scores: (list of [N_a] group-score tensors, list of [N_m] neuron-score tensors)."""
    if criterion not in ("nirvana", "magnitude"):
        raise ValueError(f"unknown criterion {criterion!r}")
    dm = _dims(model)
    n_kv, n_rep, hd = dm["n_kv"], dm["n_rep"], dm["head_dim"]

    grads = _nirvana_gradients(model, ids, include_bias) if criterion == "nirvana" else None

    def saliency(p):
        w = p.detach()
        if criterion == "magnitude":
            return w.abs()
        return (grads[id(p)] * w).abs()

    group_scores, neuron_scores = [], []
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp

        # ---- attention: one score per GQA group --------------------------------------------------
        q_rows = saliency(attn.q_proj.weight).sum(dim=1)  # [n_heads*hd]  (L1 of each output row)
        k_rows = saliency(attn.k_proj.weight).sum(dim=1)  # [n_kv*hd]
        v_rows = saliency(attn.v_proj.weight).sum(dim=1)  # [n_kv*hd]
        o_cols = saliency(attn.o_proj.weight).sum(dim=0)  # [n_heads*hd] (L1 of each input column)
        if include_bias:
            for lin, rows in ((attn.q_proj, q_rows), (attn.k_proj, k_rows), (attn.v_proj, v_rows)):
                if lin.bias is not None:
                    rows += saliency(lin.bias)
        gs = torch.zeros(n_kv, dtype=q_rows.dtype)
        for g in range(n_kv):
            q_part = sum(q_rows[h * hd : (h + 1) * hd].sum() for h in range(g * n_rep, (g + 1) * n_rep))
            k_part = k_rows[g * hd : (g + 1) * hd].sum()
            v_part = v_rows[g * hd : (g + 1) * hd].sum()
            o_part = sum(o_cols[h * hd : (h + 1) * hd].sum() for h in range(g * n_rep, (g + 1) * n_rep))
            gs[g] = q_part + k_part + v_part + o_part
        group_scores.append(gs)

        # ---- MLP: one score per intermediate neuron ----------------------------------------------
        ns = (
            saliency(mlp.gate_proj.weight).sum(dim=1)
            + saliency(mlp.up_proj.weight).sum(dim=1)
            + saliency(mlp.down_proj.weight).sum(dim=0)
        )
        if include_bias:
            for lin in (mlp.gate_proj, mlp.up_proj):
                if lin.bias is not None:
                    ns = ns + saliency(lin.bias)
        neuron_scores.append(ns)
    if grads is not None:
        del grads
    return group_scores, neuron_scores


# ----------------------------------------------------------------------------------------------------------
# Plan
# ----------------------------------------------------------------------------------------------------------
def _kth_smallest(pool, k):
    return torch.sort(pool).values[k - 1]


def _attention_pruned(scores, threshold):
    pruned = [g for g in range(len(scores)) if scores[g] <= threshold]  # ascending index order
    if len(pruned) == len(scores):
        pruned = pruned[:-1]  # official: spare the HIGHEST-INDEX group, not the best-scoring one
    return pruned


def _mlp_pruned(scores, threshold):
    n_total = len(scores)
    candidates = [n for n in range(n_total) if scores[n] <= threshold]
    if not candidates:
        return []
    n_kept = n_total - len(candidates)
    n_kept_final = min(n_total, ((n_kept + 7) // 8) * 8)
    if n_kept_final == 0:
        n_kept_final = 8
    n_spare = n_kept_final - n_kept
    if n_spare <= 0:
        return candidates
    if n_spare >= len(candidates):
        return []
    # spare the highest-scoring candidates (ties: lower index first)
    by_score = sorted(candidates, key=lambda n: (-float(scores[n]), n))
    spared = set(by_score[:n_spare])
    return [n for n in candidates if n not in spared]


def plan_from_scores(group_scores, neuron_scores, k_a, k_m):
    """The official thresholding + guards, given per-layer scores and the global counts."""
    attn_pool = torch.cat([s.flatten() for s in group_scores])
    mlp_pool = torch.cat([s.flatten() for s in neuron_scores])
    if k_a > attn_pool.numel() or k_m > mlp_pool.numel():
        raise ValueError(
            f"cannot prune k_a={k_a}, k_m={k_m} from pools of "
            f"{attn_pool.numel()} groups / {mlp_pool.numel()} neurons"
        )
    # official: attention threshold is the constant 0 when k_a == 0 (so score <= 0 is still pruned)
    attn_thr = _kth_smallest(attn_pool, k_a) if k_a > 0 else torch.zeros((), dtype=attn_pool.dtype)
    # official crashes when k_m == 0; here that means "prune no neuron"
    mlp_thr = _kth_smallest(mlp_pool, k_m) if k_m > 0 else None

    layers, n_pg, n_pn = [], 0, 0
    for gs, ns in zip(group_scores, neuron_scores, strict=True):
        pg = _attention_pruned(gs, attn_thr)
        pn = _mlp_pruned(ns, mlp_thr) if mlp_thr is not None else []
        pg_set, pn_set = set(pg), set(pn)
        layers.append(
            {
                "kept_groups": [g for g in range(len(gs)) if g not in pg_set],
                "kept_neurons": [n for n in range(len(ns)) if n not in pn_set],
            }
        )
        n_pg += len(pg)
        n_pn += len(pn)
    return {"layers": layers, "pruned_groups": n_pg, "pruned_neurons": n_pn}


def official_plan(
    model,
    ids: torch.LongTensor,
    sparsity: float,
    gamma: float,
    criterion: str = "nirvana",
    include_bias: bool = False,
) -> dict:
    """Pruning plan of the official NIRVANA code for a HF Llama/Mistral/Qwen2/Qwen3 causal LM.

    Returns {"layers": [{"kept_groups": [...], "kept_neurons": [...]}, ...],
             "pruned_groups": int, "pruned_neurons": int}.
    ``include_bias`` (default False, as in the official code) adds q/k/v (and gate/up) bias saliencies
    to their rows' scores; it is an extension, not official behaviour.
    """
    dm = _dims(model)
    group_cost = 2 * dm["head_dim"] * (dm["n_rep"] + 1) * dm["d_model"]
    neuron_cost = 3 * dm["d_model"]
    k_a, k_m = official_counts(
        dm["n_layers"], dm["n_kv"], group_cost, dm["ffn"], neuron_cost, sparsity, gamma
    )
    group_scores, neuron_scores = official_unit_scores(model, ids, criterion, include_bias)
    plan = plan_from_scores(group_scores, neuron_scores, k_a, k_m)
    plan["k_a"], plan["k_m"] = k_a, k_m  # extra keys, handy for debugging
    return plan


# ----------------------------------------------------------------------------------------------------------
# Self-check
# ----------------------------------------------------------------------------------------------------------
def _self_check():
    # --- closed form from config numbers only (Llama-3.1-8B) ---
    L, d, heads, kv, hd, ffn = 32, 4096, 32, 8, 128, 14336
    ca, cm = 2 * hd * (heads // kv + 1) * d, 3 * d
    for s, gm, want in [(0.5, 3.36, (44, 265197)), (0.2, 3.36, (17, 106078)), (0.5, 1.0, (128, 229376))]:
        got = official_counts(L, kv, ca, ffn, cm, s, gm)
        # the mathematical formula, for comparison
        ka = s * L * (kv * ca + ffn * cm) / (ca + gm * cm * ffn / kv)
        print(f"Llama-3.1-8B s={s} gamma={gm}: (k_a, k_m)={got}  exact={ka:.6f}, {gm * ka * ffn / kv:.6f}")
        assert got == want, (got, want)
    # budget check: pruned parameters ~= s * attention+MLP parameters
    k_a, k_m = official_counts(L, kv, ca, ffn, cm, 0.5, 3.36)
    frac = (k_a * ca + k_m * cm) / (L * (kv * ca + ffn * cm))
    assert abs(frac - 0.5) < 1e-3, frac

    # --- tiny random Llama ---
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        num_hidden_layers=3,
        vocab_size=256,
        max_position_embeddings=64,
    )
    model = LlamaForCausalLM(cfg).float().eval()
    ids = torch.randint(0, 256, (4, 16))
    for crit in ("nirvana", "magnitude"):
        for s, gm in [(0.5, 3.36), (0.2, 1.0), (0.9, 1.0)]:
            plan = official_plan(model, ids, s, gm, crit)
            print(
                f"{crit} s={s} gamma={gm}: k_a={plan['k_a']} k_m={plan['k_m']} "
                f"pruned {plan['pruned_groups']} groups / {plan['pruned_neurons']} neurons"
            )
            for i, lay in enumerate(plan["layers"]):
                print(
                    f"  layer {i}: kept_groups={lay['kept_groups']} kept_neurons={len(lay['kept_neurons'])}"
                )
                assert len(lay["kept_groups"]) >= 1
                assert len(lay["kept_neurons"]) % 8 == 0 and len(lay["kept_neurons"]) >= 8

    # --- cross-check the explicit per-group loop against the official-style reshaping ---
    gs, ns = official_unit_scores(model, ids, "nirvana")
    grads = _nirvana_gradients(model, ids, False)
    for i, layer in enumerate(model.model.layers):
        a = layer.self_attn
        acc = 0
        for lin, dim in ((a.q_proj, 1), (a.k_proj, 1), (a.v_proj, 1), (a.o_proj, 0)):
            s = (grads[id(lin.weight)] * lin.weight.detach()).abs().sum(dim=dim)
            acc = acc + s.view(2, 16, -1).sum(dim=(1, 2))  # official: view(n_kv, head_dim, -1)
        assert torch.allclose(acc, gs[i], rtol=1e-5), (acc, gs[i])
    # the model's .grad fields are untouched
    assert all(p.grad is None for p in model.parameters())

    # --- guards on hand-made scores ---
    # layer 0 entirely under threshold -> highest-index group kept, not the best one
    g = [torch.tensor([0.3, 0.2, 0.1]), torch.tensor([5.0, 6.0, 7.0])]
    n = [torch.arange(20, dtype=torch.float32), torch.arange(20, dtype=torch.float32) + 100]
    p = plan_from_scores(g, n, k_a=3, k_m=5)
    assert p["layers"][0]["kept_groups"] == [2], p["layers"][0]
    assert p["layers"][1]["kept_groups"] == [0, 1, 2]
    # 5 candidates in layer 0 (scores 0..4), kept 15 -> 16: spare neuron 4 (highest-scoring candidate)
    assert p["layers"][0]["kept_neurons"] == list(range(4, 20)), p["layers"][0]["kept_neurons"]
    assert p["pruned_groups"] == 2 and p["pruned_neurons"] == 4
    # ties at the threshold are all pruned
    g = [torch.tensor([1.0, 1.0, 2.0]), torch.tensor([1.0, 3.0, 4.0])]
    n = [torch.ones(16), torch.ones(16) * 2]
    p = plan_from_scores(g, n, k_a=1, k_m=8)
    assert p["layers"][0]["kept_groups"] == [2] and p["layers"][1]["kept_groups"] == [1, 2]
    assert p["layers"][0]["kept_neurons"] == list(range(8))  # 16 tied: 8 spared, lowest index first
    print("self-check OK")


if __name__ == "__main__":
    _self_check()
