"""The probability-flow ODE dx/dt = f(x,t) − ½g(t)²·s(x,t) (Song et al. 2021, eq. 13)
integrated from T to eps with torchdiffeq."""
from __future__ import annotations

import torch

from scoresde._ode import ADAPTIVE, FIXED, inside_interval

from ._common import SolverError

#: global convergence order of each fixed-step torchdiffeq method (explicit_adams varies its order)
METHOD_ORDER = {"euler": 1, "midpoint": 2, "heun2": 2, "heun3": 3, "rk4": 4}


def pf_velocity_t(prob, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """f(t)·x − ½g²(t)·s(x, t) at an arbitrary (tensor) time, as the adaptive solvers need."""
    t64 = t.to(torch.float64)
    f, g2 = prob.sde.drift_coef(t64).to(x.dtype), prob.sde.g2(t64).to(x.dtype)
    return f * x - 0.5 * g2 * prob.score(x, t)


def pf_ode(prob, x, *, method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5):
    """Adaptive methods (dopri5 default, rtol/atol) ignore `steps` and report their nfe;
    fixed-step methods step exactly on the chosen time grid."""
    from torchdiffeq import odeint  # here, not at the top: it costs ~1 s of import (scipy) that `solvers` need not pay

    if method not in ADAPTIVE + FIXED:
        raise SolverError(f"unknown torchdiffeq method {method!r}; choose one of: {', '.join(ADAPTIVE + FIXED)}")
    if prob.sigma[-1] <= 0:
        raise SolverError("pf_ode evaluates the score at eps, where σ = 0: use eps > 0")
    grid = prob.ts.to(x.device)
    func = lambda t, y: pf_velocity_t(prob, y, t)  # noqa: E731
    ends = grid[[0, -1]]
    try:
        if method in ADAPTIVE:
            out = odeint(func, x, ends, method=method, rtol=rtol, atol=atol, options=inside_interval(ends))
        else:
            out = odeint(func, x, ends, method=method, options={"grid_constructor": lambda f, y0, t: grid})
    except AssertionError as err:  # torchdiffeq signals step-size underflow with an assert
        raise SolverError(f"the ODE solve failed near t={prob.t[-1]}..{prob.t[0]} ({err}); "
                          f"raise rtol/atol or eps") from None
    x = out[-1]
    prob.done(prob.K - 1, x)
    return x
