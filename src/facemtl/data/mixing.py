"""Training sources and deterministic, shardable batch streams (iFAN section 3.3).

A :class:`Source` is one dataset D_t with its train and test splits, the tasks it labels and
its index (the per-source batch-norm domain). A :class:`BatchStream` turns a source's training
split into batches:

* pass ``p`` of a stream visits the samples in the order of a permutation drawn from
  ``numpy.random.SeedSequence([seed, source, stream, p])``: no global random state, and the
  order of any pass can be recomputed from its number alone, which is what makes resuming
  exact without storing sampler state beyond the step counter;
* with several processes, each takes ``order[rank::world_size]`` of a pass truncated to a
  multiple of ``world_size`` (every process gets the same number of batches);
* batches are ``batch_size`` consecutive entries; a trailing partial batch is dropped (batch
  norm statistics from a handful of images are noise), unless the shard is smaller than one
  batch, in which case the whole shard is one batch.

Augmentation randomness is keyed the same way (by seed, source, stream, pass and position),
so a resumed run sees the same augmented images as an uninterrupted one.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from facemtl.data.sample import collate, to_sample
from facemtl.errors import FacemtlError
from facemtl.tasks import Task


@dataclass
class Source:
    """One training dataset: raw-sample sequences and the tasks it labels."""

    index: int
    name: str
    tasks: tuple[Task, ...]
    train: Sequence
    test: Sequence
    batch_size: int
    transform: Any = None  # training transform ``(raw, rng) -> raw`` (FaceCrop) or None
    eval_transform: Any = None
    description: dict = field(default_factory=dict)  # JSON for checkpoints
    threads: int = 1  # samples of a batch read in parallel (real readers: decoding releases the GIL)
    _cache: dict = field(default_factory=dict, repr=False)

    def raw(self, i: int) -> dict:
        # Synthetic samples are rendered on access: keep them (they are small at 64-128 px).
        if self.transform is None:
            hit = self._cache.get(i)
            if hit is None:
                hit = self._cache[i] = self.train[i]
            return hit
        return self.train[i]

    def sample(self, i: int, rng: np.random.Generator | None) -> dict:
        raw = self.raw(i)
        if self.transform is not None:
            raw = self.transform(raw, rng)
        return to_sample(raw, self.tasks, source=self.index)


def source_options(name: str, tasks: Sequence[Task], options) -> dict:
    """A source's reader options completed from its tasks.

    A reader that files its one label under a configurable key (a ``task`` option, as
    ``emotion-folder``) gets the name of the source's one category task, and, when the config
    sets no ``classes``, that task's class names, so labels follow the task's class order
    (FER2013's for the standard ``emotion``, a declaration's for the user's own task)."""
    from facemtl.data import loader_options

    out = dict(options)
    accepted = loader_options(name)
    from facemtl.kinds import kind_of

    category = [t for t in tasks if kind_of(t).label_per_image]
    if len(category) == 1 and "task" in accepted:
        out.setdefault("task", category[0].name)
        if "classes" in accepted and "classes" not in out and category[0].class_names:
            out["classes"] = list(category[0].class_names)
    return out


def render_options(cfg) -> dict:
    """A synthetic source's (``data.N`` with name ``synth``) render options, as keyword arguments
    of :class:`facemtl.data.synth.SyntheticFaces`: every place that draws a source's faces (training,
    the data-scarcity pool, ``facemtl synth --source``) draws the same ones."""
    from facemtl.data.synth import ALL_FEATURES

    return dict(features=ALL_FEATURES if cfg.features is None else frozenset(cfg.features),
                pose={k: list(v) for k, v in cfg.pose.items()} or None,
                expression=None if cfg.expression is None else list(cfg.expression),
                creases=cfg.creases, brow_drop=cfg.brow_drop, glasses_frames=cfg.glasses_frames,
                angry_shout=cfg.angry_shout)


def build_sources(config, tasks: Sequence[Task], datasets: Sequence[tuple[Sequence, Sequence]] | None = None) -> list[Source]:
    """Sources of a :class:`facemtl.config.TrainConfig`.

    ``datasets``: optional ``(train, test)`` raw sequences per source, used instead of building
    them from the config (tests, notebooks). Synthetic sources come from
    :class:`facemtl.data.synth.SyntheticFaces` at ``config.input_size``; real ones from
    ``facemtl.data.load_dataset`` and are cropped by ``FaceCrop`` (imported only when needed).
    """
    by_name = {t.name: t for t in tasks}
    sources = []
    for i, cfg in enumerate(config.data):
        src_tasks = tuple(by_name[t] for t in cfg.tasks if t in by_name)
        desc: dict = {"name": cfg.name, "tasks": list(cfg.tasks)}
        transform = eval_transform = None
        if datasets is not None:
            train, test = datasets[i]
        elif cfg.name == "synth":
            from facemtl.data.synth import SyntheticFaces

            opts = render_options(cfg)
            train = SyntheticFaces(cfg.n_train, style=cfg.style, seed=cfg.seed, size=config.input_size, **opts)
            # A disjoint stream of faces for testing: seeds far from any training seed.
            test = SyntheticFaces(cfg.n_test, style=cfg.style, seed=cfg.seed + 1_000_003, size=config.input_size,
                                  **opts)
            desc.update(style=cfg.style, n_train=cfg.n_train, n_test=cfg.n_test, seed=cfg.seed,
                        features=None if cfg.features is None else sorted(opts["features"]))
            # model.json names the render options a source sets (those left at the style's are absent)
            desc.update((k, v) for k in ("pose", "expression", "creases", "brow_drop", "glasses_frames", "angry_shout")
                        if (v := opts[k]) is not None)
        else:
            from facemtl.data import load_dataset
            from facemtl.data.transforms import DEFAULT_CROP_MARGIN, FaceCrop

            options = source_options(cfg.name, src_tasks, cfg.options)
            margin = options.pop("margin", DEFAULT_CROP_MARGIN)
            try:
                train = load_dataset(cfg.name, cfg.root, cfg.train_split, **options)
                test = load_dataset(cfg.name, cfg.root, cfg.test_split, **options)
            except FacemtlError as exc:  # which source of the config: a run can read several sets
                raise FacemtlError(f"data.{i} ({cfg.name}): {exc}") from None
            # The Task objects, not names: flips of users' own tasks come from their declarations.
            transform = FaceCrop(size=config.input_size, margin=margin, augment=cfg.augment, tasks=src_tasks)
            eval_transform = FaceCrop(size=config.input_size, margin=margin, augment=False, tasks=src_tasks)
            desc.update(root=str(cfg.root), train_split=cfg.train_split, test_split=cfg.test_split,
                        options=dict(cfg.options), crop={"size": config.input_size, "margin": margin})
        if len(train) == 0:
            raise FacemtlError(f"source {i} ({cfg.name}): the training split is empty")
        threads = config.reader_threads if transform is not None else 1  # synthetic faces are cached in memory
        sources.append(Source(i, cfg.name, src_tasks, train, test, cfg.batch_size, transform, eval_transform, desc,
                              threads))
    return sources


def prerender_synthetic(sources: Sequence[Source], local_processes: int = 1) -> str | None:
    """Render the synthetic sources' training and test faces up front and keep them
    (:meth:`facemtl.data.synth.SyntheticFaces.prerender`), in parallel on the machine's cores
    shared by ``local_processes`` training processes: then no update waits on rendering and no
    evaluation re-renders its test split. Returns a line for the run's log (None: nothing to do)."""
    import time

    from facemtl.data.synth import SyntheticFaces

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    processes = max(1, cores // max(1, local_processes))
    splits = [split for source in sources for split in (source.train, source.test) if isinstance(split, SyntheticFaces)]
    if not splits:
        return None
    start = time.perf_counter()
    for split in splits:
        split.prerender(processes)
    return (f"rendered {sum(len(split) for split in splits):,} synthetic faces in {time.perf_counter() - start:.1f} s "
            f"(up to {processes} processes)")


class BatchStream:
    """Deterministic batches of one source, sharded by (rank, world_size); see the module doc."""

    def __init__(self, source: Source, seed: int, stream: int, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise FacemtlError(f"rank {rank} out of range for world size {world_size}")
        n = len(source.train)
        self.source, self.seed, self.stream = source, int(seed), int(stream)
        self.rank, self.world_size = rank, world_size
        self.shard = n // world_size
        if self.shard == 0:
            raise FacemtlError(f"source {source.index} ({source.name}): {n} samples cannot be split over {world_size} processes")
        self.batch_size = min(source.batch_size, self.shard)
        self.batches_per_pass = self.shard // self.batch_size

    def _key(self, p: int, *more: int) -> np.random.SeedSequence:
        return np.random.SeedSequence([self.seed, self.source.index, self.stream, p, *more])

    def order(self, p: int) -> np.ndarray:
        """This process's sample indices for pass ``p``."""
        perm = np.random.default_rng(self._key(p)).permutation(len(self.source.train))
        return perm[: self.shard * self.world_size][self.rank :: self.world_size]

    def indices(self, draw: int) -> tuple[int, int, np.ndarray]:
        """(pass, position in pass, sample indices) of the ``draw``-th batch of the stream."""
        p, b = divmod(int(draw), self.batches_per_pass)
        order = self.order(p)
        return p, b, order[b * self.batch_size : (b + 1) * self.batch_size]

    def batch(self, draw: int) -> dict:
        """The ``draw``-th batch (collated samples); the same draw gives the same batch."""
        p, b, idx = self.indices(draw)

        def sample(j: int):  # each sample's augmentation has its own key: any thread order gives the same batch
            rng = np.random.default_rng(self._key(p, b * self.batch_size + j, 1)) if self.source.transform else None
            return self.source.sample(int(idx[j]), rng)

        if self.source.threads > 1 and len(idx) > 1:
            return collate(list(_reader_pool(self.source.threads).map(sample, range(len(idx)))))
        return collate([sample(j) for j in range(len(idx))])


@functools.lru_cache(maxsize=4)
def _reader_pool(threads: int) -> ThreadPoolExecutor:
    """One pool per thread count for the process (its threads idle between batches)."""
    return ThreadPoolExecutor(threads, thread_name_prefix="facemtl-reader")


def eval_batches(source: Source, batch_size: int, rank: int = 0, world_size: int = 1):
    """Test split of ``source`` in order (sharded ``rank::world_size``), as (batch, raw samples)."""
    idx = list(range(rank, len(source.test), world_size))
    for start in range(0, len(idx), batch_size):
        raws, samples = [], []
        for i in idx[start : start + batch_size]:
            raw = source.test[i]
            crop = source.eval_transform(raw) if source.eval_transform is not None else raw
            raws.append(raw)
            samples.append(to_sample(crop, source.tasks, source=source.index))
        yield collate(samples), raws
