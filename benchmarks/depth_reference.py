"""An independent reference for the depth analyses: plain Hugging Face forwards with forward hooks, one
forward per intervention (one per skipped block and split, per erased stream and position, per block and
block of gradient steps), metrics in float64 numpy.

It shares no code with lmprobe_jax_extract (the tests and benchmarks/depth.py compare the two); module
names and the block structure are passed in by the caller, never looked up in the library's table.
"""

from __future__ import annotations

import numpy as np
import torch


def blocks_of(model):
    for path in ("model.layers", "transformer.h", "gpt_neox.layers"):
        try:
            return model.get_submodule(path)
        except AttributeError:
            continue
    raise ValueError(f"no decoder blocks found in {type(model).__name__}")


def _first(output):
    return output if torch.is_tensor(output) else output[0]


def forward(model, ids, *, skip=None, erase=None, sub=None):
    """One forward of ``ids`` ``(1, T)``.

    ``skip=(s, positions)``: block s's output := its input at ``positions``. ``erase=(l, t, vector)``: the
    stream l (0 = block 0's input, else block l-1's output) at position t := vector. ``sub=(attn, mlp)``:
    also record those sub-modules' outputs. Returns ``(inputs, outputs, attn, mlp, logits)`` as float64
    numpy arrays ``(L, T, D)`` (``attn`` / ``mlp`` None without ``sub``) and logits ``(T, V)``.
    """
    blocks = blocks_of(model)
    ins, outs, attn, mlp = {}, {}, {}, {}
    handles = []

    def pre(i):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            if erase is not None and erase[0] == 0 and i == 0:
                hidden = hidden.clone()
                hidden[0, erase[1]] = erase[2]
                ins[i] = hidden
                return ((hidden, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": hidden})
            ins[i] = hidden
            return None

        return hook

    def post(i):
        def hook(module, args, output):
            hidden = _first(output).clone()
            if skip is not None and skip[0] == i:
                hidden[0, skip[1]] = ins[i][0, skip[1]]
            if erase is not None and erase[0] == i + 1:
                hidden[0, erase[1]] = erase[2]
            outs[i] = hidden
            return hidden if torch.is_tensor(output) else (hidden, *output[1:])

        return hook

    def record(store, i):
        return lambda module, args, output: store.__setitem__(i, _first(output).clone())

    for i, block in enumerate(blocks):
        handles.append(block.register_forward_pre_hook(pre(i), with_kwargs=True))
        handles.append(block.register_forward_hook(post(i)))
        if sub is not None:
            handles.append(block.get_submodule(sub[0]).register_forward_hook(record(attn, i)))
            handles.append(block.get_submodule(sub[1]).register_forward_hook(record(mlp, i)))
    try:
        with torch.no_grad():
            logits = model(input_ids=ids).logits
    finally:
        for handle in handles:
            handle.remove()

    def stack(store):
        return np.stack([store[i][0].double().numpy() for i in range(len(blocks))]) if store else None

    return stack(ins), stack(outs), stack(attn), stack(mlp), logits[0].double().numpy()


def _dtype(model):
    """The model's floating dtype: interventions are written in it (float64 for a float64 model)."""
    return next(model.parameters()).dtype


def _norm(x):
    return np.linalg.norm(x, axis=-1)


def _ratio(x, ref):
    return _norm(x) / np.maximum(_norm(ref), 1e-6)


def _cos(x, y):
    return (x * y).sum(-1) / np.maximum(_norm(x) * _norm(y), 1e-8)


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def contributions(model, tok, texts, attn_name, mlp_name, parallel, skip_first=0):
    """The six per-block means over every position ``>= skip_first`` of every text: a dict of ``(L,)``."""
    totals, count = 0.0, 0
    for text in texts:
        ids = torch.tensor([tok(text)["input_ids"]])
        h, out, a, m = forward(model, ids, sub=(attn_name, mlp_name))[:4]
        layer = out - h
        reads = h if parallel else h + a
        values = np.stack(
            [_ratio(a, h), _ratio(m, reads), _ratio(layer, h), _cos(a, h), _cos(m, reads), _cos(layer, h)]
        )  # (6, L, T)
        totals = totals + values[..., skip_first:].sum(-1)
        count += values.shape[-1] - skip_first
    names = ("rel_attn", "rel_mlp", "rel_layer", "cos_attn", "cos_mlp", "cos_layer")
    return dict(zip(names, totals / count, strict=True))


def skip_effects(model, tok, texts, *, keep_first=1, skip_first=0, splits=None):
    """Skip-layer effects, one forward per (text, skipped block[, split]).

    ``splits``: None for the all-tokens variant, else a list (one per text) of split points ``t``: skip
    positions ``keep_first..t-1``, measure ``t..``. Returns ``(future_max, future_mean, output_max,
    output_mean)``.
    """
    n_blocks = len(blocks_of(model))
    layer_max = np.zeros((n_blocks, n_blocks))
    layer_sum = np.zeros((n_blocks, n_blocks))
    out_max, out_sum, count = np.zeros(n_blocks), np.zeros(n_blocks), np.zeros(n_blocks)
    for k, text in enumerate(texts):
        ids = torch.tensor([tok(text)["input_ids"]])
        n_tokens = ids.shape[1]
        h, out, _, _, logits = forward(model, ids)
        clean_writes, clean_probs = out - h, _softmax(logits)
        runs = [(n_tokens, skip_first)] if splits is None else [(t, max(t, skip_first)) for t in splits[k]]
        for t, first_measured in runs:
            for s in range(n_blocks):
                h2, out2, _, _, logits2 = forward(model, ids, skip=(s, slice(keep_first, t)))
                change = _norm((out2 - h2) - clean_writes) / np.maximum(_norm(clean_writes), 1e-6)
                change = change[:, first_measured:]  # (L, measured)
                probs = _norm(_softmax(logits2) - clean_probs)[first_measured:]
                layer_max[s] = np.maximum(layer_max[s], change.max(-1))
                layer_sum[s] += change.sum(-1)
                out_max[s] = max(out_max[s], probs.max())
                out_sum[s] += probs.sum()
                count[s] += change.shape[-1]
    return layer_max, layer_sum / count[:, None], out_max, out_sum / count


def question_answer(tok, question, answer):
    q = tok(question)["input_ids"]
    a = tok(answer, add_special_tokens=False)["input_ids"]
    return torch.tensor([q + a]), len(a)


def erasure(model, tok, question, answer, baseline_texts):
    """``(L + 1, T)``: one forward per (stream, position)."""
    total, count = 0.0, 0
    for text in baseline_texts:
        h, out = forward(model, torch.tensor([tok(text)["input_ids"]]))[:2]
        streams = np.concatenate([h[:1], out])  # (L + 1, T, D)
        total = total + streams.sum(1)
        count += streams.shape[1]
    baseline = torch.tensor(total / count, dtype=_dtype(model))
    ids, n_answer = question_answer(tok, question, answer)
    n_tokens = ids.shape[1]
    answer_rows = slice(n_tokens - n_answer - 1, n_tokens - 1)
    clean = _softmax(forward(model, ids)[4])[answer_rows]
    effect = np.zeros((len(baseline), n_tokens))
    for level in range(len(baseline)):
        for t in range(n_tokens):
            probs = _softmax(forward(model, ids, erase=(level, t, baseline[level]))[4])[answer_rows]
            effect[level, t] = _norm(probs - clean).max()
    return effect


def integrated_gradients(model, tok, question, answer, n_steps, batch_size):
    """``(L, T)``: per block, the steps in batches of ``batch_size``, each a forward + backward."""
    blocks = blocks_of(model)
    ids, n_answer = question_answer(tok, question, answer)
    outs = forward(model, ids)[1]
    result = np.zeros(outs.shape[:2])
    answer_ids = ids[0, -n_answer:]
    dtype = _dtype(model)
    for level, block in enumerate(blocks):
        x = torch.tensor(outs[level], dtype=dtype)
        base = x.mean(0, keepdim=True)
        grad_sum = torch.zeros_like(x)
        for start in range(0, n_steps, batch_size):
            alpha = torch.arange(start, min(start + batch_size, n_steps), dtype=dtype) / n_steps
            leaf = (base + alpha[:, None, None] * (x - base)).requires_grad_(True)
            handle = block.register_forward_hook(
                lambda module, args, output, leaf=leaf: leaf if torch.is_tensor(output) else (leaf, *output[1:])
            )
            try:
                logits = model(input_ids=ids.repeat(len(alpha), 1)).logits
            finally:
                handle.remove()
            probs = logits[:, :-1].to(torch.promote_types(dtype, torch.float32)).softmax(-1)[:, -n_answer:]
            objective = probs.gather(-1, answer_ids.expand(len(alpha), -1)[..., None]).sum()
            (grad,) = torch.autograd.grad(objective, leaf)
            grad_sum += grad.sum(0)
        result[level] = ((grad_sum * (x - base)).sum(-1) / n_steps).double().numpy()
    return result
