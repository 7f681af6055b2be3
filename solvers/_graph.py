"""CUDA graphs for the score call: a sampler's per-step launch overhead becomes one replay.

A small network at a large batch is launch-bound: launching its few dozen kernels from Python
takes longer than running them.  `GraphedScore(score_fn)` captures score_fn(x, t) into a
torch.cuda.CUDAGraph once per input signature (x's shape, strides, dtype and device; t's shape
and dtype), with static input buffers.  Each later call copies x and t into those buffers,
replays the graph and returns a copy of the static output: the same kernels on the same
numbers as the eager call, so the same samples.

Capture follows PyTorch's recipe: warm-up calls on a side stream (lazy initialisation,
cuBLAS/cuDNN autotuning), then `torch.cuda.graph`.  A score function that cannot be captured
(a host sync such as .item(), CPU tensors, data-dependent shapes) runs eagerly from then on,
after one warning.  Calls that need gradients (x.requires_grad) always run eagerly.
"""
from __future__ import annotations

import warnings
from typing import Callable

import torch


class GraphedScore:
    """score_fn(x, t) replayed from CUDA graphs; build one and reuse it to keep its graphs
    across solves (each graph holds its own activation memory for its batch shape)."""

    device_type = "cuda"  # the device that has graphs (the CPU tests point this at a stand-in)

    def __init__(self, score_fn: Callable, warmup: int = 2):
        self.fn, self.warmup = score_fn, warmup
        self.graphs: dict = {}
        self.eager = False  # after a failed capture every call runs eagerly

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.eager or x.device.type != self.device_type or (torch.is_grad_enabled() and x.requires_grad):
            return self.fn(x, t)
        key = (tuple(x.shape), x.stride(), x.dtype, x.device, tuple(t.shape), t.dtype)
        entry = self.graphs.get(key)
        if entry is None:
            entry = self._capture(x, t)
            if entry is None:
                return self.fn(x, t)
            self.graphs[key] = entry
        replay, sx, st, out = entry
        sx.copy_(x)
        st.copy_(t)
        replay()
        return out.clone()  # the next replay overwrites `out`; callers may keep what they got

    def _capture(self, x, t):
        sx = torch.empty_like(x).copy_(x)
        st = t.clone(memory_format=torch.contiguous_format)
        with torch.no_grad():
            self._warm_up(sx, st)  # the function's own errors surface here, as in an eager call
            try:
                replay, out = self._record(sx, st)
                if not torch.is_tensor(out):
                    raise TypeError(f"score_fn returned {type(out).__name__}, not a tensor")
            except Exception as err:  # noqa: BLE001 - any capture failure means: run eagerly
                self._give_up(err)
                return None
        return replay, sx, st, out

    def _give_up(self, err: Exception):
        self.eager = True
        warnings.warn(f"cuda_graph: the score function could not be captured ({type(err).__name__}: "
                      f"{str(err).splitlines()[0][:200] if str(err) else ''}); it runs eagerly from "
                      f"here on (same samples, without the speed-up)", RuntimeWarning, stacklevel=5)

    def _warm_up(self, sx, st):
        """Eager calls on a side stream before capture: lazy initialisation, cuBLAS/cuDNN autotuning."""
        if sx.device.type != "cuda":
            return
        with torch.cuda.device(sx.device):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    self.fn(sx, st)
            torch.cuda.current_stream().wait_stream(side)

    def _record(self, sx, st):
        """Capture fn(sx, st) on a fresh stream; returns (replay, static output)."""
        with torch.cuda.device(sx.device):
            before, stream = torch.cuda.current_stream(), torch.cuda.Stream()
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph, stream=stream):
                    out = self.fn(sx, st)
            finally:  # a failed capture_end leaves the capture stream current; a fresh one is never reused
                torch.cuda.set_stream(before)
        return graph.replay, out


def graphed(score_fn: Callable, device) -> Callable:
    """score_fn as a GraphedScore when the solve runs on CUDA (an existing GraphedScore is kept);
    elsewhere score_fn itself, after a warning: graphs exist only on CUDA, and the eager path
    gives the same samples."""
    if torch.device(device).type != GraphedScore.device_type:
        warnings.warn(f"cuda_graph=True needs a CUDA device, but the solve runs on {torch.device(device)}; "
                      f"the score is called eagerly (same samples)", RuntimeWarning, stacklevel=3)
        return score_fn
    return score_fn if isinstance(score_fn, GraphedScore) else GraphedScore(score_fn)
