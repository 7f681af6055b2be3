"""The training fast path: the pieces a step needs to keep a GPU busy, each behind a train.* key.

What the H200 profile of issue 9 showed, and the answer to each:
- NCHW↔NHWC transposes around cuDNN: U-Nets run channels_last (weights once, inputs per step).
- AdamW as a loop of small kernels: the fused kernel (`fused=True`, CUDA and CPU).
- GroupNorm at fp32 under bf16 autocast: nn.GroupNorm runs in the input's dtype (see nn.py).
- Launch-bound small models: the step's draw + forward + backward replayed from one CUDA graph
  (StepRunner), or compile's reduce-overhead mode.
- A host-to-device copy per step: data tables live on the device (Dataset.to); host-drawn
  batches travel through pinned memory without blocking the host.
- torch.compile failing on some machines: the first step falls back to eager, once, loudly.

None of this changes the arithmetic of an fp32 CPU run except channels_last and the fused
optimizer, which reassociate float sums (tests/test_train_fastpath.py bounds the difference).
"""
from __future__ import annotations

import warnings

import torch


def batch_to(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """x on `device` (NHWC for 4-D batches when channels_last).  A host batch bound for CUDA is
    pinned first: a copy from pageable memory makes the host wait for the GPU's queue to drain."""
    if x.device != device:
        x = x.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else x.to(device)
    if channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def compile_net(net: torch.nn.Module, mode: str, device: torch.device):
    """torch.compile(net, mode).  The modes that capture CUDA graphs mean nothing off CUDA, so there
    they become their graph-free equivalents (the guard that keeps configs portable)."""
    if device.type != "cuda":
        mode = {"reduce-overhead": "default", "max-autotune": "max-autotune-no-cudagraphs"}.get(mode, mode)
    return torch.compile(net, mode=mode)


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:200] if lines else ''}"


class StepRunner:
    """runner() -> the detached loss of one step's draw + loss + backward (`fn`), gradients left in
    .grad for the optimizer.

    - compiled=True: the first call is guarded.  If torch.compile fails (in the forward or in the
      lazily compiled backward) one warning names the error, `on_compile_failure()` swaps in the
      eager network, every generator is rewound, and the step is redone eagerly; the loss sequence
      is then exactly the eager one.  An error that eager mode raises as well propagates.
    - graph=True (CUDA only; the caller decides): `warmup` eager calls on a side stream (lazy
      initialisation must not happen inside a capture), then the next call is captured into a CUDA
      graph and every later call replays it: one launch instead of hundreds.  The generators are
      registered with the graph, so each replay advances their Philox offsets exactly as the eager
      call would and draws the same numbers.  The gradients are the graph's static tensors, so
      nothing may set them to None afterwards.  A failed capture warns once and stays eager.
    """

    def __init__(self, fn, zero_grad, generators, compiled: bool = False, on_compile_failure=None,
                 graph: bool = False, warmup: int = 3):
        self.fn, self.zero_grad, self.generators = fn, zero_grad, list(generators)
        self._guard = on_compile_failure if compiled else None
        self.graph_wanted, self.warmup, self.calls = graph, warmup, 0
        self.graph = self.static_loss = None
        self.stream = torch.cuda.Stream() if graph else None

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def __call__(self) -> torch.Tensor:
        if self.graph is not None:
            self.graph.replay()
            return self.static_loss.clone()  # the next replay overwrites the static loss
        if self.graph_wanted and self.calls >= self.warmup and self._capture():
            self.graph.replay()
            return self.static_loss.clone()
        self.calls += 1
        if self._guard is not None:
            fallback, self._guard = self._guard, None
            states = self._rng_states()
            try:
                return self._eager()
            except Exception as e:  # noqa: BLE001 - any compiler failure; eager re-raises real errors
                warnings.warn(f"train.compile: torch.compile failed on the first step ({_one_line(e)}); "
                              f"training continues in eager mode", RuntimeWarning, stacklevel=2)
                fallback()
                self._set_rng_states(states)
                return self._eager()
        return self._eager()

    def _eager(self) -> torch.Tensor:
        self.zero_grad()
        if self.stream is None:
            return self.fn()
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            loss = self.fn()
        torch.cuda.current_stream().wait_stream(self.stream)
        return loss

    def _capture(self) -> bool:
        states = self._rng_states()
        self.zero_grad()  # backward then allocates .grad from the graph's pool; replays overwrite it
        try:
            graph = torch.cuda.CUDAGraph()
            for g in self.generators:
                if g.device.type == "cuda":
                    graph.register_generator_state(g)
            with torch.cuda.graph(graph, stream=self.stream):
                static = self.fn()
        except Exception as e:  # noqa: BLE001 - e.g. a host sync or a host copy inside the step
            warnings.warn(f"train.cuda_graph: capturing the training step failed ({_one_line(e)}); "
                          f"training continues without the graph", RuntimeWarning, stacklevel=3)
            self.graph_wanted = False
            self._set_rng_states(states)
            return False
        self.graph, self.static_loss = graph, static
        return True

    def _rng_states(self) -> list:
        return [g.get_state() for g in self.generators]

    def _set_rng_states(self, states) -> None:
        for g, s in zip(self.generators, states):
            g.set_state(s)
