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
    """The basic residual block of He et al. (2016): two 3x3 conv-BN layers and a shortcut.

    ``conv-BN-ReLU-conv-BN``, added to the shortcut, then ReLU. The shortcut is the
    identity when shape is kept, else a strided 1x1 conv + BN (He et al.'s option B).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False
        )
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
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
