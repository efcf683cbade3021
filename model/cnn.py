"""Model zoo: the original project's 4-block CNN (also behind a per-band normalisation), a residual
version of it and a short-chunk residual CNN.

Both end in global pooling over time and frequency, so they accept any number of frames: the
same weights classify 3 s training crops and windows cut from whole songs.
"""
from __future__ import annotations

import torch
from torch import nn

from model.ensemble import SEP, Ensemble


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class PooledCNN(nn.Module):
    """`features` (a conv stack ending in c_out channels), then global average + max pooling over
    frequency and time, dropout and a linear classifier."""

    def __init__(self, features: nn.Module, c_out: int, n_classes: int, dropout: float):
        super().__init__()
        self.features = features
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * c_out, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        h = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        return self.head(h)


class BandNorm(nn.Module):
    """Subtracts each mel band's mean over the crop's frames (cepstral mean normalisation on a log
    scale). A fixed gain per band (a recording's mix, mastering, microphone) is a constant offset in
    log-mel, so the output does not depend on it: the net has to use how bands change over time."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - x.mean(dim=-1, keepdim=True)


class BaselineCNN(PooledCNN):
    """The original project's net: 4 conv blocks (64/128/256/512, BatchNorm, max-pool)."""

    def __init__(self, n_classes: int, channels: tuple[int, ...] = (64, 128, 256, 512), dropout: float = 0.3,
                 band_norm: bool = False):
        layers: list[nn.Module] = [BandNorm()] if band_norm else []
        layers.append(nn.BatchNorm2d(1))
        c_in = 1
        for c in channels:
            layers += _conv_bn(c_in, c) + [nn.MaxPool2d(2)]
            c_in = c
        super().__init__(nn.Sequential(*layers), c_in, n_classes, dropout)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 2):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True), nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out))
        self.skip = (nn.Sequential() if stride == 1 and c_in == c_out else
                     nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


class ShortChunkResNet(PooledCNN):
    """Residual CNN after Won et al. 2020 ("short-chunk CNN + residual"), sized for 3-4 s crops."""

    def __init__(self, n_classes: int, channels: tuple[int, ...] = (32, 64, 128, 128, 256, 256), dropout: float = 0.3):
        layers: list[nn.Module] = [nn.BatchNorm2d(1), *_conv_bn(1, channels[0])]
        c_in = channels[0]
        for c in channels:
            layers.append(ResBlock(c_in, c, stride=2))
            c_in = c
        super().__init__(nn.Sequential(*layers), c_in, n_classes, dropout)


class ResidualCNN(PooledCNN):
    """The baseline's four max-pooled stages, each a residual pair of 3x3 convs instead of one conv.

    Max-pooling (not strided convs) keeps the baseline's small shift invariance and its 8x8 final
    grid; the residual pairs double the depth at every resolution.
    """

    def __init__(self, n_classes: int, channels: tuple[int, ...] = (48, 96, 192, 384), dropout: float = 0.5):
        layers: list[nn.Module] = [nn.BatchNorm2d(1)]
        c_in = 1
        for c in channels:
            layers += [ResBlock(c_in, c, stride=1), nn.MaxPool2d(2)]
            c_in = c
        super().__init__(nn.Sequential(*layers), c_in, n_classes, dropout)


class TinyCNN(BaselineCNN):
    """The baseline's shape at 8-32 channels (about 15 k parameters): for tests and smoke runs,
    where checkpoints and steps should cost next to nothing. Not for accuracy."""

    def __init__(self, n_classes: int):
        super().__init__(n_classes, channels=(8, 16, 32, 32), dropout=0.1)


class BandNormCNN(BaselineCNN):
    """The baseline behind BandNorm: blind to any fixed equalisation of the input."""

    def __init__(self, n_classes: int):
        super().__init__(n_classes, band_norm=True)


MODELS = {"baseline": BaselineCNN, "baseline-bandnorm": BandNormCNN, "resnet": ShortChunkResNet, "rescnn": ResidualCNN, "tiny": TinyCNN}
# train.py's default (with --ema 0.999): the baseline and its band-normalised twin trained in one run,
# chosen on real music by cross-validation without a loss on the synthetic hard set (bench/NOTES.md)
DEFAULT_MODEL = "baseline+baseline-bandnorm"


def member_names(name: str) -> list[str]:
    """The architectures a model name holds: one, or an ensemble's members joined by '+'; ValueError
    naming the unknown one."""
    names = name.split(SEP)
    for n in names:
        if n not in MODELS:
            what = f"unknown model '{n}'" + (f" in '{name}'" if len(names) > 1 else "")
            raise ValueError(f"{what} (choose from {', '.join(MODELS)}, or several joined by '{SEP}')")
    return names


def build_model(name: str, n_classes: int) -> nn.Module:
    """A model by name; 'a+b+...' builds an Ensemble of those members (model/ensemble.py)."""
    names = member_names(name)
    if len(names) == 1:
        return MODELS[name](n_classes)
    return Ensemble([MODELS[n](n_classes) for n in names])


def count_parameters(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())
