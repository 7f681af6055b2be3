"""scoresde: score-based generative modelling through SDEs.

Forward SDEs (VP, sub-VP, VE), exact-score Gaussian-mixture oracles, ε ↔ score ↔ x̂_0
conversions; networks, training, likelihood and the CLI live in submodules.
"""
from .convert import eps_to_score, score_to_eps, x0_from_eps, x0_from_score, eps_from_x0
from .sde import SDE, VPSDE, SubVPSDE, VESDE, make_sde, sde_from_config

__version__ = "0.1.0"
__all__ = ["SDE", "VPSDE", "SubVPSDE", "VESDE", "make_sde", "sde_from_config",
           "eps_to_score", "score_to_eps", "x0_from_eps", "x0_from_score", "eps_from_x0"]
