"""The accuracy gate of bigperf.swap: per-layer SQNR on the activations each layer sees.

Forward hooks on the original layers run the planned replacement on the same input while
the calibration batches pass through the unmodified model; signal and noise energies are
accumulated per layer, so nothing but two numbers per layer is kept in memory.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterable

import torch

from bigperf.ops.activations import apply_activation


def sqnr_db(reference: torch.Tensor, approximation: torch.Tensor) -> float:
    """10·log10(‖ref‖² / ‖ref − approx‖²) in fp64; inf when they are equal."""
    ref = reference.double()
    noise = (ref - approximation.double()).pow(2).sum().item()
    signal = ref.pow(2).sum().item()
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf


def _run_model(model: torch.nn.Module, batch):
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


@contextlib.contextmanager
def leaving_model_as_it_was(model: torch.nn.Module):
    """Run the model for measuring only: in eval mode (a training-mode model would update
    BatchNorm statistics), with every module's training flag and every buffer a forward
    changed in place put back afterwards."""
    flags = [(module, module.training) for module in model.modules()]
    # A buffer made under torch.inference_mode() (a model loaded there) keeps no version
    # counter: its content is compared instead, and it is written back inside that mode.
    buffers = [(b, None if b.is_inference() else b._version, b.detach().clone()) for b in model.buffers()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training
        with torch.no_grad():
            for buffer, version, copy in buffers:
                if version is None:
                    if not torch.equal(buffer, copy):
                        with torch.inference_mode():
                            buffer.copy_(copy)
                elif buffer._version != version:
                    buffer.copy_(copy)


def measure_sqnr(model: torch.nn.Module, planned: list, calibration: Iterable) -> dict[str, float | None]:
    """SQNR (dB) of each planned replacement against the layer it replaces.

    `planned` items have .name, .old, .new and .activation (a fused activation is applied
    to the original layer's output before comparing). A layer the calibration batches never
    reach gets None (its accuracy is unknown, not perfect); one whose replacement gives a
    NaN or Inf where the original is finite gets -inf (it fails any gate).
    """
    energies = {p.name: [0.0, 0.0, 0] for p in planned}  # signal, noise, calls
    handles = []

    def hook_for(p):
        def hook(module, args, output):
            reference = apply_activation(output.float(), p.activation).double()
            approximation = p.new(*args).double()
            finite = torch.isfinite(reference)
            broken = bool((~torch.isfinite(approximation) & finite).any())
            energy = energies[p.name]
            energy[0] += reference[finite].pow(2).sum().item()
            energy[1] += math.inf if broken else (reference - approximation)[finite].pow(2).sum().item()
            energy[2] += 1
        return hook

    try:
        for p in planned:
            handles.append(p.old.register_forward_hook(hook_for(p)))
        batches = 0
        with torch.no_grad(), leaving_model_as_it_was(model):
            for batch in calibration:
                _run_model(model, batch)
                batches += 1
        if batches == 0:
            raise ValueError("bigperf.swap: argument 'calibration' yielded no batches")
    finally:
        for handle in handles:
            handle.remove()
    result: dict[str, float | None] = {}
    for name, (signal, noise, calls) in energies.items():
        if calls == 0:
            result[name] = None
        elif math.isinf(noise) or math.isnan(noise):
            result[name] = -math.inf
        elif noise == 0:
            result[name] = math.inf
        elif signal == 0:
            result[name] = -math.inf
        else:
            result[name] = 10 * math.log10(signal / noise)
    return result


def gate_reason(sqnr: float | None, min_sqnr: float) -> str | None:
    """Why a layer with this calibration SQNR must be kept under `min_sqnr`, or None."""
    if sqnr is None:
        return "calibration never reached this layer: its accuracy is unknown"
    if sqnr == -math.inf:
        return "its output on the calibration data is not finite (NaN/Inf) or all zero where the original's is not"
    if not sqnr >= min_sqnr:
        return f"SQNR {sqnr:.1f} dB < min_sqnr {min_sqnr} dB"
    return None
