"""Reliability: nothing lost, nothing silently wrong (issue 11's battery, one case per item).

1. one run per folder          2. checkpoint integrity (fuzz)     3. one-line errors, exit 2
4. config and CLI ranges       5. interrupt-safe training          6. no leftovers or duplicates
7. compare/sample outputs whole, replaced only with --overwrite   8. progress that moves
"""
import io
import json
import os
import pickle
import random
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from scoresde.training import checkpoint as ckmod
from scoresde.training.checkpoint import CheckpointError, load_checkpoint, load_score_model
from scoresde.cli import cli
from scoresde.training.config import RANGES, Config, ConfigError, from_dict
from scoresde.training.trainer import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"data": {"name": "ring", "batch_size": 16}, "model": {"hidden": 16, "blocks": 1},
        "train": {"steps": 3, "warmup": 2, "ckpt_every": 0, "log_every": 1,
                  "preview_every": 10 ** 6}}  # no preview PNGs: they would dominate these tests' time


def tiny(**train) -> dict:
    return {**TINY, "train": {**TINY["train"], **train}}


def toml(raw: dict) -> str:
    return "".join(f"[{sec}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in body.items()) for sec, body in raw.items())


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(r, code=2):
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == code, r.output
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    return lines[0]


def log_steps(folder):
    return [json.loads(ln) for ln in open(os.path.join(folder, "log.jsonl"))]


def start_trainer(tmp_path, raw, out, *extra):
    conf = tmp_path / "run.toml"
    conf.write_text(toml(raw))
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return conf, subprocess.Popen([sys.executable, "-m", "scoresde.cli", "train", "--config", str(conf), "--out",
                                   str(out), "--quiet", "--threads", "1", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, cwd=ROOT, env=env)


def train_in_process(raw: dict, folder) -> list[float]:
    """The uninterrupted run's losses, on the one thread start_trainer's runs use: a CPU run's
    losses depend on the thread count in their last bits."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return Trainer(from_dict(raw), str(folder), progress=False).train()
    finally:
        torch.set_num_threads(before)


def wait_for(cond, proc, timeout=120.0, poll=0.02):
    t0 = time.time()
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"the trainer ended early: {proc.communicate()}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(poll)


def logged(out, k):
    def cond():
        try:
            return sum(1 for _ in open(out / "log.jsonl")) >= k
        except FileNotFoundError:
            return False
    return cond


# -- 2. checkpoint integrity: ≥ 500 random and damaged files, all refused in one line ----------------

@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ck")
    Trainer(from_dict(tiny(steps=2)), str(folder), progress=False).train()
    return str(folder / "checkpoint.pt")


def _signed(state) -> bytes:
    """A payload with a valid header and checksum: only structural validation can refuse it."""
    buf = io.BytesIO()
    if isinstance(state, bytes):
        buf.write(state)
    else:
        torch.save(state, buf)
    payload = buf.getvalue()
    import hashlib
    return ckmod._header(ckmod.VERSION, hashlib.sha256(payload).hexdigest(), len(payload)) + payload


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def _structural(good: dict) -> dict:
    """Re-signed payloads with one thing wrong each."""
    import copy
    from scoresde.training.build import build_score_model
    wide = build_score_model(from_dict({**tiny(), "model": {"hidden": 32, "blocks": 1}}), (2,)).net.state_dict()
    k0 = next(iter(good["ema"]))
    cases = {}

    def case(name, **changes):
        st = copy.deepcopy(good)
        for key, val in changes.items():
            if val is KeyError:
                del st[key]
            else:
                st[key] = val(st) if callable(val) else val
        cases[name] = st

    case("ema_list", ema=lambda s: list(s["ema"].values()))
    case("config_string", config="[train]\nsteps = 3")
    case("config_bad_value", config=lambda s: {**s["config"], "train": {**s["config"]["train"], "lr": float("nan")}})
    case("config_unknown_key", config=lambda s: {**s["config"], "optim": {}})
    case("rng_garbage", rng="xyz")
    case("rng_wrong_dtype", rng=lambda s: [[r.float() for r in s["rng"][0]]])
    case("torch_rng_short", torch_rng=torch.zeros(7, dtype=torch.uint8))
    case("step_negative", step=-5)
    case("step_string", step="10")
    case("shape_bad", shape=[0])
    case("shape_string", shape="2")
    case("other_architecture", model=wide, ema=wide)
    case("missing_param", ema=lambda s: {k: v for k, v in s["ema"].items() if k != k0})
    case("extra_param", model=lambda s: {**s["model"], "extra.weight": torch.zeros(3)})
    case("wrong_shape", ema=lambda s: {**s["ema"], k0: torch.zeros(*s["ema"][k0].shape, 2)})
    case("wrong_dtype", ema=lambda s: {**s["ema"], k0: s["ema"][k0].double()})
    case("nan_weights", model=lambda s: {**s["model"], k0: torch.full_like(s["model"][k0], float("nan"))})
    case("optimizer_list", optimizer=[1, 2])
    case("optimizer_bad_state", optimizer=lambda s: {**s["optimizer"], "state": {0: {"exp_avg": torch.zeros(99)}}})
    case("optimizer_bad_lr", optimizer=lambda s: {**s["optimizer"], "param_groups": [
        {**g, "lr": "fast"} for g in s["optimizer"]["param_groups"]]})
    case("optimizer_few_params", optimizer=lambda s: {**s["optimizer"], "param_groups": [
        {**g, "params": g["params"][:1]} for g in s["optimizer"]["param_groups"]]})
    case("no_format", format=KeyError)
    case("old_version", version=1)
    for key in ckmod.REQUIRED:
        case(f"missing_{key}", **{key: KeyError})
    cases["not_a_dict"] = [1, 2, 3]
    cases["a_tensor"] = torch.zeros(3)
    return cases


def damaged_files(good_path: str, folder, rng: random.Random) -> dict:
    """name -> bytes: random files, damaged copies, truncations, foreign files, re-signed bad payloads."""
    blob = open(good_path, "rb").read()
    head_len = blob.index(b"\n") + 1
    files = {"empty": b"", "newline": b"\n", "header_only": blob[:head_len], "header_no_newline": blob[:head_len - 1]}
    for i in range(160):  # random bytes, some behind a real-looking header
        junk = rng.randbytes(rng.choice([1, 7, 100, 4096, rng.randrange(1, 5000)]))
        files[f"random_{i}"] = (blob[:head_len] + junk) if i % 3 == 0 else junk
    for i in range(210):  # overwrite 1-256 bytes anywhere (XOR with non-zero bytes: always a change)
        b = bytearray(blob)
        n = rng.choice([1, 1, 8, 64, 256])
        at = rng.randrange(0, len(b) - n) if i % 4 else rng.randrange(0, head_len)
        for j in range(at, min(at + n, len(b))):
            b[j] ^= rng.randrange(1, 256)
        files[f"overwrite_{i}"] = bytes(b)
    for i in range(60):
        files[f"truncate_{i}"] = blob[:rng.randrange(0, len(blob))]
    for i in range(20):
        files[f"append_{i}"] = blob + rng.randbytes(rng.randrange(1, 300))
    for i in range(20):  # two files spliced
        at = rng.randrange(head_len, len(blob))
        files[f"splice_{i}"] = blob[:at] + blob[at + 1:] + b"\0"
    good = torch.load(io.BytesIO(blob[head_len:]), weights_only=True)
    for name, state in _structural(good).items():
        files[f"signed_{name}"] = _signed(state)
    buf = io.BytesIO()
    torch.save(good, buf)
    files["plain_torch_v1"] = buf.getvalue()
    buf = io.BytesIO()
    torch.save({"state_dict": {"w": torch.zeros(2)}}, buf)
    files["foreign_torch"] = buf.getvalue()
    files["malicious_pickle"] = pickle.dumps(_Evil())
    files["signed_malicious_pickle"] = _signed(pickle.dumps({"format": "scoresde-checkpoint", "x": _Evil()}, protocol=2))
    files["npz"] = b"PK\x03\x04" + rng.randbytes(200)
    for name, data in files.items():
        (folder / f"{name}.pt").write_bytes(data)
    return files


def test_fuzz_500_damaged_checkpoints_are_refused_in_one_line(tiny_ckpt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    files = damaged_files(tiny_ckpt, tmp_path, random.Random(0))
    assert len(files) >= 500
    outcomes = {"refused": 0}
    for i, name in enumerate(sorted(files)):
        path = str(tmp_path / f"{name}.pt")
        loader = load_score_model if i % 10 == 0 else load_checkpoint
        with pytest.raises(CheckpointError) as err:
            loader(path)
        msg = str(err.value)
        assert "\n" not in msg and path in msg and len(msg) < 400, (name, msg)
        outcomes["refused"] += 1
    assert outcomes["refused"] == len(files)
    assert not os.path.exists(tmp_path / "pwned.txt")
    load_checkpoint(tiny_ckpt)  # the undamaged file still loads
    # a few through the CLI: sample, likelihood, and train --resume
    for name in ("empty", "overwrite_3", "truncate_5", "signed_ema_list", "signed_other_architecture",
                 "signed_rng_garbage", "plain_torch_v1", "random_1"):
        path = tmp_path / f"{name}.pt"
        said = "--model '{}' is empty (0 bytes)" if name == "empty" else "checkpoint '{}'"  # 0 bytes: before torch
        assert one_line_error(run("sample", "--model", path, "--n", 4, "--out", tmp_path / "s.npz")).startswith(
            "Error: " + said.format(path))
        assert ("Error: --checkpoint" if name == "empty" else "Error: checkpoint") in one_line_error(
            run("likelihood", "--checkpoint", path, "--n", 2))
    run_dir = tmp_path / "resume"
    run_dir.mkdir()
    (run_dir / "checkpoint.pt").write_bytes(files["overwrite_7"])
    (tmp_path / "c.toml").write_text(toml(tiny()))
    assert "is damaged" in one_line_error(run("train", "--config", tmp_path / "c.toml", "--out", run_dir, "--resume"))


def test_damaged_ema_bytes_are_caught_where_torch_would_load_them(tiny_ckpt, tmp_path):
    """The issue's case: bytes overwritten inside a tensor keep the zip readable (torch.load
    does not check CRCs); the checksum refuses the file."""
    blob = bytearray(open(tiny_ckpt, "rb").read())
    head = blob.index(b"\n") + 1
    good = torch.load(io.BytesIO(bytes(blob[head:])), weights_only=True)
    w = good["ema"][next(k for k, v in good["ema"].items() if v.numel() >= 64)]
    raw = w.numpy().tobytes()
    at = bytes(blob).index(raw[:64])
    blob[at:at + 64] = bytes(64)
    torch.load(io.BytesIO(bytes(blob[head:])), weights_only=True)  # torch alone accepts it
    (tmp_path / "x.pt").write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="is damaged: the sha256"):
        load_checkpoint(str(tmp_path / "x.pt"))


# -- 1. one run per folder; 5. interrupts ------------------------------------------------------------

def test_two_concurrent_trainers_second_exits_2_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    conf, proc = start_trainer(tmp_path, tiny(steps=100000), out)
    try:
        wait_for(logged(out, 1), proc)
        other = tmp_path / "other.toml"
        other.write_text(toml(tiny(steps=100000, seed=1)))
        for args in (["--config", other], ["--config", conf, "--resume"]):
            line = one_line_error(run("train", "--out", out, "--quiet", *args))
            assert f"is in use by pid {proc.pid} on host {socket.gethostname()}" in line, line
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "SIGTERM at step" in err, err
    step = load_checkpoint(str(out / "checkpoint.pt"))["step"]
    assert [r["step"] for r in log_steps(out)] == list(range(1, step + 1))
    assert not os.path.exists(out / ".lock")


def test_sigint_then_resume_reproduces_the_uninterrupted_losses_bit_for_bit(tmp_path):
    out = tmp_path / "run"
    conf, proc = start_trainer(tmp_path, tiny(steps=100000), out)
    try:
        wait_for(logged(out, 5), proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    k = load_checkpoint(str(out / "checkpoint.pt"))["step"]
    assert err.strip() == f"Interrupted: SIGINT at step {k}: the checkpoint {out / 'checkpoint.pt'} holds steps " \
                          f"1-{k}; continue with --resume"
    r = run("train", "--config", conf, "--out", out, "--resume", "--steps", k + 6, "--no-preview")
    assert r.exit_code == 0 and f"trained steps {k} -> {k + 6}" in r.output, r.output
    assert "threads: 1 (auto: the count the checkpoint was trained with" in r.output, r.output
    full = train_in_process(tiny(steps=k + 6), tmp_path / "full")
    logged_losses = [row["loss"] for row in log_steps(out)]
    assert [row["step"] for row in log_steps(out)] == list(range(1, k + 7))
    assert logged_losses == full  # json round-trips floats exactly: bit for bit


def test_kill_9_during_a_checkpoint_write_then_clean_resume(tmp_path, caplog):
    """Checkpointed every step (writing dominates a step): killed while a .tmp file is being written."""
    raw = {**tiny(steps=100000, ckpt_every=1), "model": {"hidden": 64, "blocks": 2}}
    out = tmp_path / "run"
    conf, proc = start_trainer(tmp_path, raw, out)
    try:
        wait_for(logged(out, 2), proc)  # step 1 is checkpointed
        writing = lambda: any(n.startswith(".tmp-") for n in os.listdir(out))  # noqa: E731
        for _ in range(100):  # freeze it, and keep it frozen only if a write is under way
            wait_for(writing, proc, poll=0.0005)
            proc.send_signal(signal.SIGSTOP)
            if writing():
                break
            proc.send_signal(signal.SIGCONT)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert any(n.startswith(".tmp-") for n in os.listdir(out)) and os.path.exists(out / ".lock")
    k = load_checkpoint(str(out / "checkpoint.pt"))["step"]
    assert log_steps(out)[-1]["step"] >= k  # steps after the checkpoint were logged, and will be redone
    r = CliRunner().invoke(cli, ["train", "--config", str(conf), "--out", str(out), "--resume", "--steps",
                                 str(k + 3), "--quiet"])
    assert r.exit_code == 0, r.output
    assert "took over a stale lock" in caplog.text and f"pid {proc.pid}" in caplog.text, caplog.text
    assert "removed 1 temp file" in caplog.text, caplog.text
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")] and not os.path.exists(out / ".lock")
    rows = log_steps(out)
    assert [row["step"] for row in rows] == list(range(1, k + 4))  # no step twice
    full = train_in_process({**raw, "train": {**raw["train"], "steps": k + 3, "ckpt_every": 0}}, tmp_path / "full")
    assert [row["loss"] for row in rows] == full


def double_sigint(tmp_path, during_write: bool, gap: float = 0.06):
    """Start a trainer, SIGINT it, and SIGINT it again `gap` s later or (during_write) as soon as
    the interrupt's checkpoint has a temp file (a larger network makes that write take a while).
    Returns (exit code, stderr, run folder)."""
    out = tmp_path / "run"
    raw = tiny(steps=100000)
    if during_write:
        raw = {**raw, "model": {"hidden": 256, "blocks": 4}}
    _, proc = start_trainer(tmp_path, raw, out)
    try:
        wait_for(logged(out, 3), proc)
        proc.send_signal(signal.SIGINT)
        if during_write:
            t0 = time.time()
            while not any(n.startswith(".tmp-") for n in os.listdir(out)) and time.time() - t0 < 20 \
                    and proc.poll() is None:
                time.sleep(0.0005)
        else:
            time.sleep(gap)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return proc.returncode, err, out


def check_double_sigint(rc, err, out):
    assert rc == 130, (rc, err)
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert err.strip().startswith("Interrupted: ") and len(err.strip().splitlines()) == 1, err
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")], os.listdir(out)
    assert not os.path.exists(out / ".lock")
    step = load_checkpoint(str(out / "checkpoint.pt"))["step"]  # whole, and it says which steps it holds
    assert f"holds steps 1-{step};" in err, err


@pytest.mark.parametrize("during_write", [False, True])
def test_a_second_sigint_exits_130_without_a_traceback_or_a_temp_file(tmp_path, during_write):
    """One try each of the two timings; test_double_sigint_20_tries repeats them (slow)."""
    check_double_sigint(*double_sigint(tmp_path, during_write))


@pytest.mark.slow
@pytest.mark.parametrize("during_write", [False, True])
def test_double_sigint_20_tries(tmp_path, during_write):
    rng = random.Random(1)
    for i in range(20):
        (tmp_path / str(i)).mkdir()
        check_double_sigint(*double_sigint(tmp_path / str(i), during_write, gap=rng.uniform(0.05, 0.08)))


def test_a_second_sigint_during_the_checkpoint_write_waits_for_it(tmp_path, monkeypatch):
    """In-process and deterministic: the first SIGINT lands in step 3, the second inside the
    interrupt's checkpoint write; the write finishes, no temp file is left, and the message names
    the checkpoint's steps."""
    import scoresde.training.trainer as trmod

    tr = Trainer(from_dict(tiny(steps=100000)), str(tmp_path), progress=False)
    real_step, real_save = tr.train_step, trmod.save_checkpoint

    def step():
        if tr.step == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real_step()

    def save(path, state):
        with ckmod.atomic_path(str(tmp_path / "probe.txt")) as tmp:  # a temp file exists now
            os.kill(os.getpid(), signal.SIGINT)
            open(tmp, "w").write("written after the signal")
        real_save(path, state)

    monkeypatch.setattr(tr, "train_step", step)
    monkeypatch.setattr(trmod, "save_checkpoint", save)
    with pytest.raises(trmod.TrainingInterrupted) as err:
        tr.train()
    assert str(err.value) == (f"a second SIGINT at step 3 stopped training at once: the checkpoint "
                              f"{tmp_path / 'checkpoint.pt'} holds steps 1-3; continue with --resume")
    assert load_checkpoint(str(tmp_path / "checkpoint.pt"))["step"] == 3
    assert (tmp_path / "probe.txt").read_text() == "written after the signal"
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt", "log.jsonl", "probe.txt"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_atomic_writes_hold_a_signal_until_the_temp_file_is_gone(tmp_path):
    from scoresde import _io

    target = tmp_path / "f.txt"
    with pytest.raises(KeyboardInterrupt):
        with _io.atomic_path(str(target)) as tmp:
            os.kill(os.getpid(), signal.SIGINT)
            open(tmp, "w").write("whole")  # still runs: the signal waits for the block's end
    assert target.read_text() == "whole" and os.listdir(tmp_path) == ["f.txt"]
    with pytest.raises(KeyboardInterrupt):  # raised inside the block: the temp file is removed
        with _io.atomic_path(str(tmp_path / "g.txt")) as tmp:
            open(tmp, "w").write("half")
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        with _io.atomic_dir(str(tmp_path / "d")) as tmp:
            open(os.path.join(tmp, "a"), "w").write("x")
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == ["f.txt"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_stale_lock_is_taken_over_and_a_live_one_in_this_process_refuses(tmp_path, caplog):
    cfg = from_dict(tiny())
    (tmp_path / ".lock").write_text("pid 999999 on host elsewhere since yesterday\n")
    tr = Trainer(cfg, str(tmp_path), progress=False)
    assert "took over a stale lock (pid 999999 on host elsewhere" in caplog.text
    with pytest.raises(ValueError, match=f"in use by pid {os.getpid()}"):
        Trainer(cfg, str(tmp_path), progress=False, resume=True)
    tr.train()
    assert not os.path.exists(tmp_path / ".lock")
    Trainer(cfg, str(tmp_path), progress=False, resume=True).close()  # free again after train()


def test_fresh_start_replaces_a_lost_runs_log(tmp_path):
    (tmp_path / "log.jsonl").write_text('{"step": 50, "loss": 1.0}\n{"step": 100, "lo')
    Trainer(from_dict(tiny(steps=3)), str(tmp_path), progress=False).train()
    assert [r["step"] for r in log_steps(tmp_path)] == [1, 2, 3]


# -- 3./4. one-line errors and ranges ------------------------------------------------------------------

def test_every_numeric_config_key_has_a_range():
    import dataclasses
    cfg = Config()
    for sec in dataclasses.fields(cfg):
        for f in dataclasses.fields(getattr(cfg, sec.name)):
            value = getattr(getattr(cfg, sec.name), f.name)
            if isinstance(value, (int, float, list)) and not isinstance(value, bool):
                assert (sec.name, f.name) in RANGES, f"{sec.name}.{f.name} has no allowed range"


def _outside(rng):
    lo, hi, lo_open, hi_open = rng[:4]
    return [lo if lo_open else lo - 1] + ([hi if hi_open else hi + 1] if hi is not None else [])


@pytest.mark.parametrize("key", sorted(RANGES))
def test_each_range_refuses_its_edges_by_name(key):
    sec, name = key
    default = getattr(getattr(Config(), sec), name)
    bad = _outside(RANGES[key]) + ([float("inf"), float("nan")] if isinstance(default, float) else [])
    for v in bad:
        v = [v] if isinstance(default, list) else (float(v) if isinstance(default, float) else int(v))
        with pytest.raises(ConfigError, match=rf"{sec}\.{name} must be"):
            from_dict({sec: {name: v}})


@pytest.mark.parametrize("raw, match", [
    ({"train": {"t_eps": 1.5}}, r"train.t_eps must be finite and in \(0, 1\)"),
    ({"model": {"hidden": 0}}, "model.hidden must be >= 1"),
    ({"train": {"lr": float("inf")}}, "train.lr must be finite and > 0"),
    ({"train": {"lr": float("nan")}}, "train.lr must be finite and > 0, got nan"),
    ({"train": {"log_every": 0}}, "train.log_every must be >= 1"),
    ({"sde": {"sigma_min": 60.0}}, "sde.sigma_min must be < sde.sigma_max"),
])
def test_meaningless_settings_are_refused(raw, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(raw)


def test_cli_errors_name_the_option_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "adir").mkdir()
    np.savez(tmp_path / "empty.npz")
    np.save(tmp_path / "zero.npy", np.zeros((0, 2)))
    np.save(tmp_path / "str.npy", np.array([["a", "b"]]))
    cases = [
        (["sample", "--model", "adir"], "--model 'adir' is a folder"),
        (["likelihood", "--checkpoint", "nope.pt"], "--checkpoint 'nope.pt': no such checkpoint file"),
        (["sample", "--seed", str(2 ** 64)], "--seed"),
        (["compare", "--seed", "-1"], "--seed"),
        (["likelihood", "--model", "oracle:gmm8", "--rtol", "inf"], "--rtol"),
        (["likelihood", "--model", "oracle:gmm8", "--atol", "nan"], "--atol"),
        (["likelihood", "--model", "oracle:gmm8", "--rtol", "1.5"], "--rtol"),
        (["likelihood", "--model", "oracle:gmm8", "--data", "empty.npz"], "holds no arrays"),
        (["likelihood", "--model", "oracle:gmm8", "--data", "zero.npy"], "got (0, 2)"),
        (["likelihood", "--model", "oracle:gmm8", "--data", "str.npy"], "need a numeric array"),
    ]
    for args, expected in cases:
        line = one_line_error(run(*args))
        assert expected in line, (args, line)
    assert "--model" not in one_line_error(run("likelihood", "--checkpoint", "nope.pt"))
    big = run("sample", "--seed", str(2 ** 64 - 1), "--n", 4, "--steps", 2, "--quiet", "--out", "big.npz")
    assert big.exit_code == 0, big.output


def test_config_errors_and_a_diverging_loss_are_one_line_through_train(tmp_path):
    for train, expected in [({"log_every": 0}, "train.log_every must be >= 1"),
                            ({"lr": 1e30, "grad_clip": 0.0, "warmup": 0, "steps": 30}, "the loss became")]:
        (tmp_path / "c.toml").write_text(toml(tiny(**train)))
        line = one_line_error(run("train", "--config", tmp_path / "c.toml", "--out", tmp_path / str(len(train)),
                                  "--quiet"))
        assert expected in line, line


def test_batch_larger_than_the_data_set_says_so_once(tmp_path, caplog):
    np.save(tmp_path / "pts.npy", np.random.default_rng(0).normal(size=(10, 2)).astype(np.float32))
    cfg = from_dict({**tiny(steps=3), "data": {"name": "file", "path": str(tmp_path / "pts.npy"), "batch_size": 32}})
    Trainer(cfg, str(tmp_path / "run"), progress=False).train()
    assert caplog.text.count("is larger than the data set (10 samples): batches are drawn with replacement") == 1


# -- 7. outputs written whole ------------------------------------------------------------------------

def test_compare_writes_its_folder_whole_and_overwrites_only_when_asked(tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    args = ["compare", "--solvers", "euler", "--steps", "2", "--n", "40", "--quiet", "--out", out]
    assert run(*args, "--no-plots").exit_code == 0
    (out / "stale.png").write_text("from an older run")
    assert "--out" in one_line_error(run(*args)) and "--overwrite" in one_line_error(run(*args))
    # interrupted while writing the figures: the old folder is untouched, no temp folder is left
    import scoresde.evaluation.plots

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(scoresde.evaluation.plots, "samples_panel", interrupted)
    r = run(*args, "--overwrite")
    assert r.exit_code == 130, r.output
    assert sorted(os.listdir(out)) == ["results.csv", "results.json", "stale.png"]
    assert sorted(os.listdir(tmp_path)) == ["cmp"]
    monkeypatch.undo()
    r = run(*args, "--overwrite", "--no-plots")
    assert r.exit_code == 0, r.output
    assert sorted(os.listdir(out)) == ["results.csv", "results.json"]  # one run's files, nothing older


def test_sample_refuses_to_replace_outputs_without_overwrite(tmp_path):
    out, png = tmp_path / "s.npz", tmp_path / "s.png"
    base = ["sample", "--n", "8", "--steps", "2", "--quiet", "--out", out]
    assert run(*base).exit_code == 0
    before = out.read_bytes()
    assert "--out" in one_line_error(run(*base, "--seed", "1"))
    assert out.read_bytes() == before
    png.write_text("x")
    assert "--png" in one_line_error(run(*base[:-1], tmp_path / "new.npz", "--png", png))
    assert run(*base, "--overwrite", "--seed", "1").exit_code == 0 and out.read_bytes() != before


# -- 8. progress that moves ----------------------------------------------------------------------------

def test_progress_moves_within_a_compare_run_and_over_likelihood_batches(monkeypatch):
    import tqdm.auto

    from scoresde.evaluation.compare import run_compare
    from scoresde.likelihood import log_likelihood
    from scoresde.evaluation.resolve import resolve_model

    seen = []

    class Recorder(tqdm.auto.tqdm):
        def update(self, n=1):
            super().update(n)
            seen.append(self.n)

    monkeypatch.setattr(tqdm.auto, "tqdm", Recorder)
    model = resolve_model("oracle:gmm8")
    run_compare(model, ["euler", "heun"], [5], n=20, progress=True)
    # one tick per solver step, counted in score evaluations (heun's steps take two): 5 + 2 × 5
    assert seen[:5] == [1, 2, 3, 4, 5] and seen[-1] == 15
    chunks = []
    x = model.oracle.sample(6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    log_likelihood(model.score_fn, model.sde, x, batch_size=2, rtol=1e-3, atol=1e-3, callback=chunks.append)
    assert chunks == [2, 2, 2]


# -- 9. long compares speak before they work ------------------------------------------------------------

def test_extrapolated_nfe_equals_the_replay_for_every_fixed_step_solver(monkeypatch):
    import solvers
    from scoresde.evaluation import compare as cmp
    from scoresde.evaluation.resolve import resolve_model

    model = resolve_model("oracle:gmm8")
    x_T = model.sde.prior_sample((4, 2), generator=torch.Generator().manual_seed(0))
    names = [s for s in solvers.available() if not cmp.is_adaptive(s)]
    exact = cmp.plan_runs(model, names, [300], x_T)
    monkeypatch.setattr(cmp, "REPLAY_STEPS", 200)
    extrapolated = cmp.plan_runs(model, names, [300], x_T)
    assert [(r.solver, r.steps) for r in extrapolated] == [(r.solver, r.steps) for r in exact]
    assert all(r.extrapolated for r in extrapolated)
    off = {r.solver: r.nfe - e.nfe for r, e in zip(extrapolated, exact) if r.nfe != e.nfe}
    assert set(off) <= {"torchsde"} and all(abs(d) <= 2 for d in off.values()), off  # its own step rounding


def test_the_plan_comes_before_any_full_size_work(monkeypatch):
    """n = 200 000: everything the plan line needs runs on at most PROBE_N samples (score) and
    METRIC_PROBE_N (metrics); the full batch is first touched by the runs."""
    import dataclasses

    from scoresde.evaluation import compare as cmp
    from scoresde.evaluation.resolve import resolve_model

    model = resolve_model("oracle:gmm8")
    seen = []

    def score(x, t):
        seen.append(x.shape[0])
        return model.score_fn(x, t)

    scored = []
    real_score_samples = cmp.score_samples
    monkeypatch.setattr(cmp, "score_samples", lambda x, *a, **k: scored.append(x.shape[0]) or real_score_samples(x, *a, **k))

    class Planned(Exception):
        pass

    def on_plan(plan):
        raise Planned(plan)

    with pytest.raises(Planned) as got:
        cmp.compare(dataclasses.replace(model, score_fn=score), ["heun", "pf_ode"], [5, 5000], n=200_000,
                    threads="auto", on_plan=on_plan, progress=False)
    plan = got.value.args[0]
    assert max(seen) <= cmp.PROBE_N and max(scored) <= cmp.METRIC_PROBE_N, (max(seen), scored)
    assert [r.nfe for r in plan.runs if r.steps] == [10, 10000]  # heun: 2 per step, the 5000 extrapolated
    assert plan.memory.total > 200_000 * cmp.METRIC_BYTES(2) and plan.estimate_s > plan.eval_s > 0


def test_a_compare_too_big_for_memory_is_refused_in_one_line(monkeypatch):
    from scoresde.evaluation import compare as cmp

    assert cmp.available_memory() > 0  # readable on this machine
    monkeypatch.setattr(cmp, "available_memory", lambda: 200 * 2 ** 20)
    line = one_line_error(run("compare", "--n", 1_000_000, "--solvers", "heun,euler", "--steps", "5,10",
                              "--out", "/nonexistent/never-written", "--threads", 1))
    assert line.startswith("Error: --n 1000000 with 4 runs needs about ") and "200 MB is available" in line, line
    largest = int(line.split("use --n ")[1].split()[0])
    assert 10_000 < largest < 1_000_000, line


# -- 10. silent inaccuracy: the oracle checks the spread -----------------------------------------------

def test_spread_ratio_is_one_for_exact_samples_and_the_warning_names_solver_steps_and_ratio():
    from scoresde.evaluation.metrics import SPREAD_OFF, spread_ratio, spread_warning
    from scoresde.oracle import GaussianMixture
    from scoresde.sde import make_sde

    data, sde, g = GaussianMixture.ring(), make_sde("ve"), torch.Generator().manual_seed(0)
    for t in (1e-5, 0.3, 1.0):
        m, s = sde.marginal(torch.tensor([t]))
        x_t = m * data.sample(20000, generator=g) + s * torch.randn(20000, 2, generator=g)
        assert abs(spread_ratio(x_t, data, sde, t) - 1) < 0.03, t
        assert spread_warning(x_t, data, sde, t, "x") is None
        line = spread_warning(x_t * SPREAD_OFF * 1.5, data, sde, t, "heun 3 steps")
        assert line.startswith(f"heun 3 steps: the samples' spread is 3 x the exact spread at t = {t:.3g}"), line
        assert spread_warning(x_t / 3, data, sde, t, "x") is not None


def test_few_step_runs_far_off_the_oracle_warn_in_sample_and_compare(tmp_path):
    r = run("sample", "--sde", "ve", "--solver", "euler_maruyama", "--steps", 5, "--n", 400, "--quiet",
            "--threads", 1, "--out", tmp_path / "a.npz")
    assert r.exit_code == 0, r.output
    warning = [ln for ln in r.output.splitlines() if ln.startswith("WARNING:")]
    assert len(warning) == 1 and "euler_maruyama 5 steps: the samples' spread is " in warning[0], r.output
    assert float(warning[0].split("spread is ")[1].split(" x")[0]) > 10
    r = run("sample", "--sde", "ve", "--solver", "heun", "--steps", 20, "--n", 400, "--quiet", "--threads", 1,
            "--out", tmp_path / "b.npz")
    assert r.exit_code == 0 and "WARNING" not in r.output, r.output
    from scoresde.evaluation.compare import compare
    from scoresde.evaluation.resolve import resolve_model
    from scoresde.sde import make_sde

    res = compare(resolve_model("oracle:gmm8", sde=make_sde("ve")), ["euler_maruyama", "heun"], [5, 20], n=200,
                  progress=False, threads=None)
    spread = [w for w in res.warnings if "spread" in w]
    assert [w.split(":")[0] for w in spread] == ["euler_maruyama 5 steps"], res.warnings  # 20 steps: within 2x
