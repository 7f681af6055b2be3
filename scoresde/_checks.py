"""Input validation shared by the library: every message names the value and what is allowed."""
from __future__ import annotations

import math

import torch


def check_positive(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return value


def check_less(lo_name: str, lo: float, hi_name: str, hi: float) -> None:
    if not lo < hi:
        raise ValueError(f"{lo_name} must be < {hi_name}, got {lo_name}={lo!r}, {hi_name}={hi!r}")


def check_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int,)) and not (
        isinstance(value, float) and value.is_integer()
    ):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return value


def as_time(t, T: float, like: torch.Tensor | None = None, batch: int | None = None) -> torch.Tensor:
    """Return t as a 1-D tensor (batched) after checking 0 <= t <= T.

    A Python number or 0-d tensor is broadcast to `batch` entries (1 if None).
    """
    if not torch.is_tensor(t):
        t = torch.tensor(float(t), dtype=like.dtype if like is not None and like.is_floating_point()
                         else torch.get_default_dtype(), device=like.device if like is not None else None)
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    if t.ndim == 0:
        t = t.expand(batch if batch is not None else 1)
    elif t.ndim != 1:
        raise ValueError(f"t must be a scalar or a 1-D tensor of shape (B,), got shape {tuple(t.shape)}")
    if batch is not None and t.shape[0] not in (1, batch):
        raise ValueError(f"t has {t.shape[0]} entries but the batch has {batch}")
    # One host sync; hot loops call the SDE's underscore methods, which skip this.
    lo, hi = torch.aminmax(t.detach())
    if not (bool(torch.isfinite(lo)) and bool(torch.isfinite(hi)) and lo >= 0 and hi <= T * (1 + 1e-12)):
        raise ValueError(f"t must lie in [0, T] = [0, {T}], got values in [{float(lo)}, {float(hi)}]")
    return t


def bcast(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """View a per-sample coefficient of shape (B,) (or scalar) so it broadcasts against x (B, ...)."""
    if c.ndim == 0:
        return c
    return c.reshape(c.shape[0], *([1] * (x.ndim - 1)))


def resolve_device(name) -> torch.device:
    """'auto' -> CUDA when present, else CPU; a CUDA device asked for on a machine without one is an error."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: CUDA is not available on this machine; use 'cpu' or 'auto'")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
