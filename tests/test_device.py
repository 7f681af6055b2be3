"""Every public function works where its inputs live, and large n can be drawn in chunks.

`device` runs each test on the CPU, on a CPU stand-in for a second device (tests/fake_device.py:
mixing devices raises as on CUDA, the numbers stay the CPU's bit for bit) and, with -m gpu, on
CUDA.  With a seeded CPU generator a solve gives the same samples on every device."""
import ast
import pathlib

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import solvers
from conftest import assert_matches_cpu, gen
from scoresde import VESDE
from scoresde import VPSDE
from scoresde.cli import cli
from scoresde.convert import eps_to_score, x0_from_eps, x0_from_score
from scoresde.likelihood import dequantize, log_likelihood
from scoresde.evaluation.metrics import mode_metrics, quality, sliced_w2
from scoresde.oracle import GaussianMixture

ROOT = pathlib.Path(__file__).resolve().parents[1]
FAST = {"pf_ode": {"rtol": 1e-3, "atol": 1e-3}}  # loose tolerances: these tests are about devices


def full_cov_mixture():
    A = torch.tensor([[1.0, 0.6], [0.6, 0.5]], dtype=torch.float64)
    return GaussianMixture([[1.0, -1.0], [-2.0, 0.5]], torch.stack([A, 0.5 * A + 0.1 * torch.eye(2)]), [0.3, 0.7])


# -- the math core and the solvers ---------------------------------------------------------------------
@pytest.mark.parametrize("solver", solvers.available())
def test_every_solver_gives_the_cpu_samples_on_any_device(solver, device):
    sde, data = VPSDE(), GaussianMixture.ring()
    kw = dict(shape=(24, 2), solver=solver, steps=8, dtype=torch.float64, **FAST.get(solver, {}))
    want = solvers.sample(data.score_fn(sde), sde, generator=gen(0), **kw).x
    got = solvers.sample(data.score_fn(sde), sde, generator=gen(0), device=device, **kw).x
    if solver == "torchsde" and device.type == "cuda":  # its Brownian motion draws on the device
        assert got.device.type == "cuda" and torch.isfinite(got).all()
    else:
        assert_matches_cpu(got, want, device, rtol=1e-4 if solver == "pf_ode" else 1e-6)
    assert mode_metrics(got, data) == pytest.approx(mode_metrics(got.cpu(), data), rel=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_solves_stay_on_the_ring(device, dtype):
    sde, data = VPSDE(), GaussianMixture.ring()
    res = solvers.sample(data.score_fn(sde), sde, shape=(2000, 2), solver="dpmpp_2m", steps=30, generator=gen(1),
                         device=device, dtype=dtype)
    assert res.x.dtype == dtype and res.x.device.type == device.type
    q = mode_metrics(res.x, data)
    assert q["off_mode"] < 0.01 and abs(q["std_ratio"] - 1) < (0.03 if dtype == torch.float32 else 0.15), q


def test_oracle_on_any_device(device):
    sde, data = VPSDE(), full_cov_mixture()
    x = data.sample(32, generator=gen(2), dtype=torch.float64, device=device)
    xc = data.sample(32, generator=gen(2), dtype=torch.float64)
    assert_matches_cpu(x, xc, device)
    t = torch.full((32,), 0.3, dtype=torch.float64)
    assert_matches_cpu(data.score(x, t.to(device), sde), data.score(xc, t, sde), device)
    assert_matches_cpu(data.score(x, 0.3, sde), data.score(xc, 0.3, sde), device)
    assert_matches_cpu(data.log_prob_t(x, 0.3, sde), data.log_prob_t(xc, 0.3, sde), device)
    assert_matches_cpu(data.log_prob(x), data.log_prob(xc), device)
    g = GaussianMixture.gaussian(3)
    y, yc = g.sample(8, generator=gen(3), device=device), g.sample(8, generator=gen(3))
    assert_matches_cpu(g.flow(y, 0.1, 0.7, sde), g.flow(yc, 0.1, 0.7, sde), device)
    assert data.score(x.to(torch.bfloat16), 0.3, sde).dtype == torch.bfloat16  # scored in float32 inside


def test_sde_draws_on_any_device(device):
    sde = VESDE()
    assert_matches_cpu(sde.prior_sample((16, 3), generator=gen(4), device=device),
                       sde.prior_sample((16, 3), generator=gen(4)), device)
    x0 = torch.randn(16, 3, generator=gen(5))
    xt, z = sde.marginal_sample(x0.to(device), 0.4, generator=gen(6))
    xt_c, z_c = sde.marginal_sample(x0, 0.4, generator=gen(6))
    assert_matches_cpu(xt, xt_c, device) and assert_matches_cpu(z, z_c, device)
    t = torch.rand(16, generator=gen(7))
    assert_matches_cpu(sde.drift(x0.to(device), t.to(device)), sde.drift(x0, t), device)
    assert_matches_cpu(sde.marginal(t.to(device))[1], sde.marginal(t)[1], device)


def test_conversions_take_coefficients_from_any_device(device):
    x, e = torch.randn(8, 2, generator=gen(8)), torch.randn(8, 2, generator=gen(9))
    m, s = torch.rand(8, generator=gen(10)) + 0.5, torch.rand(8, generator=gen(11)) + 0.1
    # per-sample coefficients left on the CPU are moved to x's device
    assert_matches_cpu(x0_from_eps(x.to(device), e.to(device), m, s), x0_from_eps(x, e, m, s), device)
    assert_matches_cpu(x0_from_score(x.to(device), e.to(device), 0.9, s), x0_from_score(x, e, 0.9, s), device)
    assert_matches_cpu(eps_to_score(e.to(device), s.to(device)), eps_to_score(e, s), device)


def test_likelihood_on_any_device(device):
    """Hutchinson with a CPU generator (the exact trace on a device: test_likelihood.py)."""
    sde, data = VPSDE(), GaussianMixture.gaussian(3)
    x = data.sample(4, generator=gen(12), dtype=torch.float64)
    kw = dict(method="hutchinson", probes=2, rtol=1e-3, atol=1e-3)
    got = log_likelihood(data.score_fn(sde), sde, x.to(device), generator=gen(13), **kw)
    want = log_likelihood(data.score_fn(sde), sde, x, generator=gen(13), **kw)
    assert_matches_cpu(got.logp, want.logp, device, rtol=1e-5, atol=1e-6)
    assert_matches_cpu(got.stderr, want.stderr, device, rtol=1e-4, atol=1e-6)
    assert_matches_cpu(dequantize(x.to(device), 4, generator=gen(14)), dequantize(x, 4, generator=gen(14)), device)


def test_metrics_on_any_device(device):
    data = GaussianMixture.ring()
    x = data.sample(300, generator=gen(15), dtype=torch.float64)
    assert quality(x.to(device), data) == pytest.approx(quality(x, data), rel=1e-9)
    y = data.sample(300, generator=gen(16))
    assert sliced_w2(x.to(device), y, generator=gen(17)) == pytest.approx(sliced_w2(x, y, generator=gen(17)))


def test_image_metrics_take_inputs_from_any_device(device):
    from scoresde.evaluation.metrics import features, precision_recall

    real, fake = torch.rand(40, 1, 4, 4, generator=gen(30)), torch.rand(40, 1, 4, 4, generator=gen(31))
    assert precision_recall(real, fake.to(device)) == precision_recall(real, fake)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))  # stays on the CPU
    assert torch.allclose(features(net, fake.to(device)), features(net, fake))


def test_sliced_w2_in_blocks_is_the_plain_formula():
    x, y = torch.randn(300, 3, generator=gen(18)), torch.randn(300, 3, generator=gen(19)) + 0.3
    theta = torch.randn(3, 100, generator=gen(20), dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    px, py = torch.sort(x.double() @ theta, 0)[0], torch.sort(y.double() @ theta, 0)[0]
    plain = (px - py).pow(2).mean().sqrt().item()
    assert sliced_w2(x, y, n_proj=100, generator=gen(20)) == pytest.approx(plain, rel=1e-12)


# -- the application: compare, plots, data, the CLI ---------------------------------------------------------
def test_compare_on_any_device(device):
    from scoresde.evaluation.compare import run_compare
    from scoresde.evaluation.resolve import resolve_model

    model = resolve_model("oracle:gmm8")
    kw = dict(solver_names=["euler_maruyama", "dpmpp_2m"], steps_list=[5], n=64, progress=False)
    rows, samples = run_compare(model, device=device, **kw)
    assert all(x.device.type == "cpu" for x in samples.values())
    assert all(np.isfinite(r["mode_w2"]) for r in rows)
    if device.type != "cuda":  # on CUDA the generator draws other numbers
        ref, _ = run_compare(model, device="cpu", **kw)
        drop = lambda r: {k: v for k, v in r.items() if k != "wall_s"}  # noqa: E731
        assert [drop(r) for r in rows] == [drop(r) for r in ref]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_plots_take_tensors_from_any_device(device, dtype, tmp_path):
    from scoresde.evaluation.plots import image_grid, samples_panel, save_samples_png

    pts = torch.randn(100, 2, generator=gen(21)).to(device=device, dtype=dtype)
    imgs = torch.rand(4, 1, 8, 8, generator=gen(22)).to(device=device, dtype=dtype)
    save_samples_png(pts, str(tmp_path / "a.png"))
    save_samples_png(imgs, str(tmp_path / "b.png"))
    samples_panel({("euler", 5): pts, ("heun", 5): pts}, str(tmp_path / "c.png"), reference=pts)
    assert image_grid(imgs).device.type == "cpu"
    assert all((tmp_path / f).stat().st_size > 0 for f in ("a.png", "b.png", "c.png"))


@pytest.mark.parametrize("name", ["ring", "moons", "swissroll", "checkerboard", "digits"])
def test_data_draws_with_a_generator_on_any_device(device, name):
    from scoresde.training.data import make_dataset

    ds = make_dataset(name)
    x = ds.sample(16, torch.Generator(device=device).manual_seed(0))
    assert x.shape == (16, *ds.shape) and torch.isfinite(x).all()


def test_cli_sample_compare_likelihood_on_any_device(device, tmp_path):
    dev = {"cpu": "cpu", "cuda": "cuda"}.get(device.type, str(device))
    out = tmp_path / "x.npz"
    r = CliRunner().invoke(cli, ["sample", "--solver", "ddim", "--steps", "5", "--n", "64", "--device", dev,
                                 "--out", str(out), "--quiet", "--batch-size", "20"])
    assert r.exit_code == 0, r.output
    assert np.load(out)["x"].shape == (64, 2)
    r = CliRunner().invoke(cli, ["compare", "--solvers", "euler,ddpm", "--steps", "4", "--n", "64", "--device", dev,
                                 "--out", str(tmp_path / "cmp"), "--quiet", "--no-plots", "--batch-size", "30"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["likelihood", "--model", "oracle:gmm8", "--n", "4", "--rtol", "1e-3", "--atol", "1e-3",
                                 "--method", "hutchinson", "--device", dev])
    assert r.exit_code == 0 and "exact log p_0 (oracle)" in r.output, r.output


# -- large n in chunks --------------------------------------------------------------------------------
@pytest.mark.parametrize("solver", solvers.available())
def test_batch_size_gives_the_samples_of_one_big_batch(solver):
    sde, data = VPSDE(), GaussianMixture.ring()
    sizes = []

    def score_fn(x, t):
        sizes.append(x.shape[0])
        return data.score(x, t, sde)

    kw = dict(shape=(50, 2), solver=solver, steps=6, dtype=torch.float64, denoise=solver not in ("ddpm", "ddim"),
              **FAST.get(solver, {}))
    whole = solvers.sample(data.score_fn(sde), sde, generator=gen(23), **kw)
    parts = solvers.sample(score_fn, sde, generator=gen(23), batch_size=16, **kw)
    assert max(sizes) == 16 and 2 in sizes  # 16 + 16 + 16 + 2 per evaluation
    assert parts.nfe == whole.nfe and torch.allclose(parts.x, whole.x, rtol=1e-12, atol=1e-12)


def test_cli_batch_size_gives_the_same_samples(tmp_path):
    args = ["sample", "--solver", "euler_maruyama", "--steps", "10", "--n", "100", "--quiet"]
    for name, extra in (("a", []), ("b", ["--batch-size", "32"])):
        assert CliRunner().invoke(cli, args + ["--out", str(tmp_path / f"{name}.npz")] + extra).exit_code == 0
    assert np.array_equal(np.load(tmp_path / "a.npz")["x"], np.load(tmp_path / "b.npz")["x"])


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_batch_size_is_named(bad):
    sde, data = VPSDE(), GaussianMixture.ring()
    with pytest.raises(solvers.SolverError, match="batch_size must be an integer >= 1 or None"):
        solvers.sample(data.score_fn(sde), sde, shape=(4, 2), batch_size=bad)


# -- CUDA graphs: guarded off on the CPU, and the capture logic against a recording stand-in -------------------
def test_cuda_graph_on_the_cpu_warns_and_samples_eagerly():
    sde, data = VPSDE(), GaussianMixture.ring()
    kw = dict(shape=(32, 2), solver="heun", steps=5, generator=gen(24))
    with pytest.warns(RuntimeWarning, match=r"cuda_graph=True needs a CUDA device, but the solve runs on cpu"):
        a = solvers.sample(data.score_fn(sde), sde, cuda_graph=True, **kw)
    assert torch.equal(a.x, solvers.sample(data.score_fn(sde), sde, **{**kw, "generator": gen(24)}).x)


def _fake_record(self, sx, st):
    """A graph that, like a CUDA graph, only ever reads the static inputs and writes the static output."""
    out = self.fn(sx, st)
    return (lambda: out.copy_(self.fn(sx, st))), out


@pytest.mark.parametrize("solver", ["ddpm", "heun", "pc"])
def test_graphed_score_replays_from_static_buffers(monkeypatch, solver):
    from fake_device import second_device

    monkeypatch.setattr(solvers.GraphedScore, "device_type", "meta")
    monkeypatch.setattr(solvers.GraphedScore, "_record", _fake_record)
    sde, data = VPSDE(), GaussianMixture.ring()
    kw = dict(shape=(40, 2), solver=solver, steps=4, batch_size=16)
    want = solvers.sample(data.score_fn(sde), sde, generator=gen(25), **kw).x
    with second_device() as dev:
        fn = solvers.GraphedScore(data.score_fn(sde))
        got = solvers.sample(fn, sde, generator=gen(25), device=dev, **kw).x
        again = solvers.sample(fn, sde, generator=gen(25), device=dev, **kw).x
    assert torch.equal(got.cpu(), want) and torch.equal(again.cpu(), want)
    assert len(fn.graphs) == 2 and not fn.eager  # one graph per chunk shape (16 and 8), kept across solves


def test_a_score_that_cannot_be_captured_runs_eagerly_after_one_warning(monkeypatch):
    from fake_device import second_device

    def failing(self, sx, st):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(solvers.GraphedScore, "device_type", "meta")
    monkeypatch.setattr(solvers.GraphedScore, "_record", failing)
    sde, data = VPSDE(), GaussianMixture.ring()
    kw = dict(shape=(16, 2), solver="euler", steps=4)
    want = solvers.sample(data.score_fn(sde), sde, generator=gen(26), **kw).x
    with second_device() as dev, pytest.warns(RuntimeWarning, match="could not be captured.*runs eagerly"):
        got = solvers.sample(data.score_fn(sde), sde, generator=gen(26), device=dev, cuda_graph=True, **kw).x
    assert torch.equal(got.cpu(), want)


def test_graphed_score_runs_eagerly_when_gradients_are_needed(monkeypatch):
    monkeypatch.setattr(solvers.GraphedScore, "device_type", "cpu")
    monkeypatch.setattr(solvers.GraphedScore, "_record", _fake_record)
    seen = []
    fn = solvers.GraphedScore(lambda x, t: seen.append(x) or 2 * x)
    x = torch.ones(3, 2, requires_grad=True)
    y = fn(x, torch.zeros(3))
    assert seen == [x] and y.requires_grad and not fn.graphs


# -- no silent CPU allocations in library code ---------------------------------------------------------------
FACTORIES = {"tensor", "as_tensor", "zeros", "ones", "full", "empty", "arange", "linspace", "logspace", "eye",
             "rand", "randn", "randint", "randperm", "normal"}
# functions whose factory calls are on the CPU on purpose, and why
CPU_BY_DESIGN = {
    "scoresde/oracle.py": {"GaussianMixture.__init__", "GaussianMixture.ring", "GaussianMixture.gaussian"},
    # ^ parameters in float64 on the CPU; _params() moves them to each input's device and dtype
    "scoresde/sde.py": {"VPSDE._discrete_tables", "VESDE.discrete_sigmas", "SDE.t_from_log_snr"},
    # ^ float64 tables read as Python floats (as_tensor keeps a tensor's device)
    "solvers/grids.py": {"time_grid", "explicit_grid"}, "solvers/_common.py": {"discrete_vp_tables"},
    "solvers/tuned.py": {"tuned_grid"},
    "solvers/optimize.py": {"_Param.__init__", "_Param.grid"},
    # ^ float64 grids and off-grid times on the CPU: solvers read them as Python floats
    "scoresde/metrics.py": {"_directions"},  # drawn on the CPU (same on every device), then moved
    "scoresde/nn.py": {"GaussianFourierEmbedding.__init__"},  # a buffer: Module.to() moves it
    "scoresde/data.py": {"digits", "load_array", "fit_images", "PinnedLoader.__call__", "ImageDataset.sample"},
    # ^ data sets are loaded and resized in host memory; pinned host buffers; a seed drawn on the host
    "scoresde/compare.py": {"score_samples", "image_reference"},  # a checkpoint's reference data live on the CPU
    "scoresde/_figures.py": {"image_grid"},  # figures are drawn on the CPU
}


def _factory_calls_without_device(path: pathlib.Path):
    found, scope = [], []

    class Visitor(ast.NodeVisitor):
        def scoped(self, node):
            scope.append(node.name)
            self.generic_visit(node)
            scope.pop()

        visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = scoped

        def visit_Call(self, node):
            f = node.func
            if (isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "torch"
                    and f.attr in FACTORIES and not {k.arg for k in node.keywords} & {"device", None}):
                found.append((".".join(scope), node.lineno, f"torch.{f.attr}"))
            self.generic_visit(node)

    Visitor().visit(ast.parse(path.read_text()))
    return found


def test_library_code_says_where_its_tensors_live():
    """A tensor made without device= lands on the CPU and breaks on CUDA the moment it meets the
    input (the metrics bug that failed 18 GPU tests).  Pass device=, or list the function above."""
    bad = []
    for path in sorted(ROOT.glob("scoresde/*.py")) + sorted(ROOT.glob("solvers/*.py")):
        rel = path.relative_to(ROOT).as_posix()
        bad += [f"{rel}:{line} {fn} {call}" for fn, line, call in _factory_calls_without_device(path)
                if fn not in CPU_BY_DESIGN.get(rel, ())]
    assert not bad, "tensor factories without device=:\n" + "\n".join(bad)
