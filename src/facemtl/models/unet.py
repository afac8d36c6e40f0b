"""A plain U-Net for face parsing: the CONTROL that iFAN's parsing is measured against.

Why it exists: "a run that finishes is not a model that learns", and a transfer gap (synthetic
training faces -> real photos) can be the data's or the architecture's. The project's other plain
controls (``single`` ResNet18 regressor and classifier) do not segment, so without this model
nothing told whether iFAN's parts shrinking on real faces (docs/evidence.md,
"The bundled model") is iFAN's doing or what any segmentation network learns from these faces.

The network is the standard encoder-decoder with skip connections (Ronneberger et al., 2015):
``depth`` poolings, two 3x3 convolution + batch norm + ReLU layers per level, channels ``width``
doubled per level, transposed-convolution upsampling, the encoder's features concatenated at each
decoder level, and a 1x1 convolution to one logit per class at the input's resolution. No
refinement iterations, one set of batch-norm statistics (``source`` is ignored), segmentation
tasks only. Its loss is iFAN's parsing loss (cross entropy + soft Dice, ``segmentation_loss``),
so that the two differ in the network alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from facemtl.errors import FacemtlError
from facemtl.models.base import FaceModel
from facemtl.models.registry import register_model
from facemtl.tasks import get_tasks


@dataclass(frozen=True)
class UNetConfig:
    tasks: tuple[str, ...]
    width: int = 32
    depth: int = 4
    segmentation_loss: str = "ce+dice"


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class UNet(FaceModel):
    """See the module docstring. Input sides must be multiples of ``2 ** depth``."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        self.tasks = get_tasks(config.tasks)
        wrong = [t.name for t in self.tasks if t.kind != "segmentation"]
        if wrong:  # get_tasks refused an empty list already
            raise FacemtlError(f"model 'unet' predicts segmentation tasks only, got {', '.join(wrong)}")
        if config.segmentation_loss not in ("ce", "ce+dice"):
            raise FacemtlError(f"unet: segmentation_loss must be 'ce' or 'ce+dice', got {config.segmentation_loss!r}")
        if config.width < 1 or config.depth < 1:
            raise FacemtlError(f"unet: width and depth must be >= 1, got {config.width}, {config.depth}")
        chans = [config.width * 2 ** i for i in range(config.depth + 1)]
        self.down = nn.ModuleList(_double_conv(a, b) for a, b in zip([3, *chans[:-2]], chans[:-1]))
        self.bottom = _double_conv(chans[-2], chans[-1])
        self.up = nn.ModuleList(nn.ConvTranspose2d(b, a, 2, stride=2) for a, b in zip(chans[:-1], chans[1:]))
        self.merge = nn.ModuleList(_double_conv(2 * a, a) for a in chans[:-1])
        self.heads = nn.ModuleDict({t.name: nn.Conv2d(chans[0], t.num_outputs, 1) for t in self.tasks})
        self.pool = nn.MaxPool2d(2)

    def forward(self, images: torch.Tensor, source=None, iterations=None, tasks=None) -> list[dict[str, torch.Tensor]]:
        self.check_iterations(iterations)
        step = 2 ** self.config.depth
        if images.shape[-1] % step or images.shape[-2] % step:
            raise FacemtlError(f"unet with depth {self.config.depth} needs input sides that are multiples of "
                               f"{step}, got {tuple(images.shape[-2:])}")
        skips, x = [], images
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)
        for i in reversed(range(len(self.up))):
            x = self.merge[i](torch.cat([skips[i], self.up[i](x)], 1))
        return [{t.name: self.heads[t.name](x) for t in self.tasks}]

    def task_loss(self, name: str, output: torch.Tensor, target: torch.Tensor, visible=None) -> torch.Tensor:
        from facemtl.models.ifan import soft_dice_loss

        loss = super().task_loss(name, output, target, visible)
        if self.config.segmentation_loss == "ce+dice":
            loss = loss + soft_dice_loss(output, target.long())
        return loss


@register_model("unet")
def unet(tasks=("parsing",), width: int = 32, depth: int = 4, segmentation_loss: str = "ce+dice") -> UNet:
    """The plain U-Net control (module docstring); input sides must be multiples of ``2 ** depth``."""
    if isinstance(tasks, str):
        tasks = (tasks,)
    return UNet(UNetConfig(tuple(tasks), int(width), int(depth), segmentation_loss))
