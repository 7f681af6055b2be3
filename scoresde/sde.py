"""Forward SDEs dx = f(x,t) dt + g(t) dW with linear drift f(x,t) = (d log m/dt)·x.

Every SDE here is fixed by two functions of time: the mean coefficient m(t) and the
marginal std σ(t), with x_t = m(t)·x_0 + σ(t)·z.  The drift coefficient and g² follow:

    f(t)  = d log m / dt
    g²(t) = dσ²/dt − 2 f(t) σ²(t)

(which is the score_sde closed form for VP, sub-VP and VE).

Two kinds of public method:
- the coefficients `log_mean_coef`, `std`, `drift_coef`, `g2`, `log_snr`: elementwise
  formulas of t, any shape, no range check.  Solvers, losses and likelihoods call them in
  their inner loops, where a check would cost a host sync per call;
- `marginal`, `drift`, `diffusion`, `reverse_drift`, ...: check t once (a scalar or (B,)
  inside [0, T]) and broadcast against x.
Subclasses implement the underscore hooks behind the coefficients.
"""
from __future__ import annotations

import abc
import math

import torch

from scoresde import _rng
from scoresde._checks import as_time, bcast, check_int, check_less, check_positive


def _as_tensor(t) -> torch.Tensor:
    # A Python number becomes a float64 0-d CPU tensor (a 0-d tensor mixes with any device);
    # a tensor passes through untouched, so the coefficients keep its dtype, device and graph.
    return t if torch.is_tensor(t) else torch.tensor(float(t), dtype=torch.float64, device="cpu")


class SDE(abc.ABC):
    """A forward SDE with linear drift and its marginal/prior/reverse-time formulas."""

    #: smallest time a sampler reaches by default (score_sde's sampling_eps)
    default_eps: float = 1e-3
    #: smallest time a likelihood integral starts at by default
    likelihood_eps: float = 1e-5
    #: the named family a solver's default grid is chosen by: 'vp', 'subvp' or 've'
    family: str = "vp"
    #: whether DDPM's discrete chain (discrete_betas, alphas_cumprod) exists for this SDE
    discrete_chain: bool = False

    def __init__(self, N: int = 1000, T: float = 1.0):
        self.N = check_int("N", N, 1)
        self.T = check_positive("T", T)

    # -- the math each SDE supplies (tensors in, tensors out, no checks) -----------------
    # Public callers use the coefficient methods below; these hooks are what a subclass writes.
    @abc.abstractmethod
    def _log_mean_coef(self, t: torch.Tensor) -> torch.Tensor:
        """log m(t)."""

    @abc.abstractmethod
    def _std(self, t: torch.Tensor) -> torch.Tensor:
        """σ(t)."""

    @abc.abstractmethod
    def _f_coef(self, t: torch.Tensor) -> torch.Tensor:
        """d log m / dt, so that f(x, t) = _f_coef(t)·x."""

    @abc.abstractmethod
    def _g2(self, t: torch.Tensor) -> torch.Tensor:
        """g(t)²."""

    @property
    @abc.abstractmethod
    def prior_std(self) -> float:
        """Standard deviation of the prior N(0, prior_std² I) at t = T."""

    def _log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """λ(t) = log(m/σ), decreasing in t."""
        return self._log_mean_coef(t) - torch.log(self._std(t))

    # -- the coefficients, public (elementwise in t, no range check) ----------------------
    def log_mean_coef(self, t) -> torch.Tensor:
        """log m(t), where x_t = m(t)·x_0 + σ(t)·z."""
        return self._log_mean_coef(_as_tensor(t))

    def std(self, t) -> torch.Tensor:
        """σ(t), the marginal standard deviation."""
        return self._std(_as_tensor(t))

    def drift_coef(self, t) -> torch.Tensor:
        """f(t) = d log m/dt, so that the drift is f(x, t) = f(t)·x."""
        return self._f_coef(_as_tensor(t))

    def g2(self, t) -> torch.Tensor:
        """g(t)² = dσ²/dt − 2 f(t) σ²(t)."""
        return self._g2(_as_tensor(t))

    def log_snr(self, t) -> torch.Tensor:
        """λ(t) = log m(t) − log σ(t), decreasing in t."""
        return self._log_snr(_as_tensor(t))

    # -- checked API ---------------------------------------------------------------------
    def marginal(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(m(t), σ(t)) of the perturbation kernel x_t = m(t)·x_0 + σ(t)·z, t of shape (B,)."""
        t = as_time(t, self.T)
        return torch.exp(self._log_mean_coef(t)), self._std(t)

    def marginal_sample(self, x0: torch.Tensor, t, generator: torch.Generator | None = None):
        """Draw x_t = m(t)·x_0 + σ(t)·z (z drawn where the generator lives); returns (x_t, z)."""
        t = as_time(t, self.T, like=x0, batch=x0.shape[0])
        z = _rng.randn(x0.shape, generator, x0.dtype, x0.device)
        m, s = torch.exp(self._log_mean_coef(t)), self._std(t)
        return bcast(m, x0) * x0 + bcast(s, x0) * z, z

    def drift(self, x: torch.Tensor, t) -> torch.Tensor:
        """f(x, t) = (d log m/dt)·x."""
        t = as_time(t, self.T, like=x, batch=x.shape[0])
        return bcast(self._f_coef(t), x) * x

    def diffusion(self, t) -> torch.Tensor:
        """g(t) = √(dσ²/dt − 2 f σ²)."""
        return torch.sqrt(self._g2(as_time(t, self.T)))

    def sde(self, x: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(f(x, t), g(t)) in one call, score_sde style."""
        return self.drift(x, t), self.diffusion(t)

    def reverse_drift(self, x: torch.Tensor, t, score, probability_flow: bool = False) -> torch.Tensor:
        """Reverse-time drift f − g²·s (SDE) or f − ½g²·s (probability-flow ODE).

        `score` is a tensor shaped like x or a callable score_fn(x, t).
        """
        t = as_time(t, self.T, like=x, batch=x.shape[0])
        s = score(x, t) if callable(score) else score
        if s.shape != x.shape:
            raise ValueError(f"score has shape {tuple(s.shape)}, expected {tuple(x.shape)}")
        return self._reverse_drift(x, t, s, 0.5 if probability_flow else 1.0)

    def pf_drift(self, x: torch.Tensor, t, score) -> torch.Tensor:
        """Probability-flow ODE drift dx/dt = f(x,t) − ½ g(t)² s(x,t)."""
        return self.reverse_drift(x, t, score, probability_flow=True)

    def _reverse_drift(self, x, t, s, weight: float):
        return bcast(self._f_coef(t), x) * x - bcast(weight * self._g2(t), x) * s

    def prior_sample(self, shape, generator: torch.Generator | None = None,
                     dtype: torch.dtype | None = None, device=None) -> torch.Tensor:
        """x_T ~ N(0, prior_std² I), drawn where the generator lives (a seed gives the same x_T on
        every device) and returned on `device`."""
        shape = tuple(int(s) for s in shape)
        if len(shape) < 2 or any(s < 1 for s in shape):
            raise ValueError(f"shape must be (B, ...) with every size >= 1, got {shape}")
        return self.prior_std * _rng.randn(shape, generator, dtype, device)

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, prior_std² I) summed over all but the batch dimension -> (B,)."""
        D = z[0].numel()
        s2 = self.prior_std ** 2
        return -0.5 * D * math.log(2 * math.pi * s2) - z.flatten(1).pow(2).sum(1) / (2 * s2)

    def t_from_log_snr(self, lam: torch.Tensor, iters: int = 80) -> torch.Tensor:
        """Invert λ(t) by bisection on [0, T] (λ is monotone decreasing); float64 inside."""
        lam = torch.as_tensor(lam, dtype=torch.float64)
        lo = torch.zeros_like(lam)
        hi = torch.full_like(lam, self.T)
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            above = self._log_snr(mid) > lam  # still too little noise: move right
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return 0.5 * (lo + hi)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"

    @abc.abstractmethod
    def config(self) -> dict:
        """Constructor arguments, JSON-friendly (for checkpoints and result files)."""


class VPSDE(SDE):
    """Variance-preserving SDE: f = −½β(t)x, g = √β(t), σ² = 1 − m².

    Linear schedule (Song et al. 2021): β(t) = β_min + t(β_max − β_min),
    log m(t) = −¼t²(β_max − β_min) − ½tβ_min.
    Cosine schedule (Nichol & Dhariwal 2021): ᾱ(t) = cos²(((t+s)/(1+s))·π/2)/cos²((s/(1+s))·π/2),
    m = √ᾱ; its T defaults to 0.9946 because ᾱ(1) = 0 makes β(1) infinite (DPM-Solver's choice).

    The discrete DDPM chain is the special case t_i = i/N: `discrete_betas` are
    linspace(β_min/N, β_max/N, N) (DDPM's 1e-4 … 0.02 for N = 1000) and ᾱ_i = ∏ (1 − β_j).
    """

    discrete_chain = True

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000,
                 schedule: str = "linear", cosine_s: float = 0.008, T: float | None = None):
        if schedule not in ("linear", "cosine"):
            raise ValueError(f"schedule must be one of 'linear', 'cosine', got {schedule!r}")
        super().__init__(N, T if T is not None else (1.0 if schedule == "linear" else 0.9946))
        self.schedule = schedule
        self.beta_min = check_positive("beta_min", beta_min)
        self.beta_max = check_positive("beta_max", beta_max)
        check_less("beta_min", self.beta_min, "beta_max", self.beta_max)
        self.cosine_s = check_positive("cosine_s", cosine_s)
        if schedule == "cosine" and self.T >= 1.0:
            raise ValueError(f"the cosine schedule needs T < 1 (ᾱ(1) = 0), got T={self.T}")
        self._discrete = None

    def config(self) -> dict:
        return dict(name="vp", beta_min=self.beta_min, beta_max=self.beta_max, N=self.N,
                    schedule=self.schedule, cosine_s=self.cosine_s, T=self.T)

    @property
    def prior_std(self) -> float:
        return 1.0

    def _cos_angle(self, t):
        return (t + self.cosine_s) / (1 + self.cosine_s) * (math.pi / 2)

    def _log_mean_coef(self, t):
        if self.schedule == "linear":
            return -0.25 * t ** 2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min
        c0 = math.log(math.cos(self.cosine_s / (1 + self.cosine_s) * math.pi / 2))
        return torch.log(torch.cos(self._cos_angle(t))) - c0

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        """β(t) = −2 d log m/dt."""
        if self.schedule == "linear":
            return self.beta_min + t * (self.beta_max - self.beta_min)
        return math.pi / (1 + self.cosine_s) * torch.tan(self._cos_angle(t))

    def _f_coef(self, t):
        return -0.5 * self.beta(t)

    def _g2(self, t):
        return self.beta(t)

    def _std(self, t):
        # −expm1 keeps σ accurate for tiny t, where 1 − m² cancels.
        return torch.sqrt((-torch.expm1(2 * self._log_mean_coef(t))).clamp_min(0))

    def _discrete_tables(self):
        if self._discrete is None:
            N = self.N
            if self.schedule == "linear":
                betas = torch.linspace(self.beta_min / N, self.beta_max / N, N, dtype=torch.float64)
            else:
                t = torch.arange(N + 1, dtype=torch.float64) / N
                c0 = math.cos(self.cosine_s / (1 + self.cosine_s) * math.pi / 2) ** 2
                abar = torch.cos(self._cos_angle(t)) ** 2 / c0
                betas = (1 - abar[1:] / abar[:-1]).clamp(max=0.999)  # iDDPM's clip
            self._discrete = (betas, torch.cumprod(1 - betas, 0))
        return self._discrete

    @property
    def discrete_betas(self) -> torch.Tensor:
        """DDPM's β_1 … β_N (float64), index i−1 holds β_i."""
        return self._discrete_tables()[0]

    @property
    def alphas(self) -> torch.Tensor:
        """α_i = 1 − β_i."""
        return 1 - self.discrete_betas

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """ᾱ_i = ∏_{j<=i} α_j, index i−1 holds ᾱ_i."""
        return self._discrete_tables()[1]


class SubVPSDE(VPSDE):
    """sub-VP SDE: the VP drift and mean, g² = β(t)(1 − m(t)⁴), σ(t) = 1 − m(t)².

    Its marginal variance (1 − m²)² is below the VP one at every t.  Linear schedule only.
    """

    family = "subvp"
    discrete_chain = False

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000):
        super().__init__(beta_min, beta_max, N, schedule="linear")

    def config(self) -> dict:
        return dict(name="subvp", beta_min=self.beta_min, beta_max=self.beta_max, N=self.N)

    def _std(self, t):
        return (-torch.expm1(2 * self._log_mean_coef(t))).clamp_min(0)

    def _g2(self, t):
        return self.beta(t) * -torch.expm1(4 * self._log_mean_coef(t))


class VESDE(SDE):
    """Variance-exploding SDE: σ(t) = σ_min(σ_max/σ_min)^t, f = 0, m = 1,
    g(t) = σ(t)·√(2 ln(σ_max/σ_min)), prior N(0, σ_max² I).

    As in score_sde, σ(0) = σ_min: the t = 0 marginal is the data blurred by N(0, σ_min²).
    """

    default_eps = 1e-5
    family = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, N: int = 1000):
        super().__init__(N, 1.0)
        self.sigma_min = check_positive("sigma_min", sigma_min)
        self.sigma_max = check_positive("sigma_max", sigma_max)
        check_less("sigma_min", self.sigma_min, "sigma_max", self.sigma_max)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    def config(self) -> dict:
        return dict(name="ve", sigma_min=self.sigma_min, sigma_max=self.sigma_max, N=self.N)

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def _log_mean_coef(self, t):
        return 0.0 * t  # keeps autograd graphs connected

    def _std(self, t):
        return self.sigma_min * torch.exp(t * self._log_ratio)

    def _f_coef(self, t):
        return 0.0 * t  # keeps autograd graphs connected

    def _g2(self, t):
        return 2 * self._log_ratio * self._std(t) ** 2

    @property
    def discrete_sigmas(self) -> torch.Tensor:
        """σ_i at t_i = i/(N−1), i = 0 … N−1 (NCSN's geometric ladder), float64."""
        return torch.exp(torch.linspace(math.log(self.sigma_min), math.log(self.sigma_max),
                                        self.N, dtype=torch.float64))


BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")


def beta_table(beta_schedule: str, N: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """β_1 … β_N (float64) of diffusers' named schedules:
    'linear': linspace(β_start, β_end, N); 'scaled_linear': linspace(√β_start, √β_end, N)²;
    'squaredcos_cap_v2': β_i = min(1 − ᾱ(i/N)/ᾱ((i−1)/N), 0.999), ᾱ(t) = cos²((t + 0.008)/1.008·π/2)
    (Nichol & Dhariwal's cosine schedule with its 0.999 cap);
    'sigmoid': β_start + (β_end − β_start)·sigmoid(linspace(−6, 6, N)) (GeoDiff's)."""
    N = check_int("N", N, 1)
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, N, dtype=torch.float64, device="cpu")
    if beta_schedule == "scaled_linear":
        return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, N, dtype=torch.float64, device="cpu") ** 2
    if beta_schedule == "squaredcos_cap_v2":
        t = torch.arange(N + 1, dtype=torch.float64, device="cpu") / N
        abar = torch.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        return (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
    if beta_schedule == "sigmoid":
        return beta_start + (beta_end - beta_start) * torch.sigmoid(torch.linspace(-6, 6, N, dtype=torch.float64, device="cpu"))
    raise ValueError(f"beta_schedule must be one of {', '.join(map(repr, BETA_SCHEDULES))} or explicit "
                     f"trained_betas, got {beta_schedule!r}")


class DiscreteVPSDE(VPSDE):
    """The VP SDE of a discrete β table β_1 … β_N (a diffusers scheduler's, say): DDPM's chain
    ᾱ_k = ∏_{j<=k} (1 − β_j) sits at t_k = k/N, so diffusers' timestep index i ↔ t = (i + 1)/N.

    Between lattice points log ᾱ(t) is the monotone cubic (PCHIP, Fritsch–Carlson) through the
    table: m and σ equal the table exactly at every t_k, so every solver that steps on the
    lattice takes DDPM's own coefficients, and β(t) = −d log ᾱ/dt ≥ 0 is continuous, a genuine
    VP SDE (f = −½β, g² = β) that continuous solvers and the ODE likelihood can integrate.
    DPM-Solver's wrapper interpolates log ᾱ linearly instead; its β(t) jumps at every 1/N, and
    an adaptive ODE solver then pays for each jump (dopri5 at rtol = atol = 1e-7 on the exact
    ring score: 2611 evaluations with the linear form, 265 with the cubic, 229 on the continuous
    VP SDE).
    ᾱ_0 = 1 at t = 0.

    The default end time for sampling and likelihood is t_1 = 1/N (index 0): the smallest noise
    level the network was trained at.

    `betas`: explicit β_1 … β_N (diffusers' trained_betas), else `beta_schedule` with
    `beta_start`, `beta_end` (see beta_table) and N = num_train_timesteps.
    """

    family = "vp"
    discrete_chain = True

    def __init__(self, beta_schedule: str = "linear", beta_start: float = 1e-4, beta_end: float = 0.02,
                 N: int = 1000, betas=None):
        if betas is None:
            table = beta_table(beta_schedule, N, beta_start, beta_end)
        else:
            table = torch.as_tensor(betas, dtype=torch.float64, device="cpu").flatten()
            if table.numel() < 1:
                raise ValueError("betas must hold at least one value")
            N, beta_schedule = table.numel(), "trained_betas"
        bad = ~((table > 0) & (table < 1))
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise ValueError(f"every β must lie in (0, 1); β_{i + 1} = {float(table[i])!r}")
        SDE.__init__(self, N, 1.0)
        self.beta_schedule, self.beta_start, self.beta_end = beta_schedule, float(beta_start), float(beta_end)
        self._explicit = betas is not None
        self.schedule = "discrete"
        self.beta_min, self.beta_max = float(table.min()) * N, float(table.max()) * N  # for plots and repr
        log_abar = torch.cat([torch.zeros(1, dtype=torch.float64, device="cpu"), torch.cumsum(torch.log1p(-table), 0)])
        self._discrete = (table, log_abar[1:].exp())
        self._log_abar = log_abar
        self._dlog_abar = _pchip_slopes(log_abar, N)
        self._cache: dict = {}
        self.default_eps = self.likelihood_eps = 1.0 / N

    def config(self) -> dict:
        base = dict(name="vpdiscrete", N=self.N)
        if self._explicit:
            return dict(base, betas=self.discrete_betas.tolist())
        return dict(base, beta_schedule=self.beta_schedule, beta_start=self.beta_start, beta_end=self.beta_end)

    def __repr__(self) -> str:
        if self._explicit:
            return f"DiscreteVPSDE(N={self.N}, betas=[{self.discrete_betas[0]:.4g} ... {self.discrete_betas[-1]:.4g}])"
        return super().__repr__()

    def _tables(self, t: torch.Tensor):
        # log ᾱ and its t-derivative at the lattice, in t's dtype on t's device
        key = (t.dtype, t.device)
        if key not in self._cache:
            dt = t.dtype if t.is_floating_point() else torch.float64
            self._cache[key] = (self._log_abar.to(device=t.device, dtype=dt), self._dlog_abar.to(device=t.device, dtype=dt))
        return self._cache[key]

    def _segment(self, t: torch.Tensor):
        u = t * self.N
        k = torch.floor(u).clamp(0, self.N - 1)
        return u - k, k.long()

    def _log_mean_coef(self, t):
        """½ log ᾱ(t), the cubic Hermite form on the segment holding t:
        log ᾱ = h00(s)·a_k + h10(s)·d_k/N + h01(s)·a_{k+1} + h11(s)·d_{k+1}/N, s = N·t − k."""
        la, d = self._tables(t)
        s, k = self._segment(t)
        s2, s3 = s * s, s * s * s
        h00, h10, h01, h11 = 2 * s3 - 3 * s2 + 1, s3 - 2 * s2 + s, 3 * s2 - 2 * s3, s3 - s2
        return 0.5 * (h00 * la[k] + h01 * la[k + 1] + (h10 * d[k] + h11 * d[k + 1]) / self.N)

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        """β(t) = −d log ᾱ/dt of the cubic on the segment holding t (continuous, ≥ 0)."""
        la, d = self._tables(t)
        s, k = self._segment(t)
        s2 = s * s
        slope = 6 * (s - s2) * (la[k + 1] - la[k]) * self.N
        return -(slope + (3 * s2 - 4 * s + 1) * d[k] + (3 * s2 - 2 * s) * d[k + 1])


def _pchip_slopes(y: torch.Tensor, N: int) -> torch.Tensor:
    """Node derivatives of the monotone cubic through y_0 … y_N at t_k = k/N (Fritsch–Carlson, as
    scipy's PchipInterpolator): the harmonic mean of the neighbouring secants where they agree in
    sign (else 0); at the ends the one-sided three-point formula, 0 where it leaves the secant's sign."""
    delta = (y[1:] - y[:-1]) * N
    d = torch.zeros_like(y)
    if N == 1:
        return d + delta[0]
    a, b = delta[:-1], delta[1:]
    agree = (a * b) > 0
    d[1:-1] = torch.where(agree, 2 * a * b / torch.where(agree, a + b, torch.ones_like(a)), torch.zeros_like(a))
    for i, (d0, d1) in ((0, (delta[0], delta[1])), (-1, (delta[-1], delta[-2]))):
        e = (3 * d0 - d1) / 2
        if e * d0 <= 0:
            e = torch.zeros_like(e)
        elif d0 * d1 <= 0 and e.abs() > 3 * d0.abs():
            e = 3 * d0
        d[i] = e
    return d


SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE, "vpdiscrete": DiscreteVPSDE}


def make_sde(name: str, **kwargs) -> SDE:
    """Build an SDE by name: 'vp', 'subvp', 've' (also 'vp-cosine', 'vp-discrete')."""
    key = name.lower().replace("_", "").replace("-", "")
    if key == "vpcosine":
        return VPSDE(schedule="cosine", **kwargs)
    if key not in SDES:
        raise ValueError(f"unknown SDE {name!r}; choose one of: vp, vp-cosine, vp-discrete, subvp, ve")
    return SDES[key](**kwargs)


def sde_from_config(cfg: dict) -> SDE:
    """Inverse of SDE.config()."""
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if name not in SDES:
        raise ValueError(f"unknown SDE name {name!r} in config; expected one of {sorted(SDES)}")
    return SDES[name](**cfg)
