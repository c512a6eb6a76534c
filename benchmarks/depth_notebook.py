"""The depth-efficiency notebook's approach (Csordás et al., reproduced with nnsight), as its users run it:
one nnsight trace per text for the contributions, one per (skipped layer, split) for the skip effects,
one per (stream, position) for the erasure, one per (layer, block of steps) for the gradients.

Ported to transformers >= 5 (a decoder layer's ``.output`` is the hidden state itself, not a tuple) and
with the notebook's per-token fault mended (it divides by ``layer.output[0].shape[1]``, the hidden size
there), so that its numbers can be compared with ours; otherwise the notebook's code and its trace
structure. Used by benchmarks/depth.py as the timing anchor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _layers(llm):
    return llm.model.layers


def _inputs(ids):
    """A trace's input: one row of token ids (the notebook passes the string; the ids are the same)."""
    ids = torch.as_tensor(ids).reshape(1, -1)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def analyze_norms(llm, prompts):  # prompts: lists of token ids
    """Fig. 2: six per-layer means over tokens (rel attn, rel mlp, rel layer, cos attn, cos mlp, cos layer)."""
    totals, count = 0, 0
    with torch.no_grad():
        for prompt in prompts:
            with llm.trace(_inputs(prompt)):
                rows = []
                for layer in _layers(llm):
                    h = layer.inputs[0][0]
                    a = layer.self_attn.output[0]
                    mlp_input = a + h
                    m = layer.mlp.output
                    diff = layer.output - h
                    rows.append(
                        torch.stack(
                            [
                                (a.norm(dim=-1) / h.norm(dim=-1).clamp(min=1e-6)).sum(1),
                                (m.norm(dim=-1) / mlp_input.norm(dim=-1).clamp(min=1e-6)).sum(1),
                                (diff.norm(dim=-1) / h.norm(dim=-1).clamp(min=1e-6)).sum(1),
                                F.cosine_similarity(a, h, dim=-1).sum(1),
                                F.cosine_similarity(m, mlp_input, dim=-1).sum(1),
                                F.cosine_similarity(diff, h, dim=-1).sum(1),
                            ]
                        )[:, 0]
                    )
                stacked = torch.stack(rows).save()
            totals = totals + stacked
            count += len(prompt)  # tokens (the notebook's layer.output[0].shape[1] is the hidden size today)
    return (totals / count).T.numpy()


def _merge(intervened, orig, t, no_skip_front=1):
    outs = [orig[:, :no_skip_front]]
    if t is not None:
        outs += [intervened[:, no_skip_front:t], orig[:, t:]]
    else:
        outs.append(intervened[:, no_skip_front:])
    return torch.cat(outs, dim=1)


def _future(data, t):
    return data if t is None else data[:, t:]


def test_effect(llm, prompt, positions, no_skip_front=1):
    """Fig. 3 for one prompt: (L, L) max relative change of later layers' writes and (L,) max output
    change, over ``positions`` (None: all tokens; else split points t)."""
    n_layers = len(_layers(llm))
    with torch.no_grad():
        with llm.trace(_inputs(prompt)):
            log = []
            for layer in _layers(llm):
                h = layer.inputs[0][0]  # nnsight 0.8 reads modules in execution order: the input first
                log.append(layer.output - h)
            log = torch.cat(log).save()
            outputs = llm.output.logits.float().softmax(dim=-1).save()
        dall, dall_out = torch.zeros(1), torch.zeros(1)
        for t in positions:
            diffs, out_diffs = [], []
            for lskip in range(n_layers):
                with llm.trace(_inputs(prompt)):
                    new_logs = []
                    for i, layer in enumerate(_layers(llm)):
                        h = layer.inputs[0][0]
                        out = layer.output
                        if i == lskip:
                            out = _merge(h, out, t, no_skip_front)
                            layer.output = out
                        new_logs.append(out - h)
                    new_logs = torch.cat(new_logs)
                    rel = (_future(log, t) - _future(new_logs, t)).norm(dim=-1) / _future(log, t).norm(
                        dim=-1
                    ).clamp(min=1e-6)
                    diffs.append(rel.max(dim=-1).values.save())
                    change = _future(llm.output.logits.float().softmax(dim=-1), t) - _future(outputs, t)
                    out_diffs.append(change.norm(dim=-1).max(dim=-1).values.save())
            dall = torch.max(dall, torch.stack(diffs))
            dall_out = torch.max(dall_out, torch.stack(out_diffs))
    return dall.numpy(), dall_out.squeeze(-1).numpy()


def measure_token_skip(llm, ids, n_answer, baseline_ids):
    """Fig. 6b: (L + 1, T) erasure effects; ``ids`` the question + answer ids, ``baseline_ids`` a list of
    the uninformative texts' ids."""
    n_layers = len(_layers(llm))
    with torch.no_grad():
        sums, count = [0] * (n_layers + 1), 0
        for row in baseline_ids:
            with llm.trace(_inputs(row)):
                streams = [_layers(llm)[0].inputs[0][0].sum(dim=1)]
                streams += [layer.output.sum(dim=1) for layer in _layers(llm)]
                streams = torch.stack(streams).save()
            sums = [s + streams[i] for i, s in enumerate(sums)]
            count += len(row)
        baseline = [s / count for s in sums]
        prompt = _inputs(ids)
        with llm.trace(prompt):
            outs = llm.output.logits[:, -(n_answer + 1) : -1].softmax(dim=-1).save()
        rows = []
        for level in range(n_layers + 1):
            effects = []
            for t in range(len(ids)):
                with llm.trace(prompt):
                    if level == 0:
                        layer = _layers(llm)[0]
                        hidden = layer.inputs[0][0].clone()
                        hidden[:, t] = baseline[0]
                        layer.input = hidden
                    else:
                        layer = _layers(llm)[level - 1]
                        hidden = layer.output.clone()
                        hidden[:, t] = baseline[level]
                        layer.output = hidden
                    probs = llm.output.logits[:, -(n_answer + 1) : -1].softmax(dim=-1)
                    effects.append((outs - probs).norm(dim=-1).max(dim=1).values.save())
            rows.append(torch.cat(effects))
    return torch.stack(rows).numpy()


def get_igrads(llm, ids, n_answer, n_steps=256, block_size=16):
    """Fig. 6a: (L, T) integrated gradients, one trace per (layer, block of steps)."""
    prompt = _inputs(ids)
    answer = prompt["input_ids"][:, -n_answer:]
    result = []
    for level in range(len(_layers(llm))):
        total = 0
        for start in range(0, n_steps, block_size):
            with llm.trace(prompt):
                layer = _layers(llm)[level]
                orig = layer.output.clone().detach()
                base = orig.mean(dim=1, keepdim=True)
                r = torch.arange(start, min(start + block_size, n_steps), dtype=orig.dtype) / n_steps
                target = (orig * r[:, None, None] + base * (1 - r[:, None, None])).requires_grad_(True)
                layer.output = target
                probs = F.softmax(llm.output.logits[:, :-1], dim=-1)[:, -n_answer:]
                objective = probs.gather(-1, answer.expand(len(r), -1)[..., None]).sum().save()
                leaf = target.save()
                diff = (orig - base).save()
            (grad,) = torch.autograd.grad(objective, leaf)
            total = total + (grad * diff).sum(0)
        result.append(total.sum(-1) / n_steps)
    return torch.stack(result).detach().numpy()
