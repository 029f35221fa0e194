"""The digit CNN: a small VGG-style network with BatchNorm, normalisation inside the model."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

# MNIST's training-set pixel mean and standard deviation, for pixels in [0, 1].
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the CNN: conv widths per stage (2x2 max-pool between stages), head, classes.

    `stem_stride` 2 makes the first convolution halve the image (every later map is 4x smaller);
    `separable` makes every convolution but the first depthwise 3x3 + pointwise 1x1 (MobileNet's)."""

    stages: tuple[tuple[int, ...], ...] = ((16,), (32,), (64,), (128, 128))  # version 2's lean net
    dropout: float = 0.1
    num_classes: int = 10
    image_size: int = 28
    mean: float = MNIST_MEAN
    std: float = MNIST_STD
    stem_stride: int = 1
    separable: bool = False

    def to_dict(self) -> dict:
        """Plain types only, so a checkpoint loads with torch.load(weights_only=True)."""
        return {**asdict(self), "stages": [list(stage) for stage in self.stages]}

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        """Inverse of to_dict; unknown keys are an error rather than silently ignored."""
        values = dict(values)
        values["stages"] = tuple(tuple(int(c) for c in stage) for stage in values.get("stages", cls.stages))
        return cls(**values)


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1, separable: bool = False) -> list[nn.Module]:
    """3x3 same-padding convolution (or depthwise 3x3 + pointwise 1x1), BatchNorm (so no conv bias), ReLU."""
    if not separable:
        return [nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
    return [nn.Conv2d(in_channels, in_channels, 3, stride=stride, padding=1, groups=in_channels, bias=False),
            nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


class DigitNet(nn.Module):
    """Input float32 [N, 1, 28, 28] in [0, 1] (white digit on black); output logits [N, classes]."""

    def __init__(self, config: ModelConfig = ModelConfig()) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("mean", torch.tensor(config.mean))
        self.register_buffer("std", torch.tensor(config.std))
        layers: list[nn.Module] = []
        channels = 1
        for index, stage in enumerate(config.stages):
            if index:
                layers.append(nn.MaxPool2d(2))
            for width in stage:
                first = channels == 1  # a depthwise conv of one channel would be a waste
                layers += conv_bn_relu(channels, width, stride=config.stem_stride if first else 1,
                                       separable=config.separable and not first)
                channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Dropout(config.dropout), nn.Linear(channels, config.num_classes))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Logits for raw [0, 1] pixels; the normalisation lives here so exports take raw pixels."""
        return self.head(self.features((pixels - self.mean) / self.std))


def parameter_count(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def multiply_adds(model: DigitNet) -> int:
    """Multiply-adds of one image's forward pass through the convolutions and the linear layer."""
    total = 0

    def count(module: nn.Module, _: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            total += output[0].numel() * per_output
        elif isinstance(module, nn.Linear):
            total += module.in_features * module.out_features

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        was_training = model.training
        model.eval()
        size = model.config.image_size
        model(torch.zeros(1, 1, size, size))
        model.train(was_training)
    finally:
        for hook in hooks:
            hook.remove()
    return total
