"""Exact-score oracles: Gaussian-mixture data whose every noised marginal is known.

For p_0 = Σ_k w_k N(μ_k, Σ_k) and x_t = m(t)·x_0 + σ(t)·z,

    p_t = Σ_k w_k N(m·μ_k, m²Σ_k + σ²I),

so log p_t and the score ∇log p_t are exact for any SDE.  With Σ_k = U_k diag(λ_k) U_kᵀ
the covariance m²Σ_k + σ²I = U_k diag(m²λ_k + σ²) U_kᵀ, so everything is computed in
each component's eigenbasis and combined with log-sum-exp (stable far from the data and
for tiny t).  A single Gaussian also has a closed-form probability-flow solution.
"""
from __future__ import annotations

import math

import torch

from scoresde import _rng
from scoresde._checks import check_int, check_positive
from scoresde.sde import SDE


class GaussianMixture:
    """Σ_k w_k N(μ_k, Σ_k) in D dimensions.

    means: (K, D); covs: (K, D, D) full, (K, D) diagonal variances, or a number (shared
    isotropic variance); weights: (K,) non-negative, normalised here (default uniform).

    classes: optionally (K,) class indices 0 … C−1 grouping the components (each class gets at
    least one), with class_names (C,).  Then p_0(x | c) = Σ_{k∈c} w_k N(μ_k, Σ_k) / P(c),
    P(c) = Σ_{k∈c} w_k, and every p_t(x | c) is the same sub-mixture noised: the conditional
    score and log-density are exact too (the methods' `y`, with C meaning "no label").
    """

    def __init__(self, means, covs, weights=None, name: str = "gmm", classes=None, class_names=None):
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim != 2:
            raise ValueError(f"means must have shape (K, D), got {tuple(means.shape)}")
        K, D = means.shape
        covs = torch.as_tensor(covs, dtype=torch.float64)
        if covs.ndim == 0:
            covs = covs.expand(K, D)
        if covs.shape == (K, D):
            if (covs <= 0).any():
                raise ValueError("diagonal variances must be > 0")
            eigvals, U, diagonal = covs.clone(), torch.eye(D, dtype=torch.float64).expand(K, D, D), True
        elif covs.shape == (K, D, D):
            if not torch.allclose(covs, covs.transpose(1, 2), atol=1e-10):
                raise ValueError("covariance matrices must be symmetric")
            eigvals, U = torch.linalg.eigh(covs)
            if (eigvals <= 0).any():
                raise ValueError("covariance matrices must be positive definite")
            diagonal = bool(torch.allclose(covs, torch.diag_embed(torch.diagonal(covs, dim1=1, dim2=2))))
            if diagonal:
                eigvals, U = torch.diagonal(covs, dim1=1, dim2=2).clone(), torch.eye(D, dtype=torch.float64).expand(K, D, D)
        else:
            raise ValueError(f"covs must have shape (K, D, D)={K, D, D}, (K, D)={K, D} or be a number, "
                             f"got {tuple(covs.shape)}")
        if weights is None:
            weights = torch.full((K,), 1.0 / K, dtype=torch.float64)
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (K,) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"weights must be {K} non-negative numbers with a positive sum")
        self.means, self.eigvals, self.U = means, eigvals, U.contiguous()
        self.weights = weights / weights.sum()
        self.diagonal = diagonal
        self.K, self.D = K, D
        self.name = name
        self._cache: dict = {}
        self.classes, self.class_names = None, None
        if classes is not None:
            classes = torch.as_tensor(classes)
            C = int(classes.max()) + 1 if classes.numel() else 0
            if (classes.shape != (K,) or classes.is_floating_point() or int(classes.min()) < 0
                    or torch.unique(classes).numel() != C):
                raise ValueError(f"classes must be {K} integers that use each of 0…C−1, got {classes.tolist()}")
            names = [str(i) for i in range(C)] if class_names is None else [str(n) for n in class_names]
            if len(names) != C or len(set(names)) != C:
                raise ValueError(f"class_names must be {C} distinct names, got {names}")
            self.classes, self.class_names = classes.long(), names

    @property
    def num_classes(self) -> int:
        """C, the number of classes (0 for an unlabelled mixture)."""
        return 0 if self.classes is None else len(self.class_names)

    # -- constructors ---------------------------------------------------------------------
    @classmethod
    def ring(cls, k: int = 8, radius: float = 4.0, std: float = 0.2, weights=None,
             classes: int = 0) -> "GaussianMixture":
        """k isotropic modes of std `std` evenly spaced on a circle of radius `radius` (2-D).
        classes = C > 0 (dividing k) labels them: C classes of k/C neighbouring modes each, named
        'mode0' … when C = k, else 'arc0' …."""
        k = check_int("k", k, 1)
        radius, std = check_positive("radius", radius), check_positive("std", std)
        ang = 2 * math.pi * torch.arange(k, dtype=torch.float64) / k
        means = radius * torch.stack([torch.cos(ang), torch.sin(ang)], 1)
        if not classes:
            return cls(means, std ** 2, weights, name=f"gmm{k}")
        classes = check_int("classes", classes, 1)
        if k % classes:
            raise ValueError(f"classes = {classes} must divide the k = {k} modes")
        per = k // classes
        names = [f"{'mode' if per == 1 else 'arc'}{c}" for c in range(classes)]
        return cls(means, std ** 2, weights, name=f"gmm{k}c{classes}", classes=torch.arange(k) // per,
                   class_names=names)

    @classmethod
    def gaussian(cls, dim: int = 2, mean=None, stds=None) -> "GaussianMixture":
        """One anisotropic Gaussian N(μ, diag(stds²)); defaults: μ = linspace(−1, 1, dim),
        stds geometric from 0.1 to 1.5 (a 15× spread of scales, stiff for solvers)."""
        dim = check_int("dim", dim, 1)
        mean = torch.linspace(-1, 1, dim, dtype=torch.float64) if mean is None else torch.as_tensor(mean, dtype=torch.float64)
        if stds is None:
            stds = (torch.logspace(math.log10(0.1), math.log10(1.5), dim, dtype=torch.float64)
                    if dim > 1 else torch.tensor([0.5], dtype=torch.float64))
        stds = torch.as_tensor(stds, dtype=torch.float64)
        if mean.shape != (dim,) or stds.shape != (dim,):
            raise ValueError(f"mean and stds must have shape ({dim},)")
        return cls(mean[None], (stds ** 2)[None], name="gaussian")

    # -- helpers ----------------------------------------------------------------------------
    def _params(self, like: torch.Tensor):
        key = (like.dtype, like.device)
        if key not in self._cache:
            cast = dict(dtype=like.dtype, device=like.device)
            self._cache[key] = (self.means.to(**cast), self.eigvals.to(**cast), self.U.to(**cast),
                                torch.log(self.weights).to(**cast))
        return self._cache[key]

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(x) or x.ndim < 2 or x[0].numel() != self.D:
            raise ValueError(f"x must have shape (B, {self.D}) (or (B, ...) with {self.D} entries "
                             f"per sample), got {tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
        x = x.reshape(x.shape[0], self.D)
        # bf16/fp16 inputs are scored in float32: the oracle is the reference, not the model
        return x if x.dtype in (torch.float32, torch.float64) else x.float()

    def _components(self, x: torch.Tensor, m: torch.Tensor, s: torch.Tensor):
        """Rotated residuals y (B,K,D), variances v (B,K,D), and log w_k + log N_k (B,K)."""
        mu, eigvals, U, logw = self._params(x)
        m, s = m.reshape(-1, 1, 1), s.reshape(-1, 1, 1)
        y = x[:, None, :] - m * mu[None]
        if not self.diagonal:
            y = torch.einsum("bkd,kde->bke", y, U)
        v = m ** 2 * eigvals[None] + s ** 2
        logn = -0.5 * (y ** 2 / v + torch.log(2 * math.pi * v)).sum(-1)
        return y, v, logw[None] + logn

    def _mt(self, x, t, sde: SDE):
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        return torch.exp(sde.log_mean_coef(t)), sde.std(t)

    # -- densities and scores -----------------------------------------------------------------
    def _given(self, logits: torch.Tensor, y) -> torch.Tensor:
        """log w_k + log N_k restricted to class y's components and renormalised by P(y) (−inf
        elsewhere); y None or C ("no label"): unchanged.  y: an int or (B,) class indices."""
        if y is None:
            return logits
        if self.classes is None:
            raise ValueError(f"this mixture ({self.name}) has no classes; it takes no class label y")
        from scoresde.guidance import check_labels

        y = check_labels(torch.as_tensor(y, device=logits.device).reshape(-1), self.num_classes).expand(logits.shape[0])
        classes = self.classes.to(logits.device)
        keep = (classes[None, :] == y[:, None]) | (y[:, None] == self.num_classes)
        logw = torch.log(self.weights).to(logits)
        log_pc = torch.logsumexp(logw[None].masked_fill(~keep, -math.inf), 1, keepdim=True)  # log P(y); 0 for ∅
        return logits.masked_fill(~keep, -math.inf) - log_pc

    def log_prob(self, x: torch.Tensor, y=None) -> torch.Tensor:
        """Exact log p_0(x) (or log p_0(x | y) for class labels y), shape (B,)."""
        x = self._flat(x)
        one = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
        return torch.logsumexp(self._given(self._components(x, one, 0 * one)[2], y), 1)

    def log_prob_t(self, x: torch.Tensor, t, sde: SDE, y=None) -> torch.Tensor:
        """Exact log p_t(x) (or log p_t(x | y)) under `sde`, shape (B,)."""
        x = self._flat(x)
        return torch.logsumexp(self._given(self._components(x, *self._mt(x, t, sde))[2], y), 1)

    def score(self, x: torch.Tensor, t, sde: SDE, y=None) -> torch.Tensor:
        """Exact ∇_x log p_t(x) = Σ_k r_k(x)·(−(m²Σ_k + σ²I)⁻¹(x − mμ_k)), r the responsibilities;
        with class labels y, ∇_x log p_t(x | y): the same sum over y's components only."""
        xf = self._flat(x)
        y_, v, logits = self._components(xf, *self._mt(xf, t, sde))
        logits = self._given(logits, y)
        g = -y_ / v
        if not self.diagonal:
            g = torch.einsum("bke,kde->bkd", g, self._params(xf)[2])
        r = torch.softmax(logits, 1)
        return (r[:, :, None] * g).sum(1).reshape(x.shape).to(x.dtype)

    def score_fn(self, sde: SDE):
        """The exact score as a plain function score_fn(x, t) for solvers and likelihoods."""
        def score_fn(x, t):
            return self.score(x, t, sde)
        score_fn.oracle = self
        return score_fn

    def cond_score_fn(self, sde: SDE):
        """The exact conditional score cond_score(x, t, y) = ∇log p_t(x | y) (y = C: ∇log p_t(x)),
        the form scoresde.guidance combines."""
        if self.classes is None:
            raise ValueError(f"this mixture ({self.name}) has no classes")

        def cond_score(x, t, y):
            return self.score(x, t, sde, y)
        cond_score.oracle = self
        return cond_score

    def conditional(self, c: int) -> "GaussianMixture":
        """p_0(x | c) as a mixture of its own: class c's components, weights renormalised."""
        from scoresde.guidance import check_labels

        if self.classes is None:
            raise ValueError(f"this mixture ({self.name}) has no classes")
        c = int(check_labels(torch.tensor([c], device="cpu"), self.num_classes, allow_null=False)[0])
        idx = (self.classes == c).nonzero()[:, 0]
        covs = torch.einsum("kde,ke,kfe->kdf", self.U[idx], self.eigvals[idx], self.U[idx])
        return GaussianMixture(self.means[idx], covs, self.weights[idx], name=f"{self.name}|{self.class_names[c]}")
    # -- sampling and moments -------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
        """n exact draws μ_k + U_k·diag(λ_k)^½·z, k ~ Categorical(w), shape (n, D): made in float64
        where the generator lives (a seed gives the same draws on every device), returned as
        `dtype` on `device`."""
        return self.sample_components(n, generator, dtype, device)[0]

    def sample_components(self, n: int, generator: torch.Generator | None = None,
                          dtype: torch.dtype = torch.float32, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, k): sample()'s draws and the component k (n,) each came from (the same draws)."""
        n = check_int("n", n, 1)
        where = generator.device if generator is not None else torch.device("cpu")
        w, mu, eigvals, U = (a.to(where) for a in (self.weights, self.means, self.eigvals, self.U))
        k = torch.multinomial(w, n, replacement=True, generator=generator)
        z = _rng.randn((n, self.D), generator, torch.float64, where) * eigvals[k].sqrt()
        if not self.diagonal:
            z = torch.einsum("nde,ne->nd", U[k], z)
        return (mu[k] + z).to(dtype=dtype, device=device), k.to(device=device)

    def mean(self) -> torch.Tensor:
        return (self.weights[:, None] * self.means).sum(0)

    def covariance(self) -> torch.Tensor:
        """Mixture covariance Σ_k w_k(Σ_k + μ_kμ_kᵀ) − μμᵀ (float64)."""
        covs = torch.einsum("kde,ke,kfe->kdf", self.U, self.eigvals, self.U)
        second = (self.weights[:, None, None] * (covs + self.means[:, :, None] * self.means[:, None, :])).sum(0)
        mu = self.mean()
        return second - mu[:, None] * mu[None, :]

    # -- closed-form probability flow (single Gaussian) ------------------------------------------
    def flow(self, x_s: torch.Tensor, s, t, sde: SDE) -> torch.Tensor:
        """Exact probability-flow map x_s ↦ x_t for a single Gaussian (K = 1).

        In the eigenbasis each coordinate obeys x_t − m_t μ = (x_s − m_s μ)·√(v_t/v_s),
        v = m²λ + σ².
        """
        if self.K != 1:
            raise ValueError(f"the closed-form flow needs a single Gaussian, this mixture has K={self.K}")
        x = self._flat(x_s)
        ys, vs, _ = self._components(x, *self._mt(x, s, sde))
        mt, st = self._mt(x, t, sde)
        mu, eigvals, U, _ = self._params(x)
        vt = mt.reshape(-1, 1, 1) ** 2 * eigvals[None] + st.reshape(-1, 1, 1) ** 2
        y = (ys * torch.sqrt(vt / vs))[:, 0]
        if not self.diagonal:
            y = y @ U[0].T
        return (mt[:, None] * mu[0][None] + y).reshape(x_s.shape)

    def __repr__(self) -> str:
        return f"GaussianMixture(name={self.name!r}, K={self.K}, D={self.D})"


ORACLES = {
    "gmm8": lambda: GaussianMixture.ring(8),
    "ring": lambda: GaussianMixture.ring(8),
    "gmm8c4": lambda: GaussianMixture.ring(8, classes=4),  # labelled: 4 classes of 2 neighbouring modes
    "gmm8c8": lambda: GaussianMixture.ring(8, classes=8),  # labelled: one class per mode
    # gmm8c4 with overlapping modes (std 0.6) and mode 7 (class arc3) 4x heavier: class arc0's mode 0,
    # beside it, looks more like another class than its mode 1 does, so guidance trades arc0's
    # diversity (its share of mode 0) for class accuracy
    "gmm8c4-overlap": lambda: GaussianMixture.ring(8, std=0.6, weights=[1.0] * 7 + [4.0], classes=4),
    "gaussian": lambda: GaussianMixture.gaussian(2),
    "gaussian64": lambda: GaussianMixture.gaussian(64),
}


def make_oracle(name: str) -> GaussianMixture:
    """Built-in oracle by name: gmm8 (= ring), its labelled versions gmm8c4, gmm8c8 and
    gmm8c4-overlap, gaussian (2-D), gaussian64, gaussianD for any D."""
    if name in ORACLES:
        return ORACLES[name]()
    if name.startswith("gaussian") and name[len("gaussian"):].isdigit():
        return GaussianMixture.gaussian(int(name[len("gaussian"):]))
    raise ValueError(f"unknown oracle {name!r}; choose one of: {', '.join(ORACLES)}, gaussianD (any D)")
