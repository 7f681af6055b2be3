"""diffusers models in our solvers: the same samples as diffusers' own scheduler loops from the same
noise (float32, at the precision of their float32 tables), and exactly (≤ 1e-10) against float64
transcriptions of each diffusers step written out here; the time map for N = 1000 and N = 500.

The models are small randomly initialised UNet2DModels saved with save_pretrained: nothing is
downloaded."""
import math

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import solvers  # noqa: E402
from scoresde.evaluation.pretrained import PretrainedError, load_diffusers  # noqa: E402
from scoresde.evaluation.resolve import resolve_model  # noqa: E402

SHAPE = (3, 1, 8, 8)
PREDS = ["epsilon", "v_prediction", "sample"]


@pytest.fixture(autouse=True)
def one_thread():
    # a small UNet on a shared 2-core machine runs 10x faster on one thread than on two
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_unet(seed=0):
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                 block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4).eval()


def save_model(folder, prediction="epsilon", beta_schedule="linear", N=100, clip=False, seed=0):
    unet = tiny_unet(seed)
    unet.save_pretrained(folder / "unet")
    diffusers.DDPMScheduler(num_train_timesteps=N, beta_schedule=beta_schedule, prediction_type=prediction,
                            clip_sample=clip).save_pretrained(folder / "scheduler")
    return unet, f"diffusers:{folder}"


def grid_of(timesteps, N, final=0.0):
    """diffusers' integer timesteps as our times t = (i + 1)/N, ending at t = 0 (ᾱ = 1)."""
    return [(int(i) + 1) / N for i in timesteps] + [final]


def diffusers_loop(unet, scheduler, steps, seed, **step_kw):
    scheduler.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPE, generator=g)
    for t in scheduler.timesteps:
        with torch.no_grad():
            out = unet(x, t).sample
        x = scheduler.step(out, t, x, generator=g, **step_kw).prev_sample
    return x, scheduler.timesteps


def close_f32(ours, theirs):
    # both sides round their float32 tables differently (ours from float64): relative 1e-5 of the scale
    scale = 1 + float(theirs.abs().max())
    err = float((ours - theirs).abs().max())
    assert err <= 2e-5 * scale, f"max |ours - diffusers| = {err:.3g} at scale {scale:.3g}"


CASES = [(p, b, c) for p in PREDS for b in ("linear", "squaredcos_cap_v2") for c in (False, True)]


@pytest.mark.parametrize("prediction, beta_schedule, clip", CASES)
def test_ddpm_ddim_and_dpmpp_2m_give_diffusers_samples_from_the_same_noise(tmp_path, prediction, beta_schedule, clip):
    unet, spec = save_model(tmp_path, prediction, beta_schedule, N=100, clip=clip)
    model = load_diffusers(spec)
    N, sched = 100, str(tmp_path / "scheduler")

    def ours(solver, grid, **kw):
        return solvers.sample(model.score_fn, model.sde, shape=SHAPE, solver=solver, grid=grid,
                              generator=torch.Generator().manual_seed(1), **kw).x

    theirs, ts = diffusers_loop(unet, diffusers.DDPMScheduler.from_pretrained(sched), 10, seed=1)  # respaced
    close_f32(ours("ddpm", grid_of(ts, N), schedule="discrete"), theirs)
    for eta in (0.0, 1.0):
        # a clipped x̂_0 gives a clipped ε̂ here (one score function); diffusers' DDIM needs
        # use_clipped_model_output=True to do the same
        theirs, ts = diffusers_loop(unet, diffusers.DDIMScheduler.from_pretrained(sched), 10, seed=1, eta=eta,
                                    use_clipped_model_output=True)
        close_f32(ours("ddim", grid_of(ts, N), schedule="discrete", eta=eta), theirs)
    if not clip:  # DPMSolverMultistepScheduler has no clip_sample (only dynamic thresholding)
        theirs, ts = diffusers_loop(unet, diffusers.DPMSolverMultistepScheduler.from_pretrained(sched), 10, seed=1)
        close_f32(ours("dpmpp_2m", grid_of(ts, N)), theirs)


@pytest.mark.parametrize("prediction", PREDS)
def test_ddpm_over_all_n_steps_is_diffusers_ddpm(tmp_path, prediction):
    unet, spec = save_model(tmp_path, prediction, "linear", N=50)
    model = load_diffusers(spec)
    theirs, ts = diffusers_loop(unet, diffusers.DDPMScheduler.from_pretrained(str(tmp_path / "scheduler")), 50, seed=2)
    assert ts.tolist() == list(range(49, -1, -1))
    ours = solvers.sample(model.score_fn, model.sde, shape=SHAPE, solver="ddpm", steps=50, grid="uniform", eps=0.0,
                          schedule="discrete", generator=torch.Generator().manual_seed(2)).x
    close_f32(ours, theirs)


# -- float64 transcriptions of diffusers' steps, written from their formulas -------------------------
def _x0_eps(kind, out, x, a, s):
    # a = √ᾱ_t, s = √(1 − ᾱ_t); diffusers' prediction types
    if kind == "epsilon":
        return (x - s * out) / a, out
    if kind == "sample":
        return out, (x - a * out) / s
    return a * x - s * out, a * out + s * x  # v_prediction


def transcribed(unet, kind, abar, timesteps, x, noises, method, clip=None, eta=0.0):
    """The DDPM / DDIM / DPM-Solver++(2M) loops in float64 on diffusers' timesteps (ᾱ_{-1} = 1)."""
    prev_x0, prev_lam = None, None
    for k, t in enumerate(timesteps):
        prev_t = timesteps[k + 1] if k + 1 < len(timesteps) else -1
        ab_t, ab_p = float(abar[t]), (float(abar[prev_t]) if prev_t >= 0 else 1.0)
        a, s = math.sqrt(ab_t), math.sqrt(1 - ab_t)
        with torch.no_grad():
            out = unet(x, torch.tensor(t)).sample
        x0, eps = _x0_eps(kind, out, x, a, s)
        if clip is not None:
            x0 = x0.clamp(-clip, clip)
            eps = (x - a * x0) / s
        if method == "ddpm":
            beta = 1 - ab_t / ab_p
            mean = math.sqrt(ab_p) * beta / (1 - ab_t) * x0 + math.sqrt(1 - beta) * (1 - ab_p) / (1 - ab_t) * x
            var = (1 - ab_p) / (1 - ab_t) * beta
            x = mean + (math.sqrt(var) * noises[k] if prev_t >= 0 else 0)
        elif method == "ddim":
            sig = eta * math.sqrt((1 - ab_p) / (1 - ab_t) * (1 - ab_t / ab_p))
            x = math.sqrt(ab_p) * x0 + math.sqrt(1 - ab_p - sig ** 2) * eps
            if sig > 0 and prev_t >= 0:
                x = x + sig * noises[k]
        else:  # DPM-Solver++(2M): first order at the first step and into σ = 0
            a_p, s_p = math.sqrt(ab_p), math.sqrt(1 - ab_p)
            lam = math.log(a / s)
            if prev_t < 0:
                x = x0
            else:
                h = math.log(a_p / s_p) - lam
                d = x0 if prev_x0 is None else x0 + 0.5 * (x0 - prev_x0) * h / (lam - prev_lam)
                x = s_p / s * x - a_p * math.expm1(-h) * d
            prev_x0, prev_lam = x0, lam
    return x


@pytest.mark.parametrize("prediction, beta_schedule, clip", CASES)
def test_our_solvers_equal_float64_transcriptions_of_diffusers_steps(tmp_path, prediction, beta_schedule, clip):
    _, spec = save_model(tmp_path, prediction, beta_schedule, N=100, clip=clip)
    model = load_diffusers(spec)
    unet = model.score_fn.net.double()
    abar = model.sde.alphas_cumprod
    timesteps = list(range(90, -1, -10))  # diffusers' 'leading' 10 of 100
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    noises = torch.randn((len(timesteps), *SHAPE), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    runs = [("ddpm", {"schedule": "discrete"}), ("ddim", {"schedule": "discrete", "eta": 0.0}),
            ("ddim", {"schedule": "discrete", "eta": 1.0}), ("dpmpp_2m", {})]
    for solver, kw in runs:
        g = torch.Generator().manual_seed(4)
        ours = solvers.sample(model.score_fn, model.sde, x_T=x_T, solver=solver, grid=grid_of(timesteps, 100),
                              generator=g, **kw).x
        # our solvers draw one whole-batch z per noisy step, as the transcription's noises[k]
        want = transcribed(unet, prediction, abar, timesteps, x_T, noises, solver if solver != "dpmpp_2m" else "dpm",
                           clip=1.0 if clip else None, eta=kw.get("eta", 0.0))
        err = float((ours - want).abs().max())
        assert err <= 1e-10 * (1 + float(want.abs().max())), f"{solver} {kw}: {err:.3g}"


# -- the time map ------------------------------------------------------------------------------------
class Spy(torch.nn.Module):
    """A network that records the timesteps it is given and predicts ε = 0."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, t):
        self.seen.append(t.detach().clone())
        return torch.zeros_like(x)


@pytest.mark.parametrize("N", [1000, 500])
def test_the_index_map_follows_n_and_hits_diffusers_timesteps_exactly(N):
    from scoresde.adapter import score_from_network
    from scoresde.evaluation.pretrained import sde_from_scheduler_config

    sde = sde_from_scheduler_config({"num_train_timesteps": N, "beta_schedule": "linear"})
    assert sde.N == N
    spy = Spy()
    score = score_from_network(spy, sde, "epsilon", "index")
    sched = diffusers.DDPMScheduler(num_train_timesteps=N)
    sched.set_timesteps(20)
    solvers.sample(score, sde, shape=(2, 3), solver="ddpm", grid=grid_of(sched.timesteps, N), schedule="discrete",
                   generator=torch.Generator().manual_seed(0))
    got = [int(t[0]) for t in spy.seen]
    assert got == sched.timesteps.tolist() and all(float(t[0]) == int(t[0]) for t in spy.seen)
    spy.seen.clear()
    score(torch.zeros(1, 3), torch.tensor([0.5]))  # off the lattice: fractional, N·t − 1
    assert float(spy.seen[0][0]) == pytest.approx(N * 0.5 - 1)


def test_a_saved_model_with_n_500_gets_its_own_table_and_says_so(tmp_path):
    _, spec = save_model(tmp_path, "v_prediction", "squaredcos_cap_v2", N=500, clip=True)
    model = resolve_model(spec)
    assert model.sde.N == 500 and model.shape == (1, 8, 8)
    assert torch.allclose(model.sde.alphas_cumprod.float(),
                          diffusers.DDPMScheduler(num_train_timesteps=500, beta_schedule="squaredcos_cap_v2")
                          .alphas_cumprod, rtol=1e-6, atol=1e-7)
    assert model.describe == (f"{spec}: UNet2DModel 1×8×8, DDPMScheduler squaredcos_cap_v2 β, N = 500; predicts v, "
                              f"time input index N·t − 1 (N = 500), x̂_0 clipped to [-1, 1], {model.sde!r}")


def test_foreign_and_unsupported_configs_are_one_line_errors(tmp_path):
    with pytest.raises(PretrainedError, match="no scheduler/scheduler_config.json"):
        tiny_unet().save_pretrained(tmp_path / "alone")
        load_diffusers(f"diffusers:{tmp_path / 'alone'}")
    save_model(tmp_path / "m")
    cfg_path = tmp_path / "m" / "scheduler" / "scheduler_config.json"
    import json
    cfg = json.loads(cfg_path.read_text())
    for change, msg in [({"prediction_type": "flow"}, "prediction_type 'flow' is not one of 'epsilon', 'sample', "
                                                      "'v_prediction'"),
                        ({"thresholding": True}, "dynamic thresholding"),
                        ({"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr"),
                        ({"beta_schedule": "quadratic"}, "beta_schedule must be one of")]:
        cfg_path.write_text(json.dumps({**cfg, **change}))
        with pytest.raises(PretrainedError, match=msg):
            load_diffusers(f"diffusers:{tmp_path / 'm'}")


# -- the CLI and Python on the same saved model --------------------------------------------------------
def test_bits_per_dim_of_a_saved_model_on_uint8_images_cli_and_python_agree(tmp_path):
    import json

    import numpy as np
    from click.testing import CliRunner

    from scoresde.adapter import score_from_network
    from scoresde.cli import cli
    from scoresde.evaluation.pretrained import sde_from_scheduler_config
    from scoresde.likelihood import bits_per_dim_estimate
    from scoresde.training.data import make_dataset

    unet, spec = save_model(tmp_path / "m", "epsilon", "linear", N=100)
    images = np.random.default_rng(0).integers(0, 256, size=(6, 1, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "img.npy", images)
    args = ["likelihood", "--model", spec, "--data", str(tmp_path / "img.npy"), "--n", "4", "--method", "hutchinson",
            "--rtol", "1e-3", "--atol", "1e-3", "--threads", "1", "--out", str(tmp_path / "l.json")]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert "UNet2DModel 1×8×8" in r.output and "dequantized 256-level data" in r.output, r.output
    got = json.loads((tmp_path / "l.json").read_text())
    # by hand: the same UNet through the adapter, the same β table, the same draws
    sde = sde_from_scheduler_config(json.loads((tmp_path / "m" / "scheduler" / "scheduler_config.json").read_text()))
    score = score_from_network(unet, sde, "epsilon", "index", call=lambda net, x, t: net(x, t).sample)
    g = torch.Generator().manual_seed(0)
    x = make_dataset("file", str(tmp_path / "img.npy"), "all").head(4, g).float()
    est = bits_per_dim_estimate(score, sde, x, bits=None, levels=256, method="hutchinson", generator=g, rtol=1e-3,
                                atol=1e-3, eps=1 / 100, shape=(1, 8, 8))
    assert got["bpd"] == pytest.approx(est.bpd_per_sample.tolist(), rel=1e-6)
    assert 0 < est.bpd < 100  # a random UNet is a poor model, but a finite one


def test_cli_errors_for_pretrained_specs(tmp_path):
    from click.testing import CliRunner

    from scoresde.cli import cli

    r = CliRunner().invoke(cli, ["sample", "--model", f"diffusers:{tmp_path / 'nothing'}", "--out", str(tmp_path / "s.npz")])
    assert r.exit_code == 2 and "no such folder" in r.output, r.output
    _, spec = save_model(tmp_path / "m")
    r = CliRunner().invoke(cli, ["likelihood", "--model", spec])
    assert r.exit_code == 2 and "--data is required" in r.output, r.output
    r = CliRunner().invoke(cli, ["sample", "--model", "py:no_such_module:f", "--out", str(tmp_path / "s.npz")])
    assert r.exit_code != 0 and "cannot import 'f' from 'no_such_module'" in r.output, r.output
