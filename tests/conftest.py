import pytest
import torch

from scoresde import SubVPSDE, VESDE, VPSDE

SDE_FACTORIES = {
    "vp": lambda: VPSDE(),
    "vp-cosine": lambda: VPSDE(schedule="cosine"),
    "subvp": lambda: SubVPSDE(),
    "ve": lambda: VESDE(),
}


@pytest.fixture(params=list(SDE_FACTORIES))
def any_sde(request):
    return SDE_FACTORIES[request.param]()


def gen(seed=0):
    return torch.Generator().manual_seed(seed)
