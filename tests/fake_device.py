"""A second device on a CPU-only machine, to catch device mixing without a GPU.

Inside `second_device()`, tensors made or moved with device="meta" are real CPU tensors
wearing the "meta" device (a tensor subclass); every op on them computes on the CPU, so
results are bit-for-bit those of a CPU run.  Like CUDA, an op that mixes such a tensor with
an ordinary CPU tensor of ndim > 0 raises "Expected all tensors to be on the same device"
(0-d CPU tensors mix as scalars, CPU index tensors may index; copies cross freely).
A library function that works here keeps to its inputs' device; one that allocates on the CPU
by default and then mixes fails here as it would on CUDA.

Limits: torch.Generator(device="meta") is a CPU generator (its draws are moved, as for any CPU
generator), so code that draws with a generator on the device is not told apart from code that
draws on the CPU and moves; CUDA-only calls (streams, graphs, synchronize) are not emulated.
Python numbers in torch.where and list indices, which C++ would place on the device with no
data, are made CPU tensors first.
"""
from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

OTHER = torch.device("meta")
aten = torch.ops.aten
COPIES = {aten.copy_.default, aten._to_copy.default}  # may cross devices
INDEXING = {aten.index.Tensor, aten.index_put_.default, aten.index_put.default, aten._index_put_impl_.default}


def _is_other(d) -> bool:
    if isinstance(d, str):
        return d == OTHER.type or d.startswith(OTHER.type + ":")
    return isinstance(d, torch.device) and d.type == OTHER.type


def _mixes(func, args, kwargs) -> bool:
    """Whether a CPU tensor of ndim > 0 meets the device here; an indexed tensor on the device
    may take CPU indices (args[1]), as on CUDA."""
    checked = (args[0], *args[2:], kwargs) if func in INDEXING and isinstance(args[0], OnOther) else (args, kwargs)
    return any(torch.is_tensor(a) and not isinstance(a, OnOther) and a.ndim > 0 for a in tree_flatten(checked)[0])


class OnOther(torch.Tensor):
    """A CPU tensor `elem` that reports device `OTHER`."""

    @staticmethod
    def __new__(cls, elem):
        return torch.Tensor._make_wrapper_subclass(cls, elem.shape, strides=elem.stride(), dtype=elem.dtype,
                                                   device=OTHER, requires_grad=elem.requires_grad,
                                                   storage_offset=elem.storage_offset())

    def __init__(self, elem):
        self.elem = elem

    def __repr__(self):
        return f"OnOther({self.elem!r})"

    def tolist(self):
        return self.elem.tolist()

    def numpy(self, *a, **k):
        raise TypeError(f"can't convert {OTHER.type} device type tensor to numpy. Use Tensor.cpu() to copy "
                        f"the tensor to host memory first.")

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat, _ = tree_flatten((args, kwargs))
        ours = any(isinstance(a, OnOther) for a in flat)
        for a in flat:
            if torch.is_tensor(a) and not isinstance(a, OnOther) and a.device.type == OTHER.type:
                raise AssertionError(f"{func} got a data-less {OTHER.type} tensor (made outside the stand-in)")
        if ours and func not in COPIES and _mixes(func, args, kwargs):
            raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, "
                               f"{OTHER.type} and cpu! (in {func})")
        wrap = ours
        if "device" in kwargs and kwargs["device"] is not None:
            wrap = _is_other(kwargs["device"])
            if wrap:
                kwargs = dict(kwargs, device=torch.device("cpu"))
        out = func(*tree_map(lambda a: a.elem if isinstance(a, OnOther) else a, args),
                   **tree_map(lambda a: a.elem if isinstance(a, OnOther) else a, kwargs))
        for o in tree_flatten(out)[0]:
            if torch.is_tensor(o) and not isinstance(o, OnOther) and o.device.type == OTHER.type:
                raise AssertionError(f"{func} made a data-less {OTHER.type} tensor")
        return tree_map(lambda o: OnOther(o) if wrap and torch.is_tensor(o) and not isinstance(o, OnOther) else o,
                        out)


_SCALARS = {torch.where, torch.Tensor.where}
_SCALARS_AND_LISTS = _SCALARS | {torch.Tensor.__getitem__, torch.Tensor.__setitem__}


def _index_lists(args):
    self, index, *rest = args
    fix = lambda i: torch.tensor(i) if isinstance(i, list) else i  # noqa: E731
    index = tuple(fix(i) for i in index) if isinstance(index, tuple) else fix(index)
    return (self, index, *rest)


class _Factories(TorchFunctionMode):
    """Tensor factories and .to() asked for device OTHER make the tensor on the CPU and wrap it."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _SCALARS_AND_LISTS and any(isinstance(a, OnOther) for a in tree_flatten(args)[0]):
            # Python numbers and index lists become tensors on the device in C++, out of our reach;
            # as CPU tensors they behave the same (0-d scalars, CPU indices)
            args = tree_map(lambda a: torch.tensor(a) if isinstance(a, (int, float)) and not isinstance(a, bool)
                            else a, args) if func in _SCALARS else _index_lists(args)
        flat, _ = tree_flatten((args, kwargs))
        if func is torch.device or not any(_is_other(a) for a in flat):
            return func(*args, **kwargs)
        swap = lambda a: torch.device("cpu") if _is_other(a) else a  # noqa: E731
        elem = func(*tree_map(swap, args), **tree_map(swap, kwargs))
        if any(elem is a for a in flat):  # .to() of a CPU tensor to the other device copies
            elem = elem.clone()
        if torch.is_tensor(elem) and not isinstance(elem, OnOther):
            return OnOther(elem.detach()).requires_grad_(elem.requires_grad)
        return elem


_REAL_GENERATOR = torch.Generator


class _Generator(_REAL_GENERATOR):
    """torch.Generator(device=OTHER) is a CPU generator: its draws are made on the CPU and moved."""

    def __new__(cls, device="cpu"):
        return _REAL_GENERATOR.__new__(cls, device="cpu" if _is_other(device) else device)

    def __init__(self, device="cpu"):
        pass


@contextlib.contextmanager
def second_device():
    """Yields the stand-in device; see the module docstring."""
    torch.Generator = _Generator
    try:
        with _Factories():
            yield OTHER
    finally:
        torch.Generator = _REAL_GENERATOR


def on_other(x: torch.Tensor) -> OnOther:
    return OnOther(x)
