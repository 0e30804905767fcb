"""Reference networks for the built-in tasks.

Every model takes flat feature vectors (``(N, 64)`` for digits, ``(N, 40)`` for
MNIST-1D), reshapes them inside :meth:`forward` where it needs an image or a signal,
and returns ``(N, 10)`` logits. All are :func:`torch.fx.symbolic_trace`-able: no
Python control flow depends on tensor values.
"""

from __future__ import annotations

from torch import Tensor, nn

NUM_CLASSES = 10
DIGITS_FEATURES = 64
DIGITS_SIDE = 8
MNIST1D_FEATURES = 40


class DigitsMLP(nn.Module):
    """LeNet-300-100 (LeCun et al., 1998) on the 64 digits pixels: 64-300-100-10, ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(DIGITS_FEATURES, 300),
            nn.ReLU(),
            nn.Linear(300, 100),
            nn.ReLU(),
            nn.Linear(100, NUM_CLASSES),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Logits for flat ``(N, 64)`` inputs."""
        out: Tensor = self.net(x)
        return out


class DigitsCNN(nn.Module):
    """A LeNet-5-style CNN (LeCun et al., 1998) for 1x8x8 digits, ~38k parameters.

    conv(1→16, 3x3) - ReLU - conv(16→32, 3x3) - ReLU - maxpool 2 - fc(512→64) - ReLU -
    fc(64→10); the convolutions are padded to keep the 8x8 size.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 64),
            nn.ReLU(),
            nn.Linear(64, NUM_CLASSES),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Logits for flat ``(N, 64)`` inputs, viewed as ``(N, 1, 8, 8)`` images."""
        images = x.reshape(-1, 1, DIGITS_SIDE, DIGITS_SIDE)
        out: Tensor = self.classifier(self.features(images))
        return out


class BasicBlock(nn.Module):
    """The basic residual block of He et al. (2016): two 3-wide conv-BN layers and a shortcut.

    ``conv-BN-ReLU-conv-BN``, added to the shortcut, then ReLU. The shortcut is the
    identity when shape is kept, else a strided 1-wide conv + BN (He et al.'s option B).
    ``dims`` is 2 for images (3x3 kernels) or 1 for signals (kernels of 3).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, dims: int = 2) -> None:
        super().__init__()
        conv, norm = (nn.Conv2d, nn.BatchNorm2d) if dims == 2 else (nn.Conv1d, nn.BatchNorm1d)
        self.conv1 = conv(
            in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False
        )
        self.bn1 = norm(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = conv(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn2 = norm(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                conv(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                norm(out_channels),
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        result: Tensor = self.relu2(out + self.shortcut(x))
        return result


class DigitsResNet(nn.Module):
    """A small ResNet (He et al., 2016) for 1x8x8 digits, with BatchNorm.

    Stem conv(1→16)-BN-ReLU, a :class:`BasicBlock` at 16 channels, a downsampling
    :class:`BasicBlock` to 32 channels (stride 2, 1x1 conv shortcut), global average
    pooling and fc(32→10).
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
        )
        self.layer1 = BasicBlock(16, 16)
        self.layer2 = BasicBlock(16, 32, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(32, NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        """Logits for flat ``(N, 64)`` inputs, viewed as ``(N, 1, 8, 8)`` images."""
        images = x.reshape(-1, 1, DIGITS_SIDE, DIGITS_SIDE)
        features = self.layer2(self.layer1(self.stem(images)))
        out: Tensor = self.fc(self.flatten(self.pool(features)))
        return out


class Mnist1dMLP(nn.Module):
    """An MLP for MNIST-1D (Greydanus, 2020): 40-100-100-10, ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(MNIST1D_FEATURES, 100),
            nn.ReLU(),
            nn.Linear(100, 100),
            nn.ReLU(),
            nn.Linear(100, NUM_CLASSES),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Logits for flat ``(N, 40)`` inputs."""
        out: Tensor = self.net(x)
        return out


class Mnist1dCNN(nn.Module):
    """The published MNIST-1D CNN (Greydanus, 2020), ~5.2k parameters.

    Three strided 1-D convolutions with 25 channels (kernels 5, 3, 3, stride 2, each
    followed by ReLU) shrink the length 40 to 5, then linear(125→10).
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, 25, kernel_size=5, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(25, 25, kernel_size=3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(25, 25, kernel_size=3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(25 * 5, NUM_CLASSES))

    def forward(self, x: Tensor) -> Tensor:
        """Logits for flat ``(N, 40)`` inputs, viewed as ``(N, 1, 40)`` signals."""
        signals = x.reshape(-1, 1, MNIST1D_FEATURES)
        out: Tensor = self.classifier(self.features(signals))
        return out


class Mnist1dResNet(nn.Module):
    """A deep 1-D ResNet (He et al., 2016) for MNIST-1D, with BatchNorm.

    Stem conv(1→8, 3)-BN-ReLU, then three stages of ``blocks`` :class:`BasicBlock`
    each, at 8, 16 and 32 channels (stages 2 and 3 start with a stride-2 block with a
    1-wide conv shortcut), global average pooling and linear(32→10); ~48k parameters. At channel
    granularity each stage's residual stream (with the stem, or the stage's shortcut)
    is one channel group and each block's inner conv another: ``3 + 3 * blocks`` groups
    (21 with the default 6 blocks per stage).
    """

    def __init__(self, blocks: int = 6, widths: tuple[int, int, int] = (8, 16, 32)) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv1d(1, widths[0], kernel_size=3, padding=1, bias=False),
            nn.BatchNorm1d(widths[0]),
            nn.ReLU(),
        )
        stages: list[nn.Module] = []
        previous = widths[0]
        for stage, width in enumerate(widths):
            stride = 1 if stage == 0 else 2
            layers = [BasicBlock(previous, width, stride, dims=1)]
            layers += [BasicBlock(width, width, dims=1) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
            previous = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(widths[-1], NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        """Logits for flat ``(N, 40)`` inputs, viewed as ``(N, 1, 40)`` signals."""
        signals = x.reshape(-1, 1, MNIST1D_FEATURES)
        out: Tensor = self.fc(self.flatten(self.pool(self.stages(self.stem(signals)))))
        return out


class DigitsDeepCNN(nn.Module):
    """A plain (non-residual) deep CNN for 1x8x8 digits, VGG-style (Simonyan & Zisserman,
    2015) with BatchNorm (Ioffe & Szegedy, 2015) so that its depth trains.

    ``depth`` 3x3 conv-BN-ReLU layers in three stages of 16, 32 and 64 channels at 8x8,
    4x4 and 2x2 (a 2x2 max-pool between stages), global average pooling and fc(64→10);
    ~316k parameters.
    With no residual adds, every conv is a channel group of its own: ``depth`` groups
    (21 by default).
    """

    def __init__(self, depth: int = 21, widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        per_stage = [depth // 3 + (1 if i < depth % 3 else 0) for i in range(3)]
        layers: list[nn.Module] = []
        previous = 1
        for stage, (width, count) in enumerate(zip(widths, per_stage, strict=True)):
            if stage:
                layers.append(nn.MaxPool2d(2))
            for _ in range(count):
                layers += [
                    nn.Conv2d(previous, width, kernel_size=3, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(),
                ]
                previous = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(widths[-1], NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        """Logits for flat ``(N, 64)`` inputs, viewed as ``(N, 1, 8, 8)`` images."""
        images = x.reshape(-1, 1, DIGITS_SIDE, DIGITS_SIDE)
        out: Tensor = self.fc(self.flatten(self.pool(self.features(images))))
        return out
