"""Small built-in data sets as ``train``/``val``/``test`` tensor pairs.

Both loaders work offline and return float32 inputs (flat feature vectors) and int64
class labels. The test split is the same for every ``seed``; ``seed`` only picks which
20% of the training part becomes the (class-stratified) validation split.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

Splits = dict[str, tuple[Tensor, Tensor]]

VAL_FRACTION = 0.2
DIGITS_TEST_FRACTION = 0.25
DIGITS_TEST_SPLIT_SEED = 0


def _as_tensors(x: NDArray[np.generic], y: NDArray[np.generic]) -> tuple[Tensor, Tensor]:
    """Float32 inputs and int64 labels, as contiguous tensors."""
    inputs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    targets = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
    return inputs, targets


def _splits(
    x_train: NDArray[np.generic],
    y_train: NDArray[np.generic],
    x_test: NDArray[np.generic],
    y_test: NDArray[np.generic],
    seed: int,
) -> Splits:
    """Carve a stratified validation split out of the training part."""
    from sklearn.model_selection import train_test_split  # imported here: ~0.7 s (scipy)

    x_fit, x_val, y_fit, y_val = train_test_split(
        x_train, y_train, test_size=VAL_FRACTION, stratify=y_train, random_state=seed
    )
    return {
        "train": _as_tensors(x_fit, y_fit),
        "val": _as_tensors(x_val, y_val),
        "test": _as_tensors(x_test, y_test),
    }


def load_digits_splits(seed: int = 0) -> Splits:
    """The scikit-learn 8x8 digits as flat ``(N, 64)`` features scaled to ``[0, 1]``.

    A fixed stratified 75/25 train/test split (1347/450 samples), then a stratified
    20% of the training part as validation (1077 train / 270 val).
    """
    from sklearn.datasets import load_digits  # imported here: ~0.7 s (scipy)
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x / 16.0,
        y,
        test_size=DIGITS_TEST_FRACTION,
        stratify=y,
        random_state=DIGITS_TEST_SPLIT_SEED,
    )
    return _splits(x_train, y_train, x_test, y_test, seed)


def load_mnist1d_splits(seed: int = 0) -> Splits:
    """MNIST-1D (Greydanus 2020) as flat ``(N, 40)`` features, built locally.

    The standard 4000/1000 train/test data are generated with the default arguments
    (identical to the published frozen set, no download), then a stratified 20% of the
    training part becomes validation (3200 train / 800 val). The generator reseeds the
    global ``random``/``numpy`` states; they are restored afterwards.
    """
    from mnist1d.data import get_dataset_args, make_dataset  # imported here: ~1 s (scipy)

    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return _splits(data["x"], data["y"], data["x_test"], data["y_test"], seed)
