"""Underlying networks of Deep Collaboration (section 3) as a series of blocks, and loading
ImageNet weights into them.

An underlying network exposes ``block_channels`` (output channels of each block) and
``forward_block(i, x)``; DCNet and Cross-Stitch insert their lateral connections between
blocks, hard sharing simply runs all blocks. The block split never changes the network.

ImageNet weights come as a safetensors file with torchvision's key names. We never unpickle
user files, so torchvision ``.pth`` checkpoints must be converted once, where torchvision is
installed::

    import torchvision; from safetensors.torch import save_file
    sd = torchvision.models.resnet18(weights="IMAGENET1K_V1").state_dict()  # or alexnet(...)
    save_file({k: v.contiguous() for k, v in sd.items()}, "resnet18_imagenet.safetensors")

Note: facemtl normalises images to [-1, 1] (``facemtl.data.sample.IMAGE_MEAN/STD``), not with
ImageNet statistics; the first layers adapt during fine-tuning.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from facemtl.errors import FacemtlError

BACKBONES = ("resnet18", "alexnet")
# Top classifier layers never loaded from ImageNet files: our task heads replace them.
_TOP_PREFIXES = ("fc.", "classifier.")


class Backbone(nn.Module):
    """Base of underlying networks: a chain of blocks with known output channels."""

    block_channels: tuple[int, ...]

    @property
    def num_blocks(self) -> int:
        return len(self.block_channels)

    def forward_block(self, index: int, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.num_blocks):
            x = self.forward_block(i, x)
        return x


def build_backbone(name: str, width: int | None = None) -> Backbone:
    """An underlying network without its ImageNet classifier; ``width`` = first-block channels
    (64 is the standard network; larger widens every layer proportionally)."""
    if name == "resnet18":
        from facemtl.models.resnet import ResNet18

        return ResNet18(width=width or 64, include_top=False)
    if name == "alexnet":
        from facemtl.models.alexnet import AlexNet

        return AlexNet(width=width or 64, include_top=False)
    raise FacemtlError(f"unknown backbone {name!r}; expected one of {', '.join(BACKBONES)}")


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an ImageNet weights file (safetensors only)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FacemtlError(f"pretrained weights file not found: {path}")
    if path.suffix != ".safetensors":
        raise FacemtlError(
            f"pretrained weights {path}: expected a .safetensors file (convert torchvision .pth files "
            "with the script in facemtl.models.backbones)"
        )
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise FacemtlError(f"pretrained weights {path}: not a readable safetensors file ({exc})") from None


def load_pretrained(module: nn.Module, weights: dict[str, torch.Tensor], origin: str = "weights") -> None:
    """Copy ``weights`` (torchvision key names) into one underlying network; top layers skipped.

    Every key the network has must be present with the same shape, else FacemtlError lists
    the problems (a widened network cannot take standard ImageNet weights).
    """
    own = module.state_dict()
    wanted = {k: v for k, v in weights.items() if not k.startswith(_TOP_PREFIXES)}
    missing = sorted(set(own) - set(wanted))
    unexpected = sorted(set(wanted) - set(own))
    mismatched = [
        f"{k}: file {tuple(wanted[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(wanted))
        if wanted[k].shape != own[k].shape
    ]
    problems = []
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): " + "; ".join(mismatched[:3]))
    if missing:
        problems.append(f"{len(missing)} key(s) missing from the file: " + ", ".join(missing[:3]))
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): " + ", ".join(unexpected[:3]))
    if problems:
        more = " ..." if len(mismatched) > 3 or len(missing) > 3 or len(unexpected) > 3 else ""
        raise FacemtlError(f"cannot load {origin} into {type(module).__name__}: " + " | ".join(problems) + more)
    with torch.no_grad():
        for k, v in wanted.items():
            own[k].copy_(v)


def search_width(count, target: int, start: int = 1, tolerance: float = 0.05) -> int:
    """Smallest-error integer width ``w >= start`` with ``count(w)`` closest to ``target``.

    ``count`` must grow with ``w``. Raises if the best is not within ``tolerance`` of target.
    """
    lo, hi = start, start
    while count(hi) < target:
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # invariant: count(lo) < target <= count(hi), unless lo == start
        mid = (lo + hi) // 2
        if count(mid) < target:
            lo = mid
        else:
            hi = mid
    best = min((lo, hi), key=lambda w: abs(count(w) - target))
    if abs(count(best) - target) > tolerance * target:
        raise FacemtlError(f"no width matches {target} parameters within {tolerance:.0%}")
    return best
