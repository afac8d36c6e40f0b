"""The inference graph of iFAN: its per-source batch-norm streams run one at a time.

``IFAN.forward(images)`` (``source=None``) stacks the S streams along the batch and normalises
them with a grouped batch norm (:mod:`facemtl.models.norm`): one kernel call per layer, the right
shape for eager PyTorch. Exported as a graph, that form hides three savings, which
:class:`StreamwiseIFAN` (the same computation, one stream per backbone call) exposes:

* every batch norm is a plain ``BatchNormalization`` whose parameters are constants (the
  stream's row of the current iteration's statistics; the exporter folds the row selection),
  instead of a reshape, transpose, batch norm and transpose back of the whole activation;
* work that no output reads is dead code, which the exporter removes: a stream whose tasks
  read only the down path (points at 1/16, category at the bottom) never runs the up path,
  about 40% of a stream's multiply-adds at the paper's settings;
* work that is the same in every stream is done once (common subexpressions): the stem
  convolution and, from Iter1 on, every feedback convolution (the re-encoded predictions are
  the same maps for every stream).

Batch-norm folding: iFAN's dense layers are pre-activation (BN-ReLU-conv over a concatenation),
so a batch norm follows a ``Concat``, not a convolution, and cannot be folded into one; only the
two flat decoders' conv -> BN pairs can be, which onnxruntime's optimiser does (``ConvBNFusion``).
The remaining ``BatchNormalization`` nodes are per-channel affine maps with constant parameters.

The module is checked against ``IFAN.forward`` (tests/test_backends.py); it reads the model's
parts (backbone, decoders, integrator) and so lives beside the exporter, not in the model contract.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from facemtl.models.ifan import IFAN


def task_streams(model: IFAN) -> tuple[int, ...]:
    """The batch-norm row that predicts each task at inference, as ``IFAN.forward(source=None)`` picks it."""
    if model.config.bn_sources == 1:
        return (0,) * len(model.tasks)
    return tuple(model.task_sources)


class StreamwiseIFAN(nn.Module):
    """``images -> tuple of decoded last-iteration outputs`` (``model.tasks`` order), one stream
    at a time; the same numbers as ``ExportWrapper`` (up to float rounding).

    ``tasks`` (names, None = all): the outputs of the graph. Earlier iterations still run every
    stream (the integrator reads every task); the last runs only the requested tasks' streams."""

    def __init__(self, model: IFAN, iterations: int | None = None, tasks=None):
        super().__init__()
        self.model = model
        self.iterations = model.check_iterations(iterations)
        self.names = [t.name for t in model.tasks]
        self.task_streams = task_streams(model)
        self.streams = tuple(sorted(set(self.task_streams)))
        self.outputs = [self.names[t] for t in model._wanted(tasks)]  # model order; checks the names
        self.last_streams = tuple(sorted({s for n, s in zip(self.names, self.task_streams) if n in self.outputs}))

    def forward(self, images: torch.Tensor):
        model = self.model
        size = tuple(images.shape[-2:])
        feedback, last = None, {}
        for i in range(self.iterations + 1):
            if i:  # the assembled predictions, re-encoded once, feed every stream (as in IFAN.forward)
                feedback = model.integrator([last[name] for name in self.names], size)
            model.use_iteration_statistics(i)
            final = i == self.iterations
            # Explicit, not left to the exporter's dead-code pass: the eager module is cheaper too.
            streams = self.last_streams if final else self.streams
            features = {s: model.backbone(images, s, feedback) for s in streams}
            last = {name: decoder(features[s], s)
                    for name, decoder, s in zip(self.names, model.decoders, self.task_streams)
                    if not final or name in self.outputs}
        return tuple(model.decode(name, last[name]) for name in self.outputs)


def inference_module(model: nn.Module, iterations: int | None = None, tasks=None) -> nn.Module | None:
    """:class:`StreamwiseIFAN` (outputs: ``tasks``, None = all) for an iFAN that predicts through
    several streams, else None (one stream: the model's own forward is already the plain graph)."""
    if isinstance(model, IFAN) and len(set(task_streams(model))) > 1:
        return StreamwiseIFAN(model, iterations, tasks)
    return None
