"""The command line: happy paths write what they promise; bad input is one line, exit 2."""
import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from scoresde.cli import cli


def run(*args):
    return CliRunner().invoke(cli, list(args))


def test_compare_writes_table_csv_json_and_pngs(tmp_path):
    out = tmp_path / "cmp"
    r = run("compare", "--solvers", "heun,ddpm,pf_ode", "--steps", "5,10", "--n", "300", "--out", str(out), "--quiet")
    assert r.exit_code == 0, r.output
    assert "solver" in r.output and "best at <= 10 nfe" in r.output
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [(x["solver"], x["steps"]) for x in rows] == [("heun", "5"), ("heun", "10"), ("ddpm", "5"),
                                                         ("ddpm", "10"), ("pf_ode", "")]
    meta = json.load(open(out / "results.json"))
    assert meta["settings"]["seed"] == 0 and meta["settings"]["n"] == 300 and "torch" in meta["versions"]
    from PIL import Image
    for name in ("quality_vs_nfe.png", "samples.png"):
        with Image.open(out / name) as im:
            assert im.size[0] > 200 and im.size[1] > 200
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp")]


def test_sample_writes_npz_and_png(tmp_path):
    out, png = tmp_path / "s.npz", tmp_path / "s.png"
    r = run("sample", "--solver", "dpmpp_2m", "--steps", "15", "--n", "500", "--out", str(out), "--png", str(png),
            "--quiet", "--sde", "ve")
    assert r.exit_code == 0, r.output
    z = np.load(out)
    assert z["x"].shape == (500, 2) and int(z["nfe"]) == 15 and json.loads(str(z["settings"]))["sde"]["name"] == "ve"
    from PIL import Image
    with Image.open(png) as im:
        assert im.size == (500, 500)


def test_likelihood_prints_nats_and_bits(tmp_path):
    np.save(tmp_path / "pts.npy", np.zeros((5, 2), dtype=np.float32))
    r = run("likelihood", "--model", "oracle:gmm8", "--n", "8", "--out", str(tmp_path / "l.json"))
    assert r.exit_code == 0, r.output
    assert "nats per sample" in r.output and "bits/dim" in r.output and "nfe" in r.output
    res = json.load(open(tmp_path / "l.json"))
    assert len(res["logp"]) == 8 and res["nfe"] > 0
    r = run("likelihood", "--model", "oracle:gmm8", "--data", str(tmp_path / "pts.npy"), "--bits", "8")
    assert r.exit_code == 0 and "offset log2(256) - 1 = 7.000" in r.output, r.output
    bad = np.zeros((5, 3), dtype=np.float32)
    np.save(tmp_path / "bad.npy", bad)
    r = run("likelihood", "--model", "oracle:gmm8", "--data", str(tmp_path / "bad.npy"))
    assert r.exit_code == 2 and "the model expects (2,)" in r.output


def test_solvers_lists_everything():
    import solvers
    r = run("solvers")
    assert r.exit_code == 0
    for name in solvers.available() + list(solvers.GRIDS):
        assert name in r.output


@pytest.mark.parametrize("cmd", ["compare", "sample", "solvers", "likelihood"])
def test_help_shows_defaults_and_example(cmd):
    r = run(cmd, "--help")
    assert r.exit_code == 0 and "Example" in r.output
    if cmd != "solvers":
        assert "default:" in r.output


BAD = [
    (["compare", "--solvers", "heun,rk45"], "unknown value 'rk45'; choose from: ddpm"),
    (["compare", "--solvers", ""], "--solvers is empty"),
    (["compare", "--steps", "10,zero"], "'zero' is not a valid int"),
    (["compare", "--steps", "0"], "below the minimum 1"),
    (["compare", "--n", "1"], "--n"),
    (["compare", "--sde", "vpp"], "'vpp' is not one of"),
    (["compare", "--model", "oracle:moons"], "unknown oracle 'moons'"),
    (["compare", "--model", "missing.pt"], "no such checkpoint file"),
    (["compare", "--grid", "cosine"], "'cosine' is not one of"),
    (["compare", "--device", "cuda:7"], "CUDA is not available"),
    (["compare", "--device", "tpu"], "is not a device"),
    (["compare", "--bogus"], "No such option '--bogus'"),
    (["sample", "--solver", "nope"], "unknown solver 'nope'; choose from"),
    (["sample", "--steps", "-3"], "--steps"),
    (["sample", "--steps", "many"], "'many' is not a valid integer"),
    (["sample", "--out", "x.txt"], "must be a .npz file"),
    (["sample", "--solver", "pf_ode", "--grid", "logsnr", "--n", "2"], None),  # valid: must succeed
    (["sample", "--solver", "euler", "--grid", "logsnr", "--steps", "3"], None),
    (["frobnicate"], "No such command 'frobnicate'"),
    (["likelihood"], "give exactly one of --model SPEC or --checkpoint FILE"),
    (["likelihood", "--model", "oracle:gmm8", "--checkpoint", "a.pt"], "give exactly one of"),
    (["likelihood", "--model", "oracle:gmm8", "--eps", "0"], "--eps"),
    (["likelihood", "--model", "oracle:gmm8", "--method", "trace"], "'trace' is not one of"),
    (["likelihood", "--model", "oracle:gmm8", "--data", "nothere.npy"], "no such file"),
    (["likelihood", "--checkpoint", "nothere.pt"], "no such checkpoint file"),
]


@pytest.mark.parametrize("args, message", BAD)
def test_bad_invocations_exit_2_with_one_line(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, args)
    if message is None:
        assert r.exit_code == 0, r.output
        return
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.output
    assert message in lines[0]
    assert "Traceback" not in r.output


def test_real_subprocess(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "scoresde.cli", "sample", "--n", "50", "--steps", "5", "--quiet",
                         "--out", str(tmp_path / "a.npz")], capture_output=True, text=True)
    assert ok.returncode == 0 and (tmp_path / "a.npz").exists(), ok.stderr
    bad = subprocess.run([sys.executable, "-m", "scoresde.cli", "sample", "--solver", "rk45"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "rk45" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_compare_result_is_what_the_cli_prints_and_writes(tmp_path):
    """The library's compare() and `scoresde compare` give the same runs, files and best-per-budget;
    the best run is picked here from the CSV by hand (lowest mode_w2 + off_mode within the budget)."""
    import torch

    from scoresde.evaluation.compare import compare
    from scoresde.evaluation.resolve import resolve_model

    args = ["--solvers", "heun,pf_ode", "--steps", "5,3", "--n", "200", "--threads", "1", "-o", "pf_ode.rtol=1e-3",
            "-o", "pf_ode.atol=1e-3", "--quiet", "--no-plots"]
    r = run("compare", *args, "--out", str(tmp_path / "cli"))
    assert r.exit_code == 0, r.output
    before = torch.get_num_threads()
    res = compare(resolve_model("oracle:gmm8"), ["heun", "pf_ode"], [5, 3], n=200, threads=1, progress=False,
                  options={"pf_ode": {"rtol": 1e-3, "atol": 1e-3}}, label="oracle:gmm8")
    assert torch.get_num_threads() == before
    assert [(x.solver, x.steps) for x in res.rows] == [("heun", 3), ("heun", 5), ("pf_ode", None)]
    assert res.write(str(tmp_path / "lib"), plots=False) == [str(tmp_path / "lib" / f) for f in ("results.csv",
                                                                                                   "results.json")]
    no_wall = lambda rows: [{k: v for k, v in x.items() if k != "wall_s"} for x in rows]  # noqa: E731
    cli_rows, lib_rows = (list(csv.DictReader(open(tmp_path / d / "results.csv"))) for d in ("cli", "lib"))
    assert no_wall(cli_rows) == no_wall(lib_rows) and cli_rows[2]["steps"] == ""
    cli_json, lib_json = (json.load(open(tmp_path / d / "results.json")) for d in ("cli", "lib"))
    assert lib_json["settings"] == cli_json["settings"] and lib_json["settings"]["steps"] == [5, 3]
    assert no_wall(lib_json["rows"]) == no_wall(cli_json["rows"])
    # heun uses 2 evaluations per step, so no planned run fits 5 nfe: the library says None, and the
    # report leaves out a budget below its cheapest run rather than print "no run fits"
    cheapest = min(int(x["nfe"]) for x in cli_rows)
    assert cheapest > 5 and res.best[5] is None and "best at <= 5 nfe" not in r.output
    assert "no run fits" not in r.output and "ranked by mode_w2 + off_mode = " in r.output
    within = [x for x in cli_rows if int(x["nfe"]) <= 10]
    hand = min(within, key=lambda x: float(x["mode_w2"]) + float(x["off_mode"]))
    assert (res.best[10].solver, str(res.best[10].steps)) == (hand["solver"], hand["steps"])
    assert f"best at <= 10 nfe: {hand['solver']} ({hand['grid']} grid, {hand['steps']} steps" in r.output
    assert f"ranked by mode_w2 + off_mode = {float(hand['mode_w2']) + float(hand['off_mode']):.4g};" in r.output
    assert res.band["metric"] == "mode_w2" and res.band == cli_json["perfect_sampler"]


def test_an_interrupted_compare_keeps_its_finished_runs_beside_the_unwritten_folder(tmp_path, monkeypatch):
    import solvers

    real, calls = solvers.sample, []

    def interrupted_at_the_third(*a, **k):
        if k.get("callback") is not None:  # a real run (the plan replays the grids without a progress callback)
            calls.append(k.get("steps"))
            if len(calls) == 3:
                raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(solvers, "sample", interrupted_at_the_third)
    out = tmp_path / "cmp"
    r = CliRunner().invoke(cli, ["compare", "--solvers", "ddim", "--steps", "3,5,8", "--n", "200", "--no-plots",
                                 "--quiet", "--out", str(out)])
    assert r.exit_code == 130 and not out.exists(), r.output
    rows = list(csv.DictReader(open(str(out) + ".partial.csv")))
    assert [(x["solver"], x["steps"]) for x in rows] == [("ddim", "3"), ("ddim", "5")]
    assert "after 2 of 3 runs" in r.output and "cmp.partial.csv" in r.output
    assert "Traceback" not in r.output
