"""The training fast path: each switch keeps the loss sequence (bit for bit where the arithmetic is
unchanged, to float round-off where sums are reassociated), and the CUDA-only ones stay off on CPU.

The same file runs on a GPU machine: `pytest -m gpu tests/test_train_fastpath.py` adds the
graph-capture, no-host-sync and bf16 checks."""
import warnings

import pytest
import torch
from torch import nn

from scoresde.training.config import ConfigError, from_dict
from scoresde.training.data import make_dataset
from scoresde.training.fastpath import compile_net
from scoresde.training.nn import Attention, GroupNorm
from scoresde.training.trainer import Trainer

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def digits_cfg(**train):
    return from_dict({"data": {"name": "digits", "batch_size": 8},
                      "model": {"arch": "unet", "channels": 8, "blocks": 1},
                      "train": dict(dict(steps=50, warmup=2, ckpt_every=0, device="cpu"), **train)})


def ring_cfg(**train):
    return from_dict({"data": {"name": "ring", "batch_size": 64}, "model": {"hidden": 32, "blocks": 2},
                      "train": dict(dict(steps=50, warmup=2, ckpt_every=0, device="cpu"), **train)})


def losses(cfg, tmp_path, n, name="run"):
    tr = Trainer(cfg, str(tmp_path / name), progress=False)
    return tr, [float(tr.train_step()) for _ in range(n)]


def test_channels_last_runs_the_unet_in_nhwc_and_keeps_the_losses(tmp_path):
    tr, fast = losses(digits_cfg(channels_last=True), tmp_path, 5, "cl")
    seen = []
    tr.model.net.register_forward_pre_hook(lambda m, a: seen.append(a[0].is_contiguous(memory_format=torch.channels_last)))
    tr.train_step()
    assert seen == [True]
    cl = [p for p in tr.model.net.parameters() if p.ndim == 4]
    assert cl and all(p.is_contiguous(memory_format=torch.channels_last) for p in cl)
    assert all(e.is_contiguous(memory_format=torch.channels_last) for e in tr.ema if e.ndim == 4)
    _, plain = losses(digits_cfg(channels_last=False), tmp_path, 5, "nchw")
    # the same arithmetic in another memory order: only float sums are reassociated
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=0)
    # an MLP has no 4-D tensors: the switch changes nothing at all
    assert losses(ring_cfg(channels_last=True), tmp_path, 4, "r1")[1] == losses(ring_cfg(channels_last=False),
                                                                                 tmp_path, 4, "r2")[1]


def test_fused_optimizer_switch_keeps_the_losses(tmp_path):
    tr, fused = losses(ring_cfg(fused_optimizer=True), tmp_path, 12, "f")
    assert tr.opt.defaults["fused"] is True
    tr2, loop = losses(ring_cfg(fused_optimizer=False), tmp_path, 12, "l")
    assert not tr2.opt.defaults["fused"]
    torch.testing.assert_close(fused, loop, rtol=1e-5, atol=0)
    for a, b in zip(tr.model.net.parameters(), tr2.model.net.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


class _FailsInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        raise RuntimeError("inductor could not compile the backward graph")


@pytest.mark.parametrize("where", ["forward", "backward"])
def test_compile_failure_falls_back_to_eager_with_one_warning(tmp_path, monkeypatch, where):
    def broken_compile(net, **kw):
        def run(*a, **k):
            if where == "forward":
                raise RuntimeError("BackendCompilerFailed: no C++ compiler here")
            return _FailsInBackward.apply(net(*a, **k))
        return run

    _, eager = losses(ring_cfg(), tmp_path, 5, "eager")
    monkeypatch.setattr(torch, "compile", broken_compile)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tr, fell_back = losses(ring_cfg(compile=True), tmp_path, 5, "compiled")
    msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(msgs) == 1 and "torch.compile failed on the first step" in msgs[0] and "eager mode" in msgs[0], msgs
    assert tr._train_net is tr.model.net
    assert fell_back == eager  # the failed attempt's draws are rewound: the eager sequence, bit for bit


def test_an_error_eager_mode_also_raises_is_not_swallowed(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda net, **kw: net)
    tr = Trainer(ring_cfg(compile=True), str(tmp_path), progress=False)
    tr.data.sample = lambda n, g: torch.zeros(n, 1)  # wrong shape: a real bug
    with pytest.warns(RuntimeWarning, match="torch.compile failed"), pytest.raises(RuntimeError):
        tr.train_step()


def test_compile_modes_that_capture_cuda_graphs_are_guarded_off_the_gpu(monkeypatch):
    seen = []
    monkeypatch.setattr(torch, "compile", lambda net, mode=None: seen.append(mode) or net)
    for mode in ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"):
        compile_net(nn.Linear(2, 2), mode, torch.device("cpu"))
    assert seen == ["default", "default", "max-autotune-no-cudagraphs", "max-autotune-no-cudagraphs"]


def test_cuda_graph_switch_is_off_on_cpu_and_changes_nothing(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tr, graphed = losses(digits_cfg(cuda_graph=True), tmp_path, 4, "g")
    assert not tr._runner.graph_wanted and not tr._runner.captured and tr._runner.stream is None
    assert graphed == losses(digits_cfg(cuda_graph=False), tmp_path, 4, "e")[1]


def test_data_tables_move_to_the_device_once_under_the_budget():
    d = make_dataset("digits")
    nbytes = d.table.numel() * d.table.element_size()
    assert d.to("meta", max_bytes=nbytes - 1).device.type == "cpu"  # over budget: stays on the host
    assert d.to("meta", max_bytes=nbytes).device.type == "meta"
    ring = make_dataset("ring")
    assert ring.to("meta").device.type == "cpu"  # sampler-based sets draw on the host


@pytest.mark.parametrize("device", DEVICES)
def test_draws_index_the_table_where_it_lives(device):
    d = make_dataset("digits").to(device)
    x = d.sample(32, torch.Generator(device=device).manual_seed(0))
    assert x.device.type == device and x.shape == (32, 1, 8, 8) and x.min() >= -1 and x.max() < 1
    again = make_dataset("digits").to(device).sample(32, torch.Generator(device=device).manual_seed(0))
    assert torch.equal(x, again)


def test_trainer_keeps_small_data_on_its_device_without_changing_cpu_losses(tmp_path):
    tr, on = losses(digits_cfg(), tmp_path, 4, "on")
    assert tr.data.device == tr.device and tr.data_gen.device == tr.device
    tr0, off = losses(digits_cfg(data_on_device_gb=0.0), tmp_path, 4, "off")
    assert tr0.data.table.device.type == "cpu"
    assert on == off


def test_resume_may_change_the_speed_switches_but_nothing_else(tmp_path):
    slow = digits_cfg(steps=6, log_every=1, channels_last=False, fused_optimizer=False)
    Trainer(slow, str(tmp_path), progress=False).train(stop_after=3)
    fast = digits_cfg(steps=6, log_every=1, channels_last=True, fused_optimizer=True)
    tr = Trainer(fast, str(tmp_path), resume=True, progress=False)
    assert tr.step == 3
    moments = [v for st in tr.opt.state.values() for v in st.values() if torch.is_tensor(v) and v.ndim == 4]
    assert moments and all(v.is_contiguous(memory_format=torch.channels_last) for v in moments)
    assert all(l == l for l in (float(tr.train_step()) for _ in range(2)))


def test_fast_path_config_keys():
    t = from_dict({}).train
    assert (t.channels_last, t.fused_optimizer, t.cuda_graph, t.compile_mode, t.data_on_device_gb) == \
        (True, True, False, "default", 4.0)
    with pytest.raises(ConfigError, match="train.compile_mode = 'fast' is not allowed"):
        from_dict({"train": {"compile_mode": "fast"}})
    with pytest.raises(ConfigError, match="both capture CUDA graphs"):
        from_dict({"train": {"cuda_graph": True, "compile": True, "compile_mode": "reduce-overhead"}})


# -- the network pieces ----------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_groupnorm_runs_in_the_input_dtype(device):
    gn = GroupNorm(4, 16).to(device)
    with torch.no_grad():
        gn.weight.uniform_(0.5, 1.5, generator=torch.Generator(device=device).manual_seed(1))
        gn.bias.uniform_(-1, 1, generator=torch.Generator(device=device).manual_seed(2))
    x = torch.randn(3, 16, 8, 8, device=device, generator=torch.Generator(device=device).manual_seed(0)) * 3 + 1
    ref = nn.functional.group_norm(x, 4, gn.weight, gn.bias, gn.eps)
    assert torch.equal(gn(x), ref)  # fp32: the stock kernel, bit for bit
    for ctx in (torch.autocast(device, dtype=torch.bfloat16), torch.autocast(device, enabled=False)):
        with ctx:
            y = gn(x.bfloat16())
        assert y.dtype == torch.bfloat16  # no upcast to fp32 under autocast
        torch.testing.assert_close(y.float(), ref, atol=4e-2, rtol=2e-2)
    y.float().sum().backward()
    assert gn.weight.grad.dtype == torch.float32  # the parameters stay fp32


@pytest.mark.parametrize("heads", [1, 2])
def test_attention_is_layout_free_and_matches_the_formula(heads):
    torch.manual_seed(0)
    a = Attention(16, heads)
    x = torch.randn(3, 16, 4, 4)
    qkv = a.qkv(a.norm(x)).reshape(3, 3, heads, 16 // heads, 16)   # (B, 3, heads, d, HW)
    q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))       # (B, heads, HW, d)
    w = torch.softmax(q @ k.transpose(-1, -2) / (16 // heads) ** 0.5, -1)
    ref = x + a.proj((w @ v).transpose(-1, -2).reshape(3, 16, 4, 4))
    torch.testing.assert_close(a(x), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a(x.contiguous(memory_format=torch.channels_last)), ref, atol=1e-5, rtol=1e-5)


# -- on a GPU --------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_replays_the_eager_losses(tmp_path):
    cfg = dict(bf16=False, device="cuda")
    tr, graphed = losses(digits_cfg(cuda_graph=True, **cfg), tmp_path, 12, "g")
    assert tr._runner.captured
    _, eager = losses(digits_cfg(cuda_graph=False, **cfg), tmp_path, 12, "e")
    # same draws (registered generators); cuDNN may pick other algorithms inside the capture
    torch.testing.assert_close(graphed, eager, rtol=1e-4, atol=0)
    tr.save()  # generator states of a graph-registered generator are readable


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("graph", [False, True])
def test_a_cuda_step_never_waits_for_the_gpu(tmp_path, graph):
    tr = Trainer(digits_cfg(device="cuda", cuda_graph=graph), str(tmp_path), progress=False)
    for _ in range(5):
        tr.train_step()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            tr.train_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert tr.data.table.device.type == "cuda"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_unet_keeps_its_norms_in_bf16(tmp_path):
    tr = Trainer(digits_cfg(device="cuda"), str(tmp_path), progress=False)
    dtypes = []
    for m in tr.model.net.modules():
        if isinstance(m, GroupNorm):
            m.register_forward_hook(lambda mod, a, out: dtypes.append(out.dtype))
    tr.train_step()
    assert dtypes and set(dtypes) == {torch.bfloat16}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_cuda_training_tracks_eager(tmp_path):
    _, comp = losses(digits_cfg(device="cuda", compile=True, bf16=False), tmp_path, 6, "c")
    _, eager = losses(digits_cfg(device="cuda", bf16=False), tmp_path, 6, "e")
    torch.testing.assert_close(comp, eager, rtol=1e-3, atol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_resume_continues_the_random_streams(tmp_path):
    cfg = ring_cfg(device="cuda", steps=8)
    full = Trainer(cfg, str(tmp_path / "a"), progress=False).train()
    first = Trainer(cfg, str(tmp_path / "b"), progress=False).train(stop_after=3)
    rest = Trainer(cfg, str(tmp_path / "b"), resume=True, progress=False).train()
    torch.testing.assert_close(first + rest, full, rtol=1e-6, atol=0)
