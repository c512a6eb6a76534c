"""The anchors' way of computing lenses, in torch, for the lens benchmarks: one layer at a time with
dense ``(T, V)`` logits (TransformerLens, Layer-Probing, the depth notebook), and tuned-lens's training
loop (one backward per layer, every translator's gradient clipped together, SGD with Nesterov momentum).
These are ports of the anchors' loops, not the packages themselves."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch


def torch_loop(streams: Iterable[torch.Tensor], final, next_ids, norm, weight, k=5) -> np.ndarray:
    """Per-layer means of the six metrics ``(L, 6)``, one layer at a time with (T, V) logits. ``streams``
    yields each layer's ``(T, D)`` on the device of ``weight`` (a generator can move them there lazily)."""
    out = []
    with torch.no_grad():
        final_lp = torch.log_softmax(norm(final) @ weight.T, -1)
        p = final_lp.exp()
        final_top = final_lp.topk(k, -1).indices
        has = next_ids >= 0
        nxt = next_ids.clamp(min=0)
        for h in streams:
            lp = torch.log_softmax(norm(h) @ weight.T, -1)
            q = lp.exp()
            kl_pq = (p * (final_lp - lp)).sum(-1).mean()
            kl_qp = (q * (lp - final_lp)).sum(-1).mean()
            entropy = -(q * lp).sum(-1).mean()
            ce = -lp.gather(1, nxt[:, None])[:, 0][has].mean()
            top1 = (lp.argmax(-1) == final_lp.argmax(-1)).float().mean()
            top = lp.topk(k, -1).indices
            overlap = (top[:, :, None] == final_top[:, None, :]).sum((-2, -1)).float().mean() / k
            out.append(torch.stack([kl_pq, kl_qp, ce, entropy, top1, overlap]).cpu().numpy())
    return np.array(out)


def tuned_lens_steps(
    streams: torch.Tensor,
    final: torch.Tensor,
    norm: Callable[[torch.Tensor], torch.Tensor],
    weight: torch.Tensor,
    batches: Iterable[np.ndarray],
    *,
    max_steps: int,
    autocast: torch.dtype | None = None,
    on_step: Callable[[int], None] | None = None,
) -> list[torch.nn.Linear]:
    """tuned-lens's training loop on cached streams ``(L, T, D)``: per step, each layer's translator
    ``h + A h + b`` (zero-initialised) is read out, its KL(final || lens) on the batch's rows is
    backpropagated on its own (tuned-lens's "to save VRAM"), then every translator's gradient is clipped
    to norm 1 together and SGD (Nesterov, momentum 0.9, lr 1.0 x 0.1 decaying linearly, weight decay 1e-3)
    steps. ``autocast``: tuned-lens runs under ``torch.autocast(dtype=bfloat16)`` on a GPU."""
    n_layers, _, hidden = streams.shape
    translators = [torch.nn.Linear(hidden, hidden, device=streams.device) for _ in range(n_layers)]
    for layer in translators:
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
    params = [p for layer in translators for p in layer.parameters()]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 - step / max_steps)
    for step, rows in zip(range(max_steps), batches, strict=False):
        index = torch.as_tensor(rows, device=streams.device)
        with torch.autocast(
            streams.device.type, dtype=autocast or torch.float32, enabled=autocast is not None
        ):
            with torch.no_grad():
                target = torch.log_softmax(norm(final[index]) @ weight.T, -1).float()
            for layer, translator in enumerate(translators):
                h = streams[layer, index]
                lens = torch.log_softmax((norm(h + translator(h)) @ weight.T).float(), -1)
                loss = (target.exp() * (target - lens)).sum(-1).mean()
                loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=False)
        if on_step is not None:
            on_step(step)
    return translators
