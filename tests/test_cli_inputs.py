"""Input errors come first: a bad name, number or file is reported before the output check and
before torch is imported (so in well under a second), and an empty output folder is accepted."""
import json
import subprocess
import sys
import textwrap
import time

import pytest
from click.testing import CliRunner

from scoresde.cli import cli
from scoresde.cli._common import GRID_NAMES, SOLVER_NAMES


def test_the_static_name_lists_match_the_solvers_package():
    import solvers

    assert list(SOLVER_NAMES) == solvers.available()
    assert list(GRID_NAMES) == list(solvers.GRID_NAMES)


# a fresh interpreter each, since this test process has torch loaded already
PROBE = textwrap.dedent("""
    import json, sys
    from click.testing import CliRunner
    from scoresde.cli import cli
    r = CliRunner().invoke(cli, sys.argv[1:])
    print(json.dumps({"code": r.exit_code, "output": r.output, "torch": "torch" in sys.modules}))
""")


@pytest.mark.parametrize("args, message", [
    (["compare", "--solvers", "dpmpp2m"], "--solvers: unknown value 'dpmpp2m'; choose from: ddpm"),
    (["compare", "--steps", "0"], "--steps: 0 is below the minimum 1"),
    (["compare", "--grid", "uniformm"], "'uniformm' is not one of 'tuned'"),
    (["compare", "--model", "missing.pt"], "--model 'missing.pt': no such checkpoint file"),
    (["compare", "--features", "missing.pt"], "--features 'missing.pt': no such file"),
    (["sample", "--solver", "hune"], "--solver: unknown solver 'hune'; choose from: ddpm"),
    (["sample", "--model", "missing.pt"], "--model 'missing.pt': no such checkpoint file"),
    (["schedule", "--solver", "hune"], "--solver: unknown solver 'hune'"),
    (["likelihood", "--checkpoint", "missing.pt"], "--checkpoint 'missing.pt': no such checkpoint file"),
])
def test_input_errors_come_before_the_output_check_and_without_torch(args, message, tmp_path):
    if args[0] == "compare":  # a folder holding an earlier run
        out = tmp_path / "taken"
        out.mkdir()
        (out / "results.csv").write_text("an earlier run\n")
    else:  # a file from an earlier run
        out = tmp_path / ("taken.npz" if args[0] == "sample" else "taken.json")
        out.write_text("an earlier run")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PROBE, *args, "--out", str(out)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    wall = time.perf_counter() - t0
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["code"] == 2 and message in res["output"], res["output"]
    assert "already exists" not in res["output"]
    assert not res["torch"], "the input check imported torch"
    assert wall < 10, f"an input error took {wall:.1f} s"  # about 0.3 s idle; generous for a loaded machine


@pytest.mark.parametrize("args, message", [
    (["compare", "--model", "runs/x"], "Error: --model 'runs/x' is a folder, not a checkpoint file: give a checkpoint "
                                       "file such as runs/x/checkpoint.pt; or use oracle:gmm8"),
    (["sample", "--model", "bare"], "Error: --model 'bare' is a folder, not a checkpoint file: it holds no .pt file; "
                                    "give a checkpoint file (a run folder's is bare/checkpoint.pt)"),
    (["likelihood", "--checkpoint", "empty.pt"], "Error: --checkpoint 'empty.pt' is empty (0 bytes), not a checkpoint "
                                                 "file: give a checkpoint written by `scoresde train`"),
    (["likelihood", "--model", "oracle:gmm8", "--eps", "nan"],
     "Error: Invalid value for '--eps': nan is not a finite number; give a finite number in (0, 1)"),
    (["likelihood", "--model", "oracle:gmm8", "--rtol", "-1"],
     "Error: Invalid value for '--rtol': -1 is outside (0, 1); give a finite number in (0, 1)"),
    (["likelihood", "--model", "oracle:gmm8", "--atol", "1"],
     "Error: Invalid value for '--atol': 1 is outside (0, 1); give a finite number in (0, 1)"),
    (["likelihood", "--model", "oracle:gmm8", "--atol", "tiny"],
     "Error: Invalid value for '--atol': 'tiny' is not a number; give a finite number in (0, 1)"),
])
def test_each_refusal_names_the_value_and_what_is_allowed(args, message, tmp_path):
    (tmp_path / "runs" / "x").mkdir(parents=True)
    (tmp_path / "runs" / "x" / "checkpoint.pt").write_bytes(b"x")
    (tmp_path / "bare").mkdir()
    (tmp_path / "empty.pt").write_bytes(b"")
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    lines = res["output"].strip().splitlines()
    assert res["code"] == 2 and len(lines) == 1 and lines[0].startswith(message), res["output"]
    assert not res["torch"], "the input check imported torch"


def test_compare_writes_into_an_empty_existing_folder_and_refuses_a_full_one(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    args = ["compare", "--solvers", "ddim", "--steps", "3", "--n", "50", "--no-plots", "--quiet", "--threads", "1",
            "--out", str(out)]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert (out / "results.csv").exists()
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2 and "already exists; pass --overwrite" in r.output


def test_sample_refuses_an_empty_folder_named_as_its_output_file(tmp_path):
    # an empty *folder* named like the output file is still not a file to write over
    out = tmp_path / "s.npz"
    out.mkdir()
    r = CliRunner().invoke(cli, ["sample", "--n", "10", "--steps", "2", "--quiet", "--out", str(out)])
    assert r.exit_code == 2 and "is a directory" in r.output and "Traceback" not in r.output


def test_bits_that_contradict_the_detected_levels_are_refused_naming_both():
    r = CliRunner().invoke(cli, ["likelihood", "--model", "oracle:gmm8", "--data", "digits-test", "--bits", "4",
                                 "--n", "4"])
    assert r.exit_code == 2
    assert "--bits 4 means 16 levels, but the data digits-test have 17 levels (detected)" in r.output, r.output
    assert "Traceback" not in r.output


def test_likelihood_help_example_for_digits_leaves_the_levels_to_detection():
    r = CliRunner().invoke(cli, ["likelihood", "--help"])
    example = next(ln for ln in r.output.splitlines() if "digits/checkpoint.pt" in ln)
    assert "--bits" not in example
