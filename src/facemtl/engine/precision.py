"""Numeric precision of forward passes: ``precision: fp32`` (default) or ``bf16``.

``bf16`` runs the forward pass under :func:`torch.autocast` with bfloat16 (convolutions and
matrix products in bf16, reductions and batch norm in float32); the weights, the optimiser
state and the losses stay float32 (outputs are cast back before the loss), so no loss scaling
is needed (bfloat16 has float32's exponent range). It pays on GPUs with bf16 tensor cores;
on a CPU it is exercised by the tests, and is only faster where the CPU has native bf16.
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("fp32", "bf16")


def autocast(device: torch.device | str, precision: str):
    """The context a forward pass runs in for ``precision`` on ``device``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def to_float32(outputs):
    """Cast a model's outputs (tensors, or lists/tuples/dicts of them) back to float32."""
    if isinstance(outputs, torch.Tensor):
        return outputs.float() if outputs.is_floating_point() else outputs
    if isinstance(outputs, dict):
        return {k: to_float32(v) for k, v in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(to_float32(v) for v in outputs)
    return outputs
