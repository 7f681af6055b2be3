"""Pieces every sampler shares: the checked, counted score call, grid coefficients, noise."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from scoresde import _rng
from scoresde.convert import score_to_eps, x0_from_eps


class SolverError(ValueError):
    """Bad solver input or a failure inside a solve; the message names the value and the fix."""


@dataclass
class SampleResult:
    """x: samples at the grid's end time (or denoised to t = 0); nfe: score evaluations;
    t_grid: the times used (float64, decreasing from T)."""

    x: torch.Tensor
    nfe: int
    t_grid: torch.Tensor
    solver: str = ""
    grid: str = ""
    #: which (m, σ) the update used: "continuous" (the SDE's m(t), σ(t)) or "discrete" (DDPM's ᾱ table)
    schedule: str = "continuous"


class Problem:
    """One solve: the SDE, its grid with precomputed coefficients, the counted score call,
    the noise source and the callback.  Solver functions receive this and stay short.

    Coefficient lists hold Python floats computed in float64, so the per-step arithmetic
    costs no host–device synchronisation and no tensor allocation; the batched time tensor of
    each grid point is made once.  With `batch_size` the score is evaluated on at most that
    many samples at a time (the state and the noise stay whole, so the samples are those of
    one big batch).
    """

    def __init__(self, score_fn: Callable, sde, ts: torch.Tensor, x_like: torch.Tensor,
                 generator: torch.Generator | None, callback: Callable | None, check_finite: bool = True,
                 batch_size: int | None = None, afs: bool = False):
        self.fn, self.sde, self.ts = score_fn, sde, ts
        self.K = ts.numel() - 1
        self.t = ts.tolist()
        m = torch.exp(sde.log_mean_coef(ts))
        self.m, self.sigma = m.tolist(), sde.std(ts).tolist()
        # σ(t) of the SDE, which a ScoreModel divided by; the update coefficients m, sigma may
        # instead come from a discrete table (see discrete_vp_tables).
        self.sigma_score = self.sigma
        self.schedule = "continuous"
        self.f, self.g2 = sde.drift_coef(ts).tolist(), sde.g2(ts).tolist()
        self.B, self.dtype, self.device = x_like.shape[0], x_like.dtype, x_like.device
        # bf16/fp16 states still get float32 times: 8 mantissa bits cannot tell grid points apart
        self.t_dtype = self.dtype if self.dtype in (torch.float32, torch.float64) else torch.float32
        self.generator, self.callback = generator, callback
        self.check_finite = check_finite
        self.batch_size = batch_size
        # On the CPU a check costs nothing; on an accelerator it would sync every step, so each
        # call's all-finite flag stays on the device and the flags are read once after the solve.
        self.eager_check = self.device.type == "cpu"
        self.nfe = 0
        self.step = 0
        self._afs = afs  # the first call at t_0 = T still to be answered analytically (score())
        self._flags = []  # (step, t, 0-d bool on the device), read by check_deferred
        self._tb = {}  # grid time -> its (B,) tensor

    # -- the score, counted and checked --------------------------------------------------------
    def _t_batch(self, t) -> torch.Tensor:
        if isinstance(t, float):
            tb = self._tb.get(t)
            if tb is None:
                tb = self._tb[t] = torch.full((self.B,), t, dtype=self.t_dtype, device=self.device)
            return tb
        return t.to(device=self.device, dtype=self.t_dtype).expand(self.B)

    def _checked(self, s, x: torch.Tensor, t) -> torch.Tensor:
        if not torch.is_tensor(s) or s.shape != x.shape:
            got = tuple(s.shape) if torch.is_tensor(s) else type(s).__name__
            raise SolverError(f"score_fn returned shape {got}, expected {tuple(x.shape)} (same as x), "
                              f"at step {self.step}, t={float(t):.6g}")
        return s

    def score(self, x: torch.Tensor, t) -> torch.Tensor:
        if self._afs and isinstance(t, float) and t == self.t[0]:
            # the analytical first step (sample(afs=True)): at T the data's share of x_T is m(T)·x_0,
            # negligible beside σ(T)·z, so p_T ≈ N(0, σ(T)²I), whose score costs no network call
            self._afs = False
            return -x / self.sigma_score[0] ** 2
        tb, n = self._t_batch(t), self.batch_size
        if n is None or x.shape[0] <= n:
            s = self._checked(self.fn(x, tb), x, t)
        else:
            s = torch.cat([self._checked(self.fn(x[a:a + n], tb[a:a + n]), x[a:a + n], t)
                           for a in range(0, x.shape[0], n)])
        self.nfe += 1
        if self.check_finite:
            if self.eager_check:
                if not bool(torch.isfinite(s).all()):
                    self._raise_nonfinite(self.step, float(t))
            else:
                self._flags.append((self.step, t, torch.isfinite(s).all()))
        return s if s.dtype == x.dtype else s.to(x.dtype)

    def _raise_nonfinite(self, step: int, t: float):
        raise SolverError(f"score_fn returned NaN or inf at step {step} (t={t:.6g}); check the model "
                          f"and its inputs, or use float64")

    def check_deferred(self):
        """Raise for the first call whose score was not finite (one host sync for the solve)."""
        if self._flags:
            ok = torch.stack([f for _, _, f in self._flags]).cpu()
            if not bool(ok.all()):
                step, t, _ = self._flags[int((~ok).nonzero()[0])]
                self._raise_nonfinite(step, float(t))

    def eps(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """ε̂ = −σ(t_i)·s(x, t_i), with the same σ a ScoreModel divided by."""
        return score_to_eps(self.score(x, self.t[i]), self.sigma_score[i])

    def x0(self, x: torch.Tensor, eps: torch.Tensor, i: int) -> torch.Tensor:
        """x̂_0 = (x − σ ε̂)/m at grid point i."""
        return x0_from_eps(x, eps, self.m[i], self.sigma[i])

    def pf_velocity(self, x: torch.Tensor, i: int, s: torch.Tensor | None = None) -> torch.Tensor:
        """dx/dt of the probability-flow ODE at grid point i: f·x − ½g²·s."""
        s = self.score(x, self.t[i]) if s is None else s
        return self.f[i] * x - 0.5 * self.g2[i] * s

    def lam(self) -> list[float]:
        """λ_i = log(m_i/σ_i), the log-SNR the exponential integrators step in (∞ where σ = 0)."""
        return [math.log(m / s) if s > 0 else math.inf for m, s in zip(self.m, self.sigma)]

    def multistep_order(self, i: int, order: int, lower_order_final: bool) -> int:
        """Order of step i of a multistep solver: min(order, i+1) while the history fills; with
        lower_order_final and K < 15 also ≤ K − i (DPM-Solver's rule, measured for dpmpp_2m);
        1 for a step landing on σ = 0, where λ = ∞."""
        k = min(order, i + 1)
        if lower_order_final and self.K < 15:
            k = min(k, self.K - i)
        return 1 if self.last(i) and self.sigma[-1] == 0 else k

    def sigma_tilde(self) -> list[float]:
        """σ̃_i = σ_i/m_i, EDM's noise level of x̃ = x/m (for VP: √(1−ᾱ)/√ᾱ)."""
        return [s / m for m, s in zip(self.m, self.sigma)]

    def at_sigma_tilde(self, st: float) -> tuple[float, float, float]:
        """(t, m(t), σ(t)) at the time where σ/m = st (λ = −log st), for steps off the grid."""
        # a host-side scalar: the coefficients stay Python floats, so no device sync per step
        t = self.sde.t_from_log_snr(torch.tensor(-math.log(st), dtype=torch.float64, device="cpu"))
        return float(t), math.exp(float(self.sde.log_mean_coef(t))), float(self.sde.std(t))

    def use_schedule(self, schedule: str) -> None:
        """'continuous': the SDE's m(t), σ(t) (default everywhere); 'discrete': DDPM's ᾱ table
        at the grid times (see discrete_vp_tables), which must then lie on the 1/N lattice."""
        if schedule not in ("continuous", "discrete"):
            raise SolverError(f"schedule must be 'continuous' or 'discrete', got {schedule!r}")
        if schedule == "discrete":
            self.m, self.sigma = discrete_vp_tables(self.sde, self.ts)
        self.schedule = schedule

    # -- noise and progress -----------------------------------------------------------------------
    def noise(self, x: torch.Tensor) -> torch.Tensor:
        """z ~ N(0, I) shaped like x, for the whole batch at once (drawn where the generator lives)."""
        return _rng.randn(x.shape, self.generator, x.dtype, x.device)

    def done(self, i: int, x: torch.Tensor) -> None:
        """End of step i (x now at t_{i+1}): report to the callback."""
        self.step = i + 1
        if self.callback is not None:
            self.callback({"i": i, "t": self.t[i + 1], "x": x, "nfe": self.nfe})

    def last(self, i: int) -> bool:
        return i == self.K - 1

    def transition(self, i: int) -> tuple[float, float]:
        """Forward transition from t_{i+1} (= s) to t_i (= t): x_t = α·x_s + √(var)·z with
        α = m_t/m_s and var = σ_t² − α²σ_s²."""
        a = self.m[i] / self.m[i + 1]
        return a, max(self.sigma[i] ** 2 - a * a * self.sigma[i + 1] ** 2, 0.0)


def discrete_vp_tables(sde, ts: torch.Tensor) -> tuple[list[float], list[float]]:
    """(m, σ) at the grid from the discrete DDPM table: m = √ᾱ_k, σ = √(1 − ᾱ_k) at t = k/N
    (ᾱ_0 = 1).  With the uniform grid of N steps this makes the ancestral sampler DDPM's
    Algorithm 2 exactly, and a shorter grid on the lattice a respacing of the same chain (iDDPM).

    Raises SolverError unless `sde` is a VPSDE and every grid time is a multiple of 1/N: a time
    off the lattice has no ᾱ, and snapping it would silently change the grid."""
    if not sde.discrete_chain:
        raise SolverError(f"schedule='discrete' needs a VPSDE (DDPM's ᾱ table), got {sde!r}; "
                          f"use schedule='continuous'")
    k = ts * sde.N
    idx = k.round()
    off = ((k - idx).abs() > 1e-6).nonzero()
    if off.numel():
        i = int(off[0])
        raise SolverError(f"schedule='discrete' needs every grid time on the 1/N lattice (N={sde.N}); "
                          f"t_{i}={float(ts[i]):.6g} is not: use grid='uniform', eps=0 and steps dividing "
                          f"{sde.N}, or schedule='continuous'")
    abar = torch.cat([torch.ones(1, dtype=torch.float64), sde.alphas_cumprod])[idx.long()]
    return abar.sqrt().tolist(), (1 - abar).clamp_min(0).sqrt().tolist()
