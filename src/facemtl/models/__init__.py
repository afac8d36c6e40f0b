"""Models. ``create_model(name, **config)`` builds any registered model."""

from facemtl.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
