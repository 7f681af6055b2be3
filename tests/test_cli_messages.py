"""What the command line prints and writes: compare sized for a network, with an estimate, a
progress bar and --max-nfe; plots and messages that say what they mean; -o solver options; the
umask; a --help that answers without torch.  Expected texts and numbers are written out here, not
imported from the code under test."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import solvers
from scoresde.evaluation import plots
from scoresde.cli import cli
from scoresde.evaluation.compare import far_from_data, perfect_sampler_band, score_samples
from scoresde.training.config import from_dict
from scoresde.evaluation.resolve import resolve_model
from scoresde.training.trainer import Trainer


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch, one_thread):
    """Every test in a temp folder (a default --out lands there, not in the checkout), on one torch
    thread: behaviour, not speed, is tested, and on a busy shared CPU two threads are 10-40x slower."""
    monkeypatch.chdir(tmp_path)


def run(*args):
    """The CLI in-process; compare and sample get --overwrite, since these tests write into pytest's
    existing temp folders (refusing to replace an output is tested elsewhere)."""
    args = [str(a) for a in args]
    if args[0] in ("compare", "sample") and "--help" not in args:
        args.append("--overwrite")
    return CliRunner().invoke(cli, args)


def one_error_line(r, message):
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error: "), r.output
    assert message in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def ckpts(tmp_path_factory, one_thread):
    """Barely trained checkpoints: the ring (an oracle is known) and moons (data only)."""
    out = {}
    for data in ("ring", "moons"):
        cfg = from_dict({"data": {"name": data, "batch_size": 64}, "model": {"hidden": 32, "blocks": 1},
                         "train": {"steps": 20, "warmup": 5, "ckpt_every": 0, "log_every": 10}})
        folder = tmp_path_factory.mktemp(data)
        Trainer(cfg, str(folder), progress=False, previews=False).train()
        out[data] = str(folder / "checkpoint.pt")
    return out


# -- compare on a network: defaults, estimate, progress, budget ------------------------------------

def test_network_defaults_are_small_and_oracle_defaults_unchanged(ckpts, tmp_path):
    # a --max-nfe below every run: one error line, nothing run
    one_error_line(run("compare", "--model", ckpts["ring"], "--solvers", "euler", "--max-nfe", 1),
                   "--max-nfe 1: every run needs more; the cheapest is euler 10 steps (10 nfe)")
    # a budget that keeps only the first run: the skip list shows the default steps
    r = run("compare", "--model", ckpts["ring"], "--solvers", "euler", "--max-nfe", 10, "--no-plots", "--quiet",
            "--out", tmp_path)
    assert "skipping 2 run(s) over --max-nfe 10: euler 20 steps (20 nfe), euler 50 steps (50 nfe)" in r.output
    r = run("compare", "--solvers", "euler", "--max-nfe", 10, "--n", 200, "--no-plots", "--quiet", "--out", tmp_path)
    assert "euler 50 steps (50 nfe), euler 100 steps (100 nfe), euler 1000 steps (1000 nfe)" in r.output
    r = run("compare", "--model", ckpts["ring"], "--solvers", "ddim", "--steps", 3, "--quiet", "--no-plots",
            "--out", tmp_path / "c")
    assert r.exit_code == 0, r.output
    settings = json.load(open(tmp_path / "c" / "results.json"))["settings"]
    assert settings["n"] == 1000  # a checkpoint's default n; an oracle's is 4000, as --help says
    assert "[default: 4000 for an oracle, 1000 for a checkpoint]" in " ".join(run("compare", "--help").output.split())


def test_estimate_before_the_runs_and_one_progress_bar_counting_nfe(tmp_path):
    r = run("compare", "--solvers", "euler,heun", "--steps", "3,5", "--n", 200, "--no-plots", "--out", tmp_path)
    assert r.exit_code == 0, r.output
    rows = json.load(open(tmp_path / "results.json"))["rows"]
    total = sum(row["nfe"] for row in rows)
    assert total == 3 + 5 + 2 * 3 + 2 * 5  # heun: two evaluations per step
    plan_line = next(ln for ln in r.output.splitlines() if ln.startswith("plan:"))
    assert f"4 runs, {total} score evaluations" in plan_line and "n = 200" in plan_line and "ms" in plan_line
    assert r.output.index("plan:") < r.output.index("solver ")  # up front, before the table
    assert f"{total}/{total} [" in r.output and "nfe/s" in r.output  # the bar's unit is nfe
    assert "total " in r.output and "estimated" in r.output


def test_adaptive_nfe_is_measured_and_the_bar_total_corrected(tmp_path):
    r = run("compare", "--solvers", "pf_ode", "--n", 200, "--no-plots", "--out", tmp_path, "-o", "rtol=1e-3",
            "-o", "atol=1e-3")
    assert r.exit_code == 0, r.output
    nfe = json.load(open(tmp_path / "results.json"))["rows"][0]["nfe"]
    assert "adaptive pf_ode ~" in r.output and f"{nfe}/{nfe} [" in r.output


def test_max_nfe_skips_runs_over_budget(tmp_path):
    r = run("compare", "--solvers", "euler,heun,pf_ode", "--steps", "3,5", "--n", 200, "--max-nfe", 8,
            "--no-plots", "--out", tmp_path)
    assert r.exit_code == 0, r.output
    res = json.load(open(tmp_path / "results.json"))
    assert [(x["solver"], x["steps"]) for x in res["rows"]] == [("euler", 3), ("euler", 5), ("heun", 3)]
    assert {(s["solver"], s["steps"]) for s in res["skipped"]} == {("heun", 5), ("pf_ode", None)}
    assert all(x["nfe"] <= 8 for x in res["rows"]) and "skipping 2 run(s) over --max-nfe 8" in r.output


def test_threads_option_is_checked_and_recorded(tmp_path):
    one_error_line(run("compare", "--threads", "two"), "Invalid value for '--threads': 'two': give auto or a whole number >= 1")
    before = torch.get_num_threads()
    try:
        r = run("compare", "--solvers", "euler", "--steps", 3, "--n", 200, "--threads", 1, "--no-plots", "--quiet",
                "--out", tmp_path)
        assert r.exit_code == 0, r.output
        assert json.load(open(tmp_path / "results.json"))["settings"]["threads"] == "cpu, 1 thread"
    finally:
        torch.set_num_threads(before)


# -- plots and what is printed -----------------------------------------------------------------------

def capture_figures(monkeypatch):
    figs = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figs.append(fig))
    return figs


def test_plots_show_the_ranking_metric_off_mode_and_readable_titles(monkeypatch, tmp_path):
    figs = capture_figures(monkeypatch)
    r = run("compare", "--solvers", "heun,ddpm", "--steps", "5,10", "--n", 300, "--quiet", "--out", tmp_path)
    assert r.exit_code == 0, r.output
    quality, panel = figs
    labels = [ax.get_ylabel() for ax in quality.axes]
    assert labels[0].startswith("within-mode W2") and labels[1].startswith("off every mode")
    title = quality.get_suptitle()
    assert title == "oracle:gmm8 · VP SDE (β 0.1→20) · n = 300 · seed 0" and "VPSDE(" not in title
    assert all(ax.get_xlabel() == "score evaluations (nfe)" for ax in quality.axes)
    titles = [ax.get_title() for ax in panel.axes]
    assert "heun, 5 steps, 10 nfe" in titles and "ddpm, 10 steps, 10 nfe" in titles
    scatter = panel.axes[0]
    assert [t.get_text() for t in scatter.get_xticklabels() if t.get_text()], "sample panels need an axis scale"
    assert panel.get_suptitle() == title


def test_the_band_is_where_exact_samples_land():
    """The shaded 'floor' is the range of the ranking metric over independent exact samples, so an
    exact sampler's score lands in or next to it (never far below), for the oracle and for data."""
    model = resolve_model("oracle:gmm8")
    band = perfect_sampler_band(model, 1000, seed=0)
    assert band["metric"] == "mode_w2" and 0 < band["lo"] < band["mean"] < band["hi"] < 0.15
    exact = model.oracle.sample(1000, generator=torch.Generator().manual_seed(123))
    assert 0.7 * band["lo"] < score_samples(exact, model)["mode_w2"] < 1.5 * band["hi"]


def test_data_only_models_rank_by_sliced_w2_against_its_band(ckpts, monkeypatch, tmp_path):
    model = resolve_model(ckpts["moons"])
    band = perfect_sampler_band(model, 500, seed=0)
    assert band["metric"] == "sw2" and band["draws"] == 8
    from scoresde.training.data import make_dataset
    exact = make_dataset("moons").reference(500, torch.Generator().manual_seed(99))  # fresh, independent draws
    assert 0.7 * band["lo"] < score_samples(exact, model)["sw2"] < 1.5 * band["hi"]
    figs = capture_figures(monkeypatch)
    r = run("compare", "--model", ckpts["moons"], "--solvers", "euler", "--steps", 5, "--n", 500, "--quiet",
            "--out", tmp_path)
    assert r.exit_code == 0, r.output
    assert [ax.get_ylabel() for ax in figs[0].axes] == ["sliced W2 to data (data units)"]
    assert "step 20 · VP SDE (β 0.1→20) · n = 500 · seed 0" in figs[0].get_suptitle()
    assert "exact samples of size 500 score sw2" in r.output


def test_legend_in_help_and_under_the_table(tmp_path):
    helptext = run("compare", "--help").output
    for name in ("mode_w2", "sw2", "mode_tv", "off_mode", "std_ratio"):
        assert f"    {name}" in helptext
    assert "within-mode W2" in helptext and "ranks the solvers" in helptext
    r = run("compare", "--solvers", "heun", "--steps", 5, "--n", 300, "--quiet", "--no-plots", "--out", tmp_path)
    after = r.output[r.output.index("------"):]
    for name, first_word in (("mode_w2", "within-mode"), ("sw2", "sliced"), ("mode_tv", "total"),
                             ("off_mode", "fraction")):
        assert f"  {name.ljust(9)}  {first_word}" in after


def test_warning_when_even_the_best_run_is_far_from_the_data(ckpts, tmp_path):
    r = run("compare", "--model", ckpts["ring"], "--solvers", "euler,ddim", "--steps", "5,10", "--n", 300,
            "--quiet", "--no-plots", "--out", tmp_path)
    assert r.exit_code == 0, r.output
    assert "WARNING: even the best run" in r.output and "off every mode (> 5 %)" in r.output
    r = run("compare", "--solvers", "dpmpp_2m", "--steps", 20, "--n", 1000, "--quiet", "--no-plots", "--out", tmp_path)
    assert r.exit_code == 0 and "WARNING" not in r.output, r.output  # the exact score at 20 nfe is close


def test_an_oracle_compare_cautions_that_its_winners_need_not_transfer(ckpts, tmp_path):
    r = run("compare", "--solvers", "heun", "--steps", 5, "--n", 300, "--quiet", "--no-plots", "--out", tmp_path)
    assert r.exit_code == 0, r.output
    caution = next(ln for ln in r.output.splitlines() if ln.startswith("caution:"))
    assert "need not transfer" in caution and "`scoresde schedule` fits a grid to your own model" in caution
    assert r.output.index("best at <= 20 nfe") < r.output.index("caution:")
    assert "next:" not in r.output  # an oracle's grid is fitted with --model oracle:…, not suggested
    r = run("compare", "--model", ckpts["ring"], "--solvers", "heun", "--steps", 5, "--n", 300, "--quiet",
            "--no-plots", "--out", tmp_path / "ck")
    assert r.exit_code == 0 and "caution:" not in r.output, r.output
    # on a model of your own the report names the command that fits the winner's grid to it
    hint = next(ln for ln in r.output.splitlines() if ln.startswith("next:"))
    assert f"`scoresde schedule --model {ckpts['ring']} --solver heun --nfe 10 --out grid.json`" in hint, hint
    r = run("compare", "--model", ckpts["ring"], "--solvers", "euler_maruyama", "--steps", 5, "--n", 300,
            "--quiet", "--no-plots", "--out", tmp_path / "sde")
    assert r.exit_code == 0 and "next:" not in r.output  # a stochastic winner has no pathwise grid fit


def test_far_from_data_thresholds():
    fine = {"mode_w2": 0.24, "off_mode": 0.049}  # just inside the documented 0.25 and 5 %
    assert far_from_data(fine) is None and far_from_data(None) is None
    assert "off every mode" in far_from_data(dict(fine, off_mode=0.06))
    assert "mode_w2 0.3" in far_from_data(dict(fine, mode_w2=0.3))
    band = {"metric": "sw2", "mean": 0.1, "lo": 0.09, "hi": 0.11, "draws": 8}
    assert far_from_data({"sw2": 0.19}, band) is None and "2 x the data-vs-data floor" in far_from_data({"sw2": 0.21}, band)


# -- -o/--option ----------------------------------------------------------------------------------------

def test_options_are_typed_from_the_solver_signature(tmp_path):
    out = tmp_path / "d.npz"
    r = run("sample", "--solver", "ddim", "-o", "eta=0.5", "--steps", 5, "--n", 200, "--quiet", "--out", out)
    assert r.exit_code == 0, r.output
    assert json.loads(str(np.load(out)["settings"]))["options"] == {"eta": 0.5}
    r = run("sample", "--solver", "pc", "-o", "corrector_steps=2", "-o", "snr=0.1", "--steps", 4, "--n", 200,
            "--quiet", "--out", out)
    assert r.exit_code == 0 and int(np.load(out)["nfe"]) == 3 * 4, r.output
    r = run("sample", "--solver", "dpmpp_2m", "-o", "lower_order_final=no", "--steps", 4, "--n", 200, "--quiet",
            "--out", out)
    assert json.loads(str(np.load(out)["settings"]))["options"] == {"lower_order_final": False}


def test_option_errors_are_the_python_apis_one_liners():
    with pytest.raises(solvers.SolverError) as api:
        solvers.sample(lambda x, t: -x, None, shape=(2, 2), solver="heun", bogus=1)
    assert one_error_line(run("sample", "--solver", "heun", "-o", "bogus=1"), str(api.value)) == f"Error: {api.value}"
    one_error_line(run("sample", "--solver", "heun", "-o", "S_churn=lots"), "option 'S_churn' of 'heun' takes a number")
    one_error_line(run("sample", "--solver", "ddim", "-o", "eta=abc"),
                   "-o 'eta=abc': option 'eta' of 'ddim' takes a number (default 0.0), got 'abc'")
    one_error_line(run("sample", "--solver", "pc", "-o", "corrector_steps=1.5"), "takes an integer (default 1)")
    one_error_line(run("sample", "--solver", "dpmpp_2m", "-o", "lower_order_final=maybe"), "takes true or false")
    one_error_line(run("sample", "--solver", "ddim", "-o", "eta"), "write KEY=VALUE")
    one_error_line(run("sample", "--solver", "ddim", "-o", "eta=-1", "--n", 4, "--quiet"), "eta must be >= 0, got -1.0")
    one_error_line(run("compare", "--solvers", "euler_t,dpmpp_2m", "-o", "eta=1"),
                   "no solver being run takes option 'eta' (euler_t: afs; dpmpp_2m: lower_order_final, afs)")
    one_error_line(run("compare", "--solvers", "heun", "-o", "ddim.eta=1"), "solver 'ddim' is not being run")
    one_error_line(run("compare", "--solvers", "pf_ode,torchsde", "-o", "method=rk4", "--n", 200),
                   "unknown torchsde method 'rk4'")


def test_compare_options_target_one_solver_or_every_solver_that_takes_them(tmp_path):
    r = run("compare", "--solvers", "pf_ode,ddim,ddpm", "--steps", 4, "--n", 200, "-o", "pf_ode.method=rk4",
            "-o", "ddim.eta=1", "--quiet", "--no-plots", "--out", tmp_path)
    assert r.exit_code == 0, r.output
    res = json.load(open(tmp_path / "results.json"))
    assert res["settings"]["options"] == {"pf_ode": {"method": "rk4"}, "ddim": {"eta": 1.0}}
    # rk4 is a fixed-step method: pf_ode now follows --steps (4 stages per step)
    assert [(x["solver"], x["steps"], x["nfe"]) for x in res["rows"]][0] == ("pf_ode", 4, 16)
    # DDIM with eta = 1 is DDPM with beta-tilde: the same samples from the same noise
    rows = {x["solver"]: x for x in res["rows"]}
    assert rows["ddim"]["mode_w2"] == pytest.approx(rows["ddpm"]["mode_w2"], rel=1e-3)


# -- files, messages, preview, --help ------------------------------------------------------------------

@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_outputs_honour_the_umask(mask, tmp_path):
    old = os.umask(mask)
    try:
        r = run("compare", "--solvers", "euler", "--steps", 3, "--n", 200, "--quiet", "--out", tmp_path / "c")
        assert r.exit_code == 0, r.output
        r = run("sample", "--steps", 3, "--n", 10, "--quiet", "--out", tmp_path / "s.npz")
        assert r.exit_code == 0, r.output
    finally:
        os.umask(old)
    files = [tmp_path / "s.npz"] + sorted((tmp_path / "c").iterdir())
    assert len(files) == 5
    for f in files:
        assert os.stat(f).st_mode & 0o777 == 0o666 & ~mask, f
    assert os.stat(tmp_path / "c").st_mode & 0o777 == 0o777 & ~mask  # the folder, written whole, too


def test_not_a_torch_file(tmp_path):
    (tmp_path / "my.toml").write_text('[data]\nname = "ring"\n')
    line = one_error_line(run("compare", "--model", tmp_path / "my.toml"), "my.toml' is not a scoresde checkpoint")
    assert "it is not a torch file either (it starts with b'[data]" in line
    (tmp_path / "empty.pt").write_bytes(b"")
    one_error_line(run("sample", "--model", tmp_path / "empty.pt"), "is empty (0 bytes)")


def test_npz_without_x_lists_its_arrays(tmp_path):
    path = tmp_path / "pts.npz"
    np.savez(path, a=np.zeros((4, 2)), b=np.full((4, 2), 0.5))
    one_error_line(run("likelihood", "--model", "oracle:gmm8", "--data", path),
                   f"has no array 'x'; it holds a, b: choose one as {path}:NAME, e.g. {path}:a")
    one_error_line(run("likelihood", "--model", "oracle:gmm8", "--data", f"{path}:c"), "has no array 'c'; it holds a, b")
    r = run("likelihood", "--model", "oracle:gmm8", "--data", f"{path}:b", "--n", 1, "--rtol", 1e-2, "--atol", 1e-2)
    assert r.exit_code == 0 and "n=1" in r.output, r.output
    from scoresde.training.data import load_array
    assert float(load_array(f"{path}:b")[0, 0]) == 0.5
    np.savez(tmp_path / "one.npz", pts=np.ones((3, 2)))
    assert load_array(str(tmp_path / "one.npz")).shape == (3, 2)  # a single array is not ambiguous


def test_too_few_samples_for_metrics_says_so(tmp_path):
    r = run("sample", "--n", 1, "--steps", 3, "--quiet", "--out", tmp_path / "s.npz")
    assert r.exit_code == 0, r.output
    assert "no quality metrics: they need at least 100 samples, got --n 1" in r.output
    assert "std_ratio" not in r.output and "sw2" not in r.output
    r = run("compare", "--solvers", "euler", "--steps", 3, "--n", 50, "--quiet", "--out", tmp_path / "c")
    assert r.exit_code == 0, r.output
    assert "no quality metrics: they need at least 100 samples per run (got --n 50)" in r.output
    assert "best at" not in r.output and "mode_w2" not in r.output


def test_end_of_training_preview_is_announced_or_skipped(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text('[data]\nbatch_size = 32\n[model]\nhidden = 16\nblocks = 1\n[train]\nsteps = 3\nwarmup = 1\n'
                    'ckpt_every = 0\n')
    r = run("train", "--config", conf, "--out", tmp_path / "a")
    assert r.exit_code == 0, r.output
    assert "end of training: sampling a preview" in r.output and "--no-preview skips it" in r.output
    assert "preview " + str(tmp_path / "a" / "previews" / "step_0000003.png") in r.output
    r = run("train", "--config", conf, "--out", tmp_path / "b", "--no-preview")
    assert r.exit_code == 0 and "sampling a preview" not in r.output and "; preview" not in r.output, r.output
    assert not (tmp_path / "b" / "previews").exists()


@pytest.mark.parametrize("args", [["--help"], ["compare", "--help"], ["sample", "--help"], ["schedule", "--help"],
                                  ["train", "--help"]])
def test_help_does_not_import_torch(args):
    code = ("import sys\nfrom scoresde.cli import cli\ntry:\n    cli(%r)\nexcept SystemExit:\n    pass\n"
            "print('torch loaded:', 'torch' in sys.modules)" % args)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert "Usage:" in out.stdout and "torch loaded: False" in out.stdout, out.stdout + out.stderr


def test_compare_plans_many_steps_on_ve():
    """The nfe replay's stand-in score must stay finite where the prior is wide (VE: σ = 50);
    −x alone grew past float32 at 100 steps and stopped `compare --sde ve` before its first run."""
    import torch

    from scoresde.evaluation.compare import plan_runs
    from scoresde.evaluation.resolve import resolve_model
    from scoresde.sde import make_sde

    model = resolve_model("oracle:gmm8", sde=make_sde("ve"))
    x_T = model.sde.prior_sample((4, 2), generator=torch.Generator().manual_seed(0))
    runs = plan_runs(model, ["ddpm", "euler_maruyama", "pc", "heun"], [100, 1000], x_T)
    assert [r.nfe for r in runs] == [100, 1000, 100, 1000, 200, 2000, 200, 2000]


def test_the_solver_listing_agrees_with_the_rule_sample_applies():
    from scoresde import VPSDE

    out = CliRunner().invoke(cli, ["solvers"]).output
    for name in solvers.available():
        line = next(ln for ln in out.splitlines() if ln.split()[:1] == [name])
        by_k = solvers.fewstep.table()["grids"].get("vp", {}).get(name)
        if by_k:  # each few-step grid sample() itself takes on VP is named with its step count
            for k in by_k:
                assert f"{k} steps {solvers.default_grid(name, VPSDE(), k)}" in line, line
    heun_t = next(ln for ln in out.splitlines() if ln.split()[:1] == ["heun_t"])
    assert "others: " + solvers.SOLVERS["heun_t"].grid in heun_t  # the VP / sub-VP fallback is named
