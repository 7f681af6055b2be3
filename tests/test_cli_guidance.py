"""`sample --class --guidance` and `compare --guidance` as a sweep; every bad input one line, exit 2."""
import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from scoresde.cli import cli

pytestmark = pytest.mark.usefixtures("one_thread")


def run(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


def test_sample_a_class_with_guidance(tmp_path):
    r = run("sample", "--model", "oracle:gmm8c4", "--class", "arc2", "--guidance", "1.5", "--solver", "dpmpp_2m",
            "--steps", "20", "--n", "400", "--out", tmp_path / "s.npz", "--quiet")
    assert r.exit_code == 0, r.output
    assert "class 'arc2' at guidance w = 1.5" in r.output and "class_acc 1" in r.output
    z = np.load(tmp_path / "s.npz")
    settings = json.loads(str(z["settings"]))
    assert (settings["class"], settings["class_name"], settings["guidance"]) == (2, "arc2", 1.5)
    assert int(z["nfe"]) == 20  # the guided score is one evaluation per call
    # by index, the same samples
    r2 = run("sample", "--model", "oracle:gmm8c4", "--class", "2", "--guidance", "1.5", "--solver", "dpmpp_2m",
             "--steps", "20", "--n", "400", "--out", tmp_path / "t.npz", "--quiet")
    assert r2.exit_code == 0 and np.array_equal(np.load(tmp_path / "t.npz")["x"], z["x"])


@pytest.mark.parametrize("args, message", [
    (["--model", "oracle:gmm8c4", "--class", "cat"], "--class cat: class 'cat' is not one of the model's classes "
                                                      "(arc0, arc1, arc2, arc3)"),
    (["--model", "oracle:gmm8c4", "--class", "4"], "--class 4: class index 4 is out of range: the model has 4 "
                                                    "classes, indices 0…3"),
    (["--model", "oracle:gmm8c4", "--class", "-1"], "class index -1 is out of range"),
    (["--model", "oracle:gmm8", "--guidance", "1"], "--guidance 1.0: model oracle:gmm8 is unconditional"),
    (["--model", "oracle:gaussian", "--class", "0"], "--class 0: model oracle:gaussian is unconditional"),
    (["--model", "oracle:gmm8c4", "--guidance", "nan"], "--guidance"),
])
def test_sample_bad_class_input_is_one_line_and_exit_2(tmp_path, args, message):
    r = run("sample", *args, "--n", "10", "--out", tmp_path / "x.npz")
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1 or "Usage" in r.output  # click's own usage line for nan


def test_compare_guidance_sweep_writes_a_table_csv_and_plot(tmp_path):
    out = tmp_path / "sweep"
    r = run("compare", "--model", "oracle:gmm8c4", "--class", "arc1", "--guidance", "0,1,3",
            "--solvers", "heun,dpmpp_2m", "--steps", "10", "--n", "200", "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    assert "class_acc" in r.output and "diversity" in r.output
    rows = list(csv.DictReader(open(out / "guidance.csv")))
    assert [(row["w"], row["solver"]) for row in rows] == [(w, s) for w in ("0.0", "1.0", "3.0")
                                                          for s in ("heun", "dpmpp_2m")]
    assert all(float(row["class_acc"]) > 0.99 for row in rows)
    w2 = {row["w"]: float(row["mode_w2"]) for row in rows if row["solver"] == "dpmpp_2m"}
    assert w2["0.0"] < w2["1.0"] < w2["3.0"]  # guidance pulls samples off the modes' centres
    assert (out / "guidance.png").is_file() and (out / "w1" / "results.csv").is_file()


@pytest.mark.parametrize("args, message", [
    (["--model", "oracle:gmm8", "--guidance", "0,1"], "--guidance 0,1: model oracle:gmm8 is unconditional"),
    (["--model", "oracle:gmm8c4", "--guidance", "0,x"], "--guidance: 'x' is not a valid float"),
    (["--model", "oracle:gmm8c4", "--guidance", "1,1"], "--guidance 1,1: a weight is repeated"),
    (["--model", "oracle:gmm8c4", "--guidance", "0,1", "--class", "zebra"], "--class zebra: class 'zebra' is not"),
])
def test_compare_bad_guidance_input_is_one_line_and_exit_2(tmp_path, args, message):
    r = run("compare", *args, "--steps", "5", "--n", "100", "--out", tmp_path / "c")
    assert r.exit_code == 2, r.output
    assert message in r.output and len(r.output.strip().splitlines()) == 1


def test_bad_labels_and_unlabelled_data_in_train_are_one_line(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((8, 2), np.float32), y=np.array([0, 1, 2, 3, 0, 1, 2, -3]))
    (tmp_path / "a.toml").write_text(f'[data]\nname = "file"\npath = "{tmp_path / "d.npz"}"\n'
                                     f'[model]\nconditional = true\n')
    r = run("train", "--config", tmp_path / "a.toml", "--out", tmp_path / "ra")
    assert r.exit_code == 2 and "class labels must lie in 0…C−1, got -3" in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_likelihood_of_a_class_is_the_conditional_density():
    r = run("likelihood", "--model", "oracle:gmm8c4", "--class", "arc2", "--n", "16", "--quiet")
    assert r.exit_code == 0, r.output
    ode = float(r.output.split("log p ")[1].split()[0])
    exact = float(r.output.split("exact log p_0 (oracle)")[1].split(";")[0])
    assert abs(ode - exact) < 0.05 and exact > -1.0  # the class's own draws, under log p(x | arc2)
    r = run("likelihood", "--model", "oracle:gmm8", "--class", "1", "--n", "4")
    assert r.exit_code == 2 and "--class 1: model oracle:gmm8 is unconditional" in r.output
