"""The colorization CNN of the gradient-whitening paper (Lu, Wang & Liu 2025, §6).

That paper trains "a modified ResNet + CNN (Melas-Kyriazi & Han 2018) with ~12M parameters" to
predict the ab channels of a Lab image from its L channel. The reference code is
``lukemelas/Automatic-Image-Colorization`` ``model.py`` (``ColorNet``):

* trunk: the first six children of a ResNet-18 (conv1 7x7/2, bn1, relu, maxpool, layer1, layer2)
  whose conv1 takes **one** input channel -> 128 channels at H/8;
* decoder: conv3x3 128->128 + BN + ReLU, x2 nearest upsample, conv 128->64 + BN + ReLU,
  conv 64->64 + ReLU, x2 upsample, conv 64->32 + **sigmoid**, conv 32->2, x2 upsample -> 2 x H x W.

**Deviation, on purpose: only modules that are used are built.** The original registers a second
view of the whole ResNet (``global_resnet``: layer3, layer4, 10.49M parameters) and decoder modules its
forward never calls (a fusion ``Linear``, ``BatchNorm1d``, ``ConvTranspose2d`` and two BatchNorms).
That is where "~12M" (11,792,738 registered) comes from; only 954,530 of them ever get a gradient.
Dead parameters have no gradient, so they change nothing in training, but they would make
optimizer benchmarks lie: they inflate memory and state counts, and any optimizer that does not
skip ``grad is None`` would decay or precondition them. We therefore build the 954,530-parameter
network that the original actually trains, and :func:`original_registered_parameters` reports the
original's registered count so runs can log both numbers.

Module names follow torchvision's ResNet (``conv1``, ``bn1``, ``layer1.0.conv1`` ...) so a ResNet-gray
state dict would load with ``strict=False``; the decoder keeps the original's names (``decoder.conv1``...).
No pretrained weights are used (the originals' ``resnet_gray_weights.pth.tar`` is not available);
the trunk is initialised as torchvision does (Kaiming-normal fan-out convs, BN gain 1, bias 0) and
the decoder with PyTorch's defaults, as in the original.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from soapbench.models.registry import register_model


class BasicBlock(nn.Module):
    """ResNet-18's residual block (torchvision layout: conv-bn-relu-conv-bn, optional 1x1 downsample)."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + identity)


def resnet_layer(in_channels: int, channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(BasicBlock(in_channels, channels, stride), BasicBlock(channels, channels))


class Decoder(nn.Module):
    """The forward path of the original ``ColorizationNet`` (its unused modules left out)."""

    def __init__(self, in_channels: int = 128) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 128, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(128)
        self.conv2 = nn.Conv2d(128, 64, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(64)
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1)
        self.conv4 = nn.Conv2d(64, 32, 3, padding=1)
        self.conv5 = nn.Conv2d(32, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(F.relu(self.bn2(self.conv1(x))), scale_factor=2.0, mode="nearest")
        x = F.relu(self.bn3(self.conv2(x)))
        x = F.interpolate(F.relu(self.conv3(x)), scale_factor=2.0, mode="nearest")
        # The sigmoid before the last conv is in the original; the tutorial copies drop it.
        x = torch.sigmoid(self.conv4(x))
        return F.interpolate(self.conv5(x), scale_factor=2.0, mode="nearest")


@register_model("colorization")
class ColorizationNet(nn.Module):
    """L [B, 1, H, W] -> ab [B, 2, H, W] (H, W divisible by 8), both in the original's [0, 1] scaling."""

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = resnet_layer(64, 64, stride=1)
        self.layer2 = resnet_layer(64, 128, stride=2)
        self.decoder = Decoder(128)
        for module in [self.conv1, self.bn1, self.layer1, self.layer2]:
            for sub in module.modules():
                if isinstance(sub, nn.Conv2d) and not sub.weight.is_meta:
                    nn.init.kaiming_normal_(sub.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, grey: torch.Tensor) -> torch.Tensor:
        if grey.shape[-1] % 8 or grey.shape[-2] % 8:
            raise ValueError(f"image size {tuple(grey.shape[-2:])} must be divisible by 8 (three x2 upsamplings)")
        x = self.maxpool(F.relu(self.bn1(self.conv1(grey))))
        return self.decoder(self.layer2(self.layer1(x)))

    def parameter_roles(self) -> dict[str, str]:
        # The final conv's bias stays a "vector" (1-D, as everywhere else); only kernels take the roles.
        return {"conv1.weight": "input", "decoder.conv5.weight": "head"}

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def parameter_counts(self) -> dict[str, int]:
        """Counts for the run record: this model's total and trainable, and what the original registered."""
        return {
            "total": self.num_parameters(),
            "trainable": self.num_parameters(trainable_only=True),
            "original_registered": original_registered_parameters(),
        }


def original_registered_parameters() -> int:
    """Parameters the reference ``ColorNet`` registers (11,792,738), including its never-used modules.

    Built shape-only on the meta device: this net plus ResNet-18's layer3 and layer4 (registered through
    the original's ``global_resnet``) plus the dead decoder modules (fusion Linear 640->128, BatchNorm1d,
    ConvTranspose2d 128->128 4x4, and two unused BatchNorm2d of 64 and 32 channels).
    """
    with torch.device("meta"):
        used = ColorizationNet().num_parameters()
        unused = [
            resnet_layer(128, 256, stride=2),  # layer3
            resnet_layer(256, 512, stride=2),  # layer4
            nn.Linear(128 + 512, 128),  # fusion
            nn.BatchNorm1d(128),
            nn.ConvTranspose2d(128, 128, 4, stride=2, padding=1),
            nn.BatchNorm2d(64),
            nn.BatchNorm2d(32),
        ]
        dead = sum(p.numel() for module in unused for p in module.parameters())
    return used + dead
