"""Several processes, one model: data-parallel training under ``torchrun``.

``torchrun --nproc_per_node N -m facemtl train CONFIG ...`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and a rendezvous in the environment; :func:`init_from_env` joins
them (``nccl`` when training on CUDA, else ``gloo``). Every process then runs the SAME plan: update
k on its own shard of update k's batch (:class:`facemtl.data.mixing.BatchStream` shards every
pass by rank), so a global batch is ``N x batch_size``.

What is synchronised, and why it is done by hand rather than with ``DistributedDataParallel``:

* **Gradients** are averaged after every backward pass (:func:`average_gradients`), over exactly
  the parameters that received one. Algorithm 1's updates touch different parameter subsets
  (stage 1: shared + decoder t; stage 2: also the interaction parameters; Eq. 6 drops the other
  decoders' gradients), and per-source batch norm gives gradients only to the active source's
  rows. Which parameters have gradients depends only on update k, so it is the same on every
  rank; this is checked (one integer all-reduce), not assumed, so a mistake fails loudly instead
  of hanging or silently averaging mismatched tensors.
* **Initial weights** are broadcast from rank 0 (all ranks seed identically anyway).
* **Batch-norm running statistics** are NOT synchronised during training (each rank normalises
  its own shard, as plain DDP does); they are averaged across ranks before every checkpoint and
  evaluation (:func:`average_buffers`), so the saved model summarises every shard.
* Checkpoints and logs are written by rank 0; evaluation is sharded and its meters all-reduced.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from facemtl.errors import FacemtlError


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size_from_env() -> int:
    """The number of processes torchrun launched (``WORLD_SIZE``; 1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_world_size_from_env() -> int:
    """The number of processes torchrun launched on this machine (``LOCAL_WORLD_SIZE``; 1 without torchrun)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def init_from_env(device: str = "cpu") -> tuple[int, int]:
    """Join the process group torchrun describes in the environment; returns (rank, world size).
    Without torchrun (no ``WORLD_SIZE`` > 1) nothing happens: (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if world_size_from_env() <= 1:
        return 0, 1
    if not dist.is_available():
        raise FacemtlError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), dist.get_world_size()


def broadcast_parameters(model: torch.nn.Module) -> None:
    """Every rank starts from rank 0's weights and buffers."""
    if not active():
        return
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, 0)


def average_gradients(model: torch.nn.Module) -> None:
    """Average the gradients that exist across ranks (flattened into one all-reduce)."""
    if not active():
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    count = torch.tensor([len(grads)], dtype=torch.int64, device=device)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    if len({int(c) for c in counts}) != 1:
        raise FacemtlError(f"distributed training: the ranks computed gradients for different numbers of "
                           f"parameters ({[int(c) for c in counts]}); every rank must run the same update")
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset: offset + g.numel()].view_as(g))
        offset += g.numel()


def average_buffers(model: torch.nn.Module) -> None:
    """Average floating-point buffers (batch-norm running statistics) across ranks."""
    if not active():
        return
    with torch.no_grad():
        for b in model.buffers():
            if b.is_floating_point():
                dist.all_reduce(b)
                b /= dist.get_world_size()


def rank0_decides(check) -> None:
    """Run ``check()`` on rank 0 only (e.g. the run folder's checks) and let every rank share its
    outcome: when it raises, the other ranks raise a FacemtlError with the same message instead
    of waiting forever at the next collective call."""
    if not active():
        check()
        return
    message = None
    error = None
    if dist.get_rank() == 0:
        try:
            check()
        except BaseException as exc:  # noqa: BLE001 - re-raised below on rank 0, reported on the others
            error, message = exc, str(exc) or type(exc).__name__
    shared = [message]
    dist.broadcast_object_list(shared, 0)
    if error is not None:
        raise error
    if shared[0] is not None:
        raise FacemtlError(f"rank 0 stopped: {shared[0]}")


def wait_for_all() -> None:
    """Barrier (no-op in one process): every rank leaves training together, after rank 0 has
    written the checkpoint and the results, so no process tears the group down while another
    is still using it."""
    if active():
        dist.barrier()
