"""Stand-ins for real images and trained weights, for the tests and benchmarks of the architecture families:
learnable RGB images, and random models whose BatchNorm statistics come from real batches."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from compress.zoo import ModelSpec, build_model

CLASSES = 10


def class_brightness_npz(path: Path, size: int, count: int, seed: int = 0) -> Path:
    """``count`` RGB uint8 images of ``size`` x ``size`` (NHWC) whose brightness depends on the class (so they are
    learnable), 10 classes in turn, saved as ``path`` with np.savez (x, y)."""
    rng = np.random.default_rng(seed)
    y = np.arange(count) % CLASSES
    x = np.clip(rng.integers(0, 160, (count, size, size, 3)) + 9 * y[:, None, None, None], 0, 255).astype(np.uint8)
    np.savez(path, x=x, y=y)
    return path


def calibrated_model(spec: ModelSpec, data, samples: int) -> nn.Module:
    """A random model of ``spec`` (seed 0) whose BatchNorm statistics are the average over the first ``samples``
    train images, in batches of 32, so its activations and predictions are spread out like a trained model's
    (random statistics give near-constant logits)."""
    torch.manual_seed(0)
    model = build_model(spec, data.input_shape, data.num_classes)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.momentum = None  # a cumulative average over the batches instead of a running one
    model.train()
    with torch.no_grad():
        for start in range(0, samples, 32):
            model(torch.from_numpy(data.train.x[start:start + 32]))
    for norm in norms:
        norm.momentum = 0.1
    return model.eval()
