"""Classifiers for images of any channel count and size (28x28 grey by default), all accepted by
Opacus' ModuleValidator.

Every model is `head(features(x))`: `features` gives the penultimate activation
h (n, H) and `head` is the final nn.Linear(H, classes), so the last-layer
gradient proxies (crepe.proxies) have a closed form. `linear` and `scatter-cnn`
are Tramer & Boneh's (2021) models for ScatterNet features (crepe.features),
optionally behind a GroupNorm without affine parameters (per example, no data
statistics).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from crepe.config import UsageError, check_choice, options

MODELS = options()["model"].choices
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


Shape = tuple[int, int, int]  # (channels, height, width) of one input


def flat_size(layers: nn.Module, shape: Shape, what: str) -> int:
    """Features per example after `layers` on an input of `shape`; UsageError if the input is too small."""
    try:
        with torch.no_grad():
            return int(layers(torch.zeros(1, *shape)).numel())
    except RuntimeError as e:
        raise UsageError(f"--model {what} cannot take inputs of shape {shape}: {str(e).splitlines()[0]}") from e


def input_norm(shape: Shape, groups: int | None) -> nn.Module:
    """GroupNorm over the channels without affine parameters (Tramer & Boneh's input normalisation), or none."""
    if groups is None:
        return nn.Identity()
    if shape[0] % groups:
        raise UsageError(f"--norm-groups {groups} does not divide the input's {shape[0]} channels")
    return nn.GroupNorm(groups, shape[0], affine=False)


class Classifier(nn.Module):
    """head(features(x)): what every model here is (module docstring); subclasses set both."""

    features: nn.Module
    head: nn.Linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class CNN(Classifier):
    """The Opacus MNIST example's CNN: conv 16x8x8/2 -> pool -> conv 32x4x4/2 -> pool -> fc 32 -> fc 10
    (for 1 x 28 x 28: 32 x 4 x 4 features before fc 32)."""

    def __init__(self, classes: int = 10, act: type[nn.Module] = nn.ReLU, shape: Shape = (1, 28, 28)) -> None:
        super().__init__()
        conv = nn.Sequential(
            nn.Conv2d(shape[0], 16, 8, stride=2, padding=3),  # (n,16,14,14)
            act(),
            nn.MaxPool2d(2, 1),  # (n,16,13,13)
            nn.Conv2d(16, 32, 4, stride=2),  # (n,32,5,5)
            act(),
            nn.MaxPool2d(2, 1),  # (n,32,4,4)
            nn.Flatten(),
        )
        self.features = nn.Sequential(*conv, nn.Linear(flat_size(conv, shape, "cnn"), 32), act())  # h: (n, 32)
        self.head = nn.Linear(32, classes)


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


class ResNet(Classifier):
    """A small ResNet for 28x28: stem 16 -> blocks 16, 32/2, 64/2 -> global average pool -> fc."""

    def __init__(self, classes: int = 10, act: type[nn.Module] = nn.ReLU, width: int = 16,
                 shape: Shape = (1, 28, 28)) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(shape[0], w, 3, padding=1, bias=False),  # (n,w,28,28)
            nn.GroupNorm(8, w),
            act(),
            BasicBlock(w, w, 1, act),
            BasicBlock(w, 2 * w, 2, act),  # (n,2w,14,14)
            BasicBlock(2 * w, 4 * w, 2, act),  # (n,4w,7,7)
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),  # h: (n, 4w)
        )
        self.head = nn.Linear(4 * w, classes)


class ConvNet(Classifier):
    """The paper's ConvNet: depth x [conv 3x3 -> instance norm -> ReLU -> avgpool 2] -> linear.

    Instance norm is GroupNorm with one group per channel (affine), which is
    per-example and so DP-compatible. For 1-channel 28x28 input the first conv
    pads by 3 (28 -> 32) so that three poolings divide evenly, as the paper's
    code does: depth 3 gives (n, width, 4, 4) features. `width` is narrow by
    default for CPU (the paper: 128). With `generator`, every parameter is
    drawn from it (PyTorch's default initialisation), else from the global RNG.
    """

    def __init__(
        self, width: int = 32, depth: int = 3, classes: int = 10, *, channels: int = 1, size: int = 28,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        for name, v in (("width", width), ("depth", depth), ("classes", classes), ("channels", channels)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UsageError(f"ConvNet {name} must be an integer >= 1, got {v!r}")
        layers: list[nn.Module] = []
        c, s = channels, size
        for d in range(depth):
            pad = 3 if d == 0 and channels == 1 and size == 28 else 1
            s = (s + 2 * pad - 2) // 2
            if s < 1:
                raise UsageError(f"ConvNet depth {depth} is too deep for {size}x{size} input; allowed: 1..{d}")
            layers += [nn.Conv2d(c, width, 3, padding=pad), nn.GroupNorm(width, width, affine=True), nn.ReLU(), nn.AvgPool2d(2)]
            c = width
        self.features = nn.Sequential(*layers, nn.Flatten())  # h: (n, width * s * s)
        self.head = nn.Linear(width * s * s, classes)
        if generator is not None:
            self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator) -> None:
        """PyTorch's default initialisation, drawn from `generator` in module order."""
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
                    if m.bias is not None:
                        bound = 1.0 / math.sqrt(m.weight[0].numel())  # 1 / sqrt(fan_in)
                        m.bias.uniform_(-bound, bound, generator=generator)
                elif isinstance(m, nn.GroupNorm):
                    m.weight.fill_(1.0)
                    m.bias.zero_()


class Linear(Classifier):
    """A linear classifier on the flattened input, after an optional input GroupNorm (ScatterNet + linear)."""

    def __init__(self, classes: int = 10, shape: Shape = (1, 28, 28), norm_groups: int | None = None) -> None:
        super().__init__()
        self.features = nn.Sequential(input_norm(shape, norm_groups), nn.Flatten())  # h: the input, normalised
        self.head = nn.Linear(math.prod(shape), classes)


class ScatterCNN(Classifier):
    """Tramer & Boneh's small CNN on ScatterNet features: input GroupNorm -> conv 16x3x3/2 -> conv 32x3x3
    -> fc 32 -> fc classes (for 81 x 7 x 7 features: 32 x 4 x 4 before fc 32)."""

    def __init__(self, classes: int = 10, act: type[nn.Module] = nn.Tanh, shape: Shape = (81, 7, 7),
                 norm_groups: int | None = None) -> None:
        super().__init__()
        conv = nn.Sequential(
            input_norm(shape, norm_groups),
            nn.Conv2d(shape[0], 16, 3, stride=2, padding=1),
            act(),
            nn.Conv2d(16, 32, 3, stride=1, padding=1),
            act(),
            nn.Flatten(),
        )
        self.features = nn.Sequential(*conv, nn.Linear(flat_size(conv, shape, "scatter-cnn"), 32), act())
        self.head = nn.Linear(32, classes)


class CifarCNN(Classifier):
    """Tramer & Boneh's end-to-end CIFAR-10 CNN (after Papernot et al.'s tempered-sigmoid model):
    [conv 3x3 -> act] x 2 -> maxpool 2, with 32, 64, 128 channels -> fc 128 -> fc classes (tanh in
    their recipe); for 3 x 32 x 32: 128 x 4 x 4 features before fc 128."""

    def __init__(self, classes: int = 10, act: type[nn.Module] = nn.Tanh, shape: Shape = (3, 32, 32)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = shape[0]
        for width in (32, 64, 128):
            layers += [nn.Conv2d(c, width, 3, padding=1), act(), nn.Conv2d(width, width, 3, padding=1), act(),
                       nn.MaxPool2d(2, 2)]
            c = width
        conv = nn.Sequential(*layers, nn.Flatten())
        self.features = nn.Sequential(*conv, nn.Linear(flat_size(conv, shape, "cifar-cnn"), 128), act())
        self.head = nn.Linear(128, classes)


def build_model(name: str, *, activation: str = "relu", classes: int = 10, shape: Shape = (1, 28, 28),
                norm_groups: int | None = None) -> nn.Module:
    """A fresh model for inputs of `shape` (initialised from the global torch RNG: seed it first).
    `activation` applies to cnn, resnet, cifar-cnn and scatter-cnn; `norm_groups` to linear and scatter-cnn."""
    check_choice("model", name, MODELS)
    check_choice("activation", activation, tuple(ACTIVATIONS))
    shape = tuple(int(v) for v in shape)  # type: ignore[assignment]
    if len(shape) != 3 or min(shape) < 1:
        raise UsageError(f"a model's input shape is (channels, height, width); got {shape}")
    act = ACTIVATIONS[activation]
    if name == "convnet":  # the private-set paper's (instance norm, ReLU): width 32, depth 3
        if shape[1] != shape[2]:
            raise UsageError(f"--model convnet takes square images; got {shape[1]}x{shape[2]}")
        return ConvNet(32, 3, classes, channels=shape[0], size=shape[1])
    if name == "linear":
        return Linear(classes, shape, norm_groups)
    if name == "scatter-cnn":
        return ScatterCNN(classes, act, shape, norm_groups)
    return {"cnn": CNN, "resnet": ResNet, "cifar-cnn": CifarCNN}[name](classes=classes, act=act, shape=shape)
