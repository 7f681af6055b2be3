"""scoresde: score-based generative modelling through SDEs.

Forward SDEs (VP, sub-VP, VE), exact-score Gaussian-mixture oracles, ε ↔ score ↔ x̂_0
conversions; networks, training, likelihood and the CLI live in submodules.
"""
import importlib

__version__ = "0.1.0"

# Names resolve on first use (PEP 562), so `import scoresde` (and `scoresde --help`) does not
# pay for importing torch until something needs it.
_LAZY = {**dict.fromkeys(["eps_to_score", "score_to_eps", "x0_from_eps", "x0_from_score", "eps_from_x0",
                          "eps_from_prediction", "prediction_from_eps"], "convert"),
         **dict.fromkeys(["SDE", "VPSDE", "SubVPSDE", "VESDE", "DiscreteVPSDE", "make_sde", "sde_from_config"], "sde")}
__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'scoresde' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
