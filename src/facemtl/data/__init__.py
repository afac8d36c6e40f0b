"""Data: the synthetic face generator, dataset format readers, transforms and mixing.

``load_dataset(name, root, split, **options)`` opens one of the standard face datasets as a
lazy sequence of raw samples (``docs/datasets.md``, "Loader contract"); each format's module in
:mod:`facemtl.data.formats` documents its layout, splits, label conversions and options.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Sequence

from facemtl.errors import FacemtlError

# dataset name -> module in facemtl.data.formats (each exposes ``load(root, split, **options)``)
DATASETS: dict[str, str] = {
    "mtfl": "mtfl",
    "aflw": "aflw",
    "celeba": "celeba",
    "300w": "ibug",
    "wflw": "wflw",
    "helen": "helen",
    "lapa": "lapa",
    "celebamask-hq": "celebamask_hq",
    "fer2013": "fer2013",
    "rafdb": "rafdb",
    "affectnet": "affectnet",
    "emotion-folder": "emotion_folder",
}


def _reader_module(name: str):
    key = str(name).lower()
    if key not in DATASETS:
        raise FacemtlError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    return importlib.import_module(f"facemtl.data.formats.{DATASETS[key]}")


def dataset_loader(name: str):
    """The ``load`` function of dataset ``name``."""
    return _reader_module(name).load


def reader_tasks(name: str) -> dict:
    """Tasks dataset ``name``'s reader serves beyond the standard and dataset tasks of
    :mod:`facemtl.tasks` (its module's ``TASKS``, e.g. CelebA's 40 attributes): name -> Task."""
    return dict(getattr(_reader_module(name), "TASKS", {}))


def loader_options(name: str) -> list[str]:
    """The options ``load_dataset(name, root, split, **options)`` accepts."""
    return [p for p in inspect.signature(dataset_loader(name)).parameters if p not in ("root", "split")]


def load_dataset(name: str, root, split: str = "train", **options) -> Sequence[dict]:
    """Open dataset ``name`` at ``root`` for ``split``: a lazy ``Sequence`` of raw samples.

    Annotation files are indexed once here; images are decoded when items are read. Unknown
    options are a FacemtlError listing the dataset's options.
    """
    if root is None:
        raise FacemtlError(f"dataset {name!r}: no root folder given")
    load = dataset_loader(name)
    params = inspect.signature(load).parameters
    allowed = [p for p in params if p not in ("root", "split")]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise FacemtlError(f"dataset {name!r}: unknown option(s) {', '.join(unknown)}; "
                           f"options: {', '.join(allowed)}")
    return load(root, split, **options)


__all__ = ["DATASETS", "dataset_loader", "load_dataset", "loader_options", "reader_tasks"]
