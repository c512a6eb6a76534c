"""One strategy per layer mode of :func:`lmprobe_jax.layers.parse_layers`: each has ``fit(probe, X, y,
sample_weight, layers)`` on ``X`` ``(len(layers), N, D)`` and sets the probe's fitted state."""

from .auto import Auto
from .fast_auto import FastAuto
from .fixed import Fixed, fit_blocks
from .sweep import BatchedFit, Sweep, can_batch, fit_batched, install_layer

MODES = {mode.name: mode for mode in (Fixed(), Auto(), FastAuto(), Sweep())}

__all__ = ["MODES", "BatchedFit", "can_batch", "fit_batched", "fit_blocks", "install_layer"]
