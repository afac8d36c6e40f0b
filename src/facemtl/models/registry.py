"""A tiny model registry: ``@register_model("name")`` on a builder, ``create_model(name, **cfg)``.

Builders live in their own modules; ``_BUILTIN_MODULES`` lists the modules imported on
first use so that registering needs no import-order tricks.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Callable

from facemtl.errors import FacemtlError

if TYPE_CHECKING:
    import torch.nn as nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_BUILTIN_MODULES: tuple[str, ...] = (
    "facemtl.models.ifan",
    "facemtl.models.collab",
    "facemtl.models.cross_stitch",
    "facemtl.models.sharing",
    "facemtl.models.unet",
)
_loaded = False


def register_model(name: str):
    def decorator(builder: Callable[..., nn.Module]):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = builder
        return builder

    return decorator


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in _BUILTIN_MODULES:
            importlib.import_module(module)


def list_models() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def builder_parameters(name: str) -> frozenset[str]:
    """The keyword arguments model ``name``'s builder accepts (to pass e.g. ``input_size`` only where it means something)."""
    import inspect

    _load_builtins()
    if name not in _REGISTRY:
        raise FacemtlError(f"unknown model {name!r}; available: {', '.join(sorted(_REGISTRY)) or 'none'}")
    params = inspect.signature(_REGISTRY[name]).parameters.values()
    # "**" marks a builder that takes any keyword (and checks them itself)
    return frozenset("**" if p.kind is p.VAR_KEYWORD else p.name for p in params)


def create_model(name: str, **config) -> nn.Module:
    """Build model ``name``; arguments its builder does not take are one clear error."""
    accepted = builder_parameters(name)
    unknown = sorted(set(config) - accepted)
    if unknown and "**" not in accepted:
        raise FacemtlError(f"model {name!r} takes no argument(s) {', '.join(map(repr, unknown))} "
                           f"(it takes: {', '.join(sorted(accepted))})")
    return _REGISTRY[name](**config)
