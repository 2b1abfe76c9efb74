"""Classifiers for 28x28 grey images, both accepted by Opacus' ModuleValidator.

Every model is `head(features(x))`: `features` gives the penultimate activation
h (n, H) and `head` is the final nn.Linear(H, classes), so the last-layer
gradient proxies (crepe.proxies) have a closed form.
"""

from __future__ import annotations

import torch
from torch import nn

from crepe.config import check_choice, options

MODELS = options()["model"].choices
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


class CNN(nn.Module):
    """The Opacus MNIST example's CNN: conv 16x8x8/2 -> pool -> conv 32x4x4/2 -> pool -> fc 32 -> fc 10."""

    def __init__(self, classes: int = 10, act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 8, stride=2, padding=3),  # (n,16,14,14)
            act(),
            nn.MaxPool2d(2, 1),  # (n,16,13,13)
            nn.Conv2d(16, 32, 4, stride=2),  # (n,32,5,5)
            act(),
            nn.MaxPool2d(2, 1),  # (n,32,4,4)
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 32),
            act(),  # h: (n, 32)
        )
        self.head = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    """Pre-activation-free ResNet basic block with GroupNorm (BatchNorm is not DP-compatible)."""

    def __init__(self, cin: int, cout: int, stride: int, act: type[nn.Module], groups: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(groups, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.act = act()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.GroupNorm(groups, cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class ResNet(nn.Module):
    """A small ResNet for 28x28: stem 16 -> blocks 16, 32/2, 64/2 -> global average pool -> fc."""

    def __init__(self, classes: int = 10, act: type[nn.Module] = nn.ReLU, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1, bias=False),  # (n,w,28,28)
            nn.GroupNorm(8, w),
            act(),
            BasicBlock(w, w, 1, act),
            BasicBlock(w, 2 * w, 2, act),  # (n,2w,14,14)
            BasicBlock(2 * w, 4 * w, 2, act),  # (n,4w,7,7)
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),  # h: (n, 4w)
        )
        self.head = nn.Linear(4 * w, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _convnet(classes: int, act: type[nn.Module]) -> nn.Module:
    """The private-set paper's ConvNet (instance norm, ReLU; `act` does not apply), width 32, depth 3."""
    from crepe.smallsets.private_set import ConvNet

    return ConvNet(32, 3, classes)


_BUILDERS = {"cnn": CNN, "resnet": ResNet, "convnet": _convnet}


def build_model(name: str, *, activation: str = "relu", classes: int = 10) -> nn.Module:
    """A fresh model (initialised from the global torch RNG: seed it first)."""
    check_choice("model", name, MODELS)
    check_choice("activation", activation, tuple(ACTIVATIONS))
    return _BUILDERS[name](classes=classes, act=ACTIVATIONS[activation])
