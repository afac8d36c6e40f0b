"""facemtl: integrated multi-task face analytics.

Two systems in one toolkit:

* iFAN (integrated face analytics network): an FC-DenseNet backbone shared by
  landmark, parsing and emotion decoders, feature re-encoders and a task
  integrator for iterative refinement, trained across datasets that each label
  a different task (hybrid training, Algorithm 1).
* Deep Collaboration: task-specific ResNet18/AlexNet columns joined by
  collaborative blocks, with the baselines it is compared with.
"""

__version__ = "0.1.0"

from facemtl.errors import FacemtlError

__all__ = ["FacemtlError", "__version__", "create_model", "list_models", "load", "register_model"]


def load(path=None, **kw):
    """A checkpoint (run folder, model.safetensors or model.json; a list of them or a folder with
    ensemble.json: an ensemble, its outputs averaged; None: the model bundled with the package,
    trained on synthetic faces only) as a ready
    :class:`facemtl.inference.predictor.Predictor`; ``kw`` go to it (detector, batch_size, ...,
    ``backend="onnxruntime"`` for the ONNX graph in onnxruntime on the CPU, ``threads``,
    ``tasks=["landmarks"]`` to report, and run at the last iteration, only those tasks)."""
    from facemtl.inference.predictor import Predictor

    if path is None:
        from facemtl.models.checkpoint import bundled_model

        path = bundled_model()
    return Predictor.from_checkpoint(path, **kw)


def __getattr__(name: str):
    # The model API imports torch (about a second); `facemtl --help` and the config tools need not.
    if name in ("create_model", "list_models", "register_model"):
        from facemtl.models import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'facemtl' has no attribute {name!r}")
