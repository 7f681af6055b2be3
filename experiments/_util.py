"""Shared bits of the experiment scripts: the results folder, markdown tables, machine line."""
import os
import platform

import torch

RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results")


def out_path(name: str) -> str:
    os.makedirs(RESULTS, exist_ok=True)
    return os.path.join(RESULTS, name)


def machine() -> str:
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU only"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores visible, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads), {dev}")


def markdown_table(rows, cols, fmt=None) -> str:
    fmt = fmt or {}

    def cell(r, c):
        v = r.get(c, "")
        if c in fmt and v != "":
            return fmt[c].format(v)
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(r, c) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def ring_reference(sde_name: str, n: int = 512, seed: int = 0):
    """The 8-mode ring oracle on one SDE: (sde, its exact score, n float64 prior draws x_T, and the
    probability-flow ODE's x_0 from them at rtol = atol = 1e-7), the reference few-step errors
    are measured against."""
    import solvers
    from scoresde.oracle import GaussianMixture
    from scoresde.sde import make_sde

    sde = make_sde(sde_name)
    score = GaussianMixture.ring().score_fn(sde)
    x_T = sde.prior_sample((n, 2), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ref = solvers.sample(score, sde, x_T=x_T, solver="pf_ode", rtol=1e-7, atol=1e-7).x
    return sde, score, x_T, ref
