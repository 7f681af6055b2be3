"""Training data with no downloads: 2-D toys, scikit-learn's bundled 8×8 digits, user arrays.

Every draw takes a torch.Generator.  Image data live on [−1, 1] as 2k/(L − 1) − 1 for L levels
and are uniformly dequantized when sampled for training (see likelihood.dequantize).
"""
from __future__ import annotations

import math
import os

import torch

from .oracle import GaussianMixture

TOYS = ("ring", "moons", "swissroll", "checkerboard")


class Dataset:
    """sample(n, generator) -> training batch; reference(n, generator) -> clean data for metrics.

    shape: one sample's shape; oracle: the exact mixture when there is one; levels: number of
    discrete levels for quantized data (None for continuous)."""

    def __init__(self, name: str, shape: tuple, sampler=None, table: torch.Tensor | None = None,
                 oracle: GaussianMixture | None = None, levels: int | None = None):
        self.name, self.shape, self.oracle, self.levels = name, tuple(shape), oracle, levels
        self._sampler, self.table = sampler, table

    @property
    def device(self) -> torch.device:
        """Where draws are made: the table's device; samplers draw on the host."""
        return self.table.device if self.table is not None else torch.device("cpu")

    def to(self, device, max_bytes: float = float("inf")) -> "Dataset":
        """Move the table to `device` once when it takes at most max_bytes, so that a training step
        indexes it there (with a generator on that device) and copies nothing from the host.
        Sampler-based sets and larger tables stay where they are.  Returns self."""
        if self.table is not None and self.table.numel() * self.table.element_size() <= max_bytes:
            self.table = self.table.to(device)
        return self

    def reference(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.table is not None:
            # indices are drawn where the generator lives (a device-resident table with a generator on
            # its device copies nothing; a CPU generator still works)
            idx = torch.randint(0, self.table.shape[0], (n,), **_on(generator))
            return self.table[idx.to(self.table.device)]
        return self._sampler(n, generator)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        x = self.reference(n, generator)
        if self.levels is not None:
            from .likelihood import dequantize
            x = dequantize(x, levels=self.levels, generator=generator)
        return x


def _on(g: torch.Generator | None) -> dict:
    """Draw with generator g on its own device (a CUDA generator cannot draw CPU tensors)."""
    return {"generator": g, "device": g.device if g is not None else None}


def _moons(n, g):
    k = torch.randint(0, 2, (n,), **_on(g))
    th = math.pi * torch.rand(n, **_on(g))
    x = torch.stack([torch.where(k == 0, th.cos(), 1 - th.cos()), torch.where(k == 0, th.sin(), 0.5 - th.sin())], 1)
    return 2 * (x - torch.tensor([0.5, 0.25], device=x.device)) + 0.1 * torch.randn(n, 2, **_on(g))


def _swissroll(n, g):
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, **_on(g)))
    x = torch.stack([t * t.cos(), t * t.sin()], 1) / 5
    return x + 0.1 * torch.randn(n, 2, **_on(g))


def _checkerboard(n, g):
    x1 = 4 * torch.rand(n, **_on(g)) - 2
    x2 = torch.rand(n, **_on(g)) - 2 * torch.randint(0, 2, (n,), **_on(g))
    return 2 * torch.stack([x1, x2 + torch.floor(x1) % 2], 1)


DIGITS_TEST = 200  # the last 200 of scikit-learn's 1797 digits are held out


def digits(split: str = "train") -> Dataset:
    """scikit-learn's handwritten 8×8 digits (values 0…16, L = 17 levels) on [−1, 1]:
    'train' = the first 1597, 'test' = the last 200 (held out for likelihoods)."""
    if split not in ("train", "test"):
        raise ValueError(f"digits split must be 'train' or 'test', got {split!r}")
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # pragma: no cover - depends on the environment
        raise ValueError("the digits data set needs scikit-learn: pip install 'scoresde[data]'") from None
    k = torch.as_tensor(load_digits().images, dtype=torch.float32)
    k = k[:-DIGITS_TEST] if split == "train" else k[-DIGITS_TEST:]
    return Dataset("digits" if split == "train" else "digits-test", (1, 8, 8), table=(2 * k / 16 - 1)[:, None],
                   levels=17)


def load_array(path: str) -> torch.Tensor:
    """A finite float array (N, ...) from a .npy or .npz file (.npz: key 'x' or the first array);
    pickled objects are refused."""
    import numpy as np

    if not os.path.exists(path):
        raise ValueError(f"data file {path!r}: no such file")
    if not path.endswith((".npy", ".npz")):
        raise ValueError(f"data file {path!r}: expected a .npy or .npz file")
    try:
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                arr = z["x"] if "x" in z.files else z[z.files[0]]
        else:
            arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"data file {path!r} cannot be read: {e}") from None
    x = torch.as_tensor(arr, dtype=torch.float32)
    if x.ndim < 2 or not torch.isfinite(x).all():
        raise ValueError(f"data file {path!r}: need a finite array of shape (N, ...), got {tuple(x.shape)}")
    return x


def from_array(path: str) -> Dataset:
    """A user's .npy/.npz array of shape (N >= 2, ...) as a training set."""
    x = load_array(path)
    if x.shape[0] < 2:
        raise ValueError(f"data file {path!r}: need at least 2 samples to train on, got {x.shape[0]}")
    return Dataset(os.path.basename(path), tuple(x.shape[1:]), table=x)


def make_dataset(name: str, path: str | None = None) -> Dataset:
    """'ring' (the 8-mode oracle), 'moons', 'swissroll', 'checkerboard', 'digits', or 'file' with path."""
    if name == "ring":
        oracle = GaussianMixture.ring()
        return Dataset("ring", (2,), sampler=lambda n, g: oracle.sample(n, generator=g), oracle=oracle)
    toys = {"moons": _moons, "swissroll": _swissroll, "checkerboard": _checkerboard}
    if name in toys:
        return Dataset(name, (2,), sampler=toys[name])
    if name == "digits":
        return digits("train")
    if name == "digits-test":
        return digits("test")
    if name == "file":
        if not path:
            raise ValueError("data.name = 'file' needs data.path (a .npy or .npz file)")
        return from_array(path)
    raise ValueError(f"unknown data set {name!r}; choose one of: {', '.join(TOYS)}, digits, digits-test, file")


