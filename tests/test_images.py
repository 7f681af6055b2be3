"""Image data (PNG folders, uint8 arrays, CIFAR-10 binaries) and image sample-quality metrics.

Every file is synthesized here, so the pixel values each loader must return are known exactly.
"""
import json
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from scoresde.cli import cli
from scoresde.training.config import ConfigError, from_dict
from scoresde.training.data import ImageDataset, fit_images, make_dataset
from scoresde.evaluation.metrics import ImageReference, features, frechet_distance, gaussian_stats, precision_recall
from scoresde.training.trainer import Trainer


def pixels(n, h, w, c, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


def write_pngs(folder, arr):
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    for i, a in enumerate(arr):
        Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).save(os.path.join(folder, f"img_{i:03d}.png"))


def write_cifar(path, images_chw, labels):
    """CIFAR-10's binary record: one label byte, then 3072 pixel bytes, channels first."""
    rec = np.concatenate([np.asarray(labels, np.uint8)[:, None], images_chw.reshape(len(labels), -1)], 1)
    rec.astype(np.uint8).tofile(path)


def levels_of(x):
    """k from x = 2k/255 − 1, checking x lies exactly on the 256-level grid."""
    k = (x.double() + 1) * 127.5
    assert torch.allclose(k, k.round(), atol=1e-4)
    return k.round().to(torch.int64)


def tiny_cfg(data, steps=3):
    return from_dict({"data": dict(batch_size=4, **data),
                      "model": {"arch": "unet", "channels": 8, "channel_mult": [1], "blocks": 1,
                                "attention_resolutions": []},
                      "train": {"steps": steps, "warmup": 1, "ckpt_every": 0, "log_every": 1, "lr": 1e-3}})


# These tensors are tiny: a second thread costs more in hand-offs than it saves.
pytestmark = pytest.mark.usefixtures("one_thread")


def train_few(tmp_path, data, steps=3):
    tr = Trainer(tiny_cfg(data, steps + 1), str(tmp_path / "run"), progress=False)
    losses = tr.train(stop_after=steps)  # one step short of the end: no preview sampling (tested elsewhere)
    assert len(losses) == steps and all(np.isfinite(losses))
    return tr


# -- loaders: layout, range, levels, split --------------------------------------------------------
def test_png_folder_round_trips_pixels_crops_and_holds_out_the_last_k(tmp_path):
    arr = pixels(7, 6, 10, 3)  # H = 6 ≠ W = 10: a transposed layout would show
    write_pngs(tmp_path / "imgs", arr)
    train = make_dataset("images", str(tmp_path / "imgs"), holdout=2)
    test = make_dataset("images", str(tmp_path / "imgs"), "test", holdout=2)
    assert isinstance(train, ImageDataset) and train.shape == (3, 6, 10) and train.levels == 256
    assert torch.equal(levels_of(train.head(5)), torch.from_numpy(arr[:5]).permute(0, 3, 1, 2).long())
    assert torch.equal(levels_of(test.head(9)), torch.from_numpy(arr[5:]).permute(0, 3, 1, 2).long())
    cropped = make_dataset("images", str(tmp_path / "imgs"), image_size=6)  # central 6×6 of 6×10
    assert torch.equal(levels_of(cropped.head(7)), torch.from_numpy(arr[:, :, 2:8]).permute(0, 3, 1, 2).long())
    write_pngs(tmp_path / "gray", pixels(3, 5, 5, 1))
    assert make_dataset("images", str(tmp_path / "gray")).shape == (1, 5, 5)


@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
def test_uint8_array_layout_is_detected_and_values_round_trip(tmp_path, layout):
    arr = pixels(6, 5, 7, 3)
    stored = arr if layout == "nhwc" else arr.transpose(0, 3, 1, 2)
    np.save(tmp_path / "x.npy", stored)
    ds = make_dataset("file", str(tmp_path / "x.npy"))
    assert ds.shape == (3, 5, 7) and ds.levels == 256
    assert torch.equal(levels_of(ds.head(6)), torch.from_numpy(arr).permute(0, 3, 1, 2).long())
    assert ds.head(6).min() == -1 or ds.head(6).max() <= 1  # on [−1, 1]
    x = ds.head(6)
    assert x.min() >= -1 and x.max() <= 1


def test_ambiguous_shape_asks_for_data_layout(tmp_path):
    arr = pixels(4, 3, 5, 3)  # (N, 3, 5, 3): channels could be first or last
    np.save(tmp_path / "x.npy", arr)
    with pytest.raises(ValueError, match="set data.layout = 'nhwc' or 'nchw'"):
        make_dataset("file", str(tmp_path / "x.npy"))
    ds = make_dataset("file", str(tmp_path / "x.npy"), layout="nhwc")
    assert torch.equal(levels_of(ds.head(4)), torch.from_numpy(arr).permute(0, 3, 1, 2).long())


def test_float_levels_array_and_continuous_array(tmp_path):
    k = np.random.default_rng(1).integers(0, 16, (5, 1, 5, 5)).astype(np.float32)
    np.save(tmp_path / "k.npy", k)
    ds = make_dataset("file", str(tmp_path / "k.npy"), levels=16)
    assert ds.levels == 16
    assert torch.allclose(ds.head(5), torch.from_numpy(2 * k / 15 - 1))
    # without data.levels a float array is continuous data, used as given (the old behaviour)
    cont = make_dataset("file", str(tmp_path / "k.npy"))
    assert cont.levels is None and torch.equal(cont.table, torch.from_numpy(k))


def test_training_draws_are_dequantized_within_their_level_cells(tmp_path):
    arr = pixels(1, 4, 4, 3)
    np.save(tmp_path / "x.npy", arr)
    ds = make_dataset("file", str(tmp_path / "x.npy"))
    x = ds.sample(64, torch.Generator().manual_seed(0)).double()
    k = torch.from_numpy(arr).permute(0, 3, 1, 2).long()
    # x̃ = 2(k + u)/256 − 1 with u ∈ [0, 1): the floor recovers k, and u is spread over the cell
    assert torch.equal(torch.floor((x + 1) * 128).long(), k.expand(64, -1, -1, -1))
    u = (x + 1) * 128 - k
    assert 0.4 < float(u.mean()) < 0.6 and float(u.std()) > 0.25


def test_flip_mirrors_about_half_of_the_training_draws_and_never_the_held_out_split(tmp_path):
    arr = pixels(3, 4, 6, 3, seed=2)
    np.save(tmp_path / "x.npy", arr)
    ds = make_dataset("file", str(tmp_path / "x.npy"), flip=True, holdout=1)
    k = torch.from_numpy(arr[:2]).permute(0, 3, 1, 2).long()
    g = torch.Generator().manual_seed(0)
    x = ds.sample(400, g)
    got = torch.floor((x.double() + 1) * 128).long()
    plain = [(got == k[i]).flatten(1).all(1) for i in range(2)]
    mirror = [(got == k[i].flip(-1)).flatten(1).all(1) for i in range(2)]
    assert bool((plain[0] | plain[1] | mirror[0] | mirror[1]).all())  # every draw is one of the four
    frac = float((mirror[0] | mirror[1]).double().mean())
    assert 0.4 < frac < 0.6, frac
    test = make_dataset("file", str(tmp_path / "x.npy"), "test", flip=True, holdout=1)
    assert not test.flip


def test_cifar_records_labels_ignored_and_test_batch_held_out(tmp_path):
    rng = np.random.default_rng(3)
    train_px, test_px = rng.integers(0, 256, (5, 3, 32, 32)), rng.integers(0, 256, (2, 3, 32, 32))
    write_cifar(tmp_path / "data_batch_1.bin", train_px, rng.integers(0, 10, 5))
    write_cifar(tmp_path / "test_batch.bin", test_px, [9, 0])
    train = make_dataset("cifar10", str(tmp_path))
    test = make_dataset("cifar10", str(tmp_path), "test")
    assert train.shape == (3, 32, 32) and len(train) == 5 and len(test) == 2
    assert torch.equal(levels_of(train.head(5)), torch.from_numpy(train_px))
    assert torch.equal(levels_of(test.head(2)), torch.from_numpy(test_px))
    write_cifar(tmp_path / "data_batch_1.bin", train_px, [7] * 5)  # other labels, same pixels
    assert torch.equal(make_dataset("cifar10", str(tmp_path)).images, train.images)


def test_resize_keeps_levels_and_shape():
    img = torch.full((2, 3, 10, 12), 7, dtype=torch.uint8)
    img[1] = 200
    out = fit_images(img, 4, "resize")
    assert out.shape == (2, 3, 4, 4) and out.dtype == torch.uint8
    assert bool((out[0] == 7).all()) and bool((out[1] == 200).all())
    with pytest.raises(ValueError, match="larger than the 10×12 images; use data.fit = 'resize'"):
        fit_images(img, 11, "crop")


@pytest.mark.parametrize("raw, match", [
    ({"data": {"layout": "hwc"}}, "data.layout = 'hwc' is not allowed; choose one of: auto, nhwc, nchw"),
    ({"data": {"fit": "pad"}}, "data.fit = 'pad' is not allowed; choose one of: crop, resize"),
    ({"data": {"levels": 300}}, "data.levels must be 0 .automatic. or between 2 and 256"),
    ({"data": {"flip": 1}}, "data.flip must be bool"),
    ({"data": {"image_size": -4}}, "data.image_size must be >= 0"),
])
def test_image_config_keys_are_validated(raw, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(raw)


def test_image_options_on_non_image_data_are_refused():
    with pytest.raises(ValueError, match="data.flip does not apply to data.name = 'ring'"):
        make_dataset("ring", flip=True)
    with pytest.raises(ValueError, match="data.holdout does not apply to data.name = 'digits'"):
        make_dataset("digits", holdout=5)


# -- training on each source, likelihood and compare on an image model -----------------------------
def test_trains_on_png_folder_uint8_array_and_cifar_binaries(tmp_path):
    write_pngs(tmp_path / "imgs", pixels(6, 8, 8, 3))
    train_few(tmp_path / "a", {"name": "images", "path": str(tmp_path / "imgs"), "flip": True})
    np.save(tmp_path / "x.npy", pixels(6, 8, 8, 1))
    train_few(tmp_path / "b", {"name": "file", "path": str(tmp_path / "x.npy"), "holdout": 2})
    rng = np.random.default_rng(4)
    write_cifar(tmp_path / "data_batch_1.bin", rng.integers(0, 256, (6, 3, 32, 32)), rng.integers(0, 10, 6))
    write_cifar(tmp_path / "test_batch.bin", rng.integers(0, 256, (3, 3, 32, 32)), rng.integers(0, 10, 3))
    tr = train_few(tmp_path / "c", {"name": "cifar10", "path": str(tmp_path), "image_size": 8, "fit": "resize"})
    assert tr.data.shape == (3, 8, 8)
    # the likelihood CLI takes the held-out test batch, its 256 levels (+7 offset) and Hutchinson
    ckpt = str(tmp_path / "c" / "run" / "checkpoint.pt")
    r = CliRunner().invoke(cli, ["likelihood", "--checkpoint", ckpt, "--n", "5", "--rtol", "1e-2", "--atol", "1e-2",
                                 "--dequant-repeats", "2"])
    assert r.exit_code == 0, r.output
    assert "n=3" in r.output and "method=hutchinson" in r.output and "D=192" in r.output
    assert "256-level data, offset log2(256) - 1 = 7.000, 2 draw(s)" in r.output


class TinyFeatures(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return torch.cat([torch.tanh(self.conv(x)).mean((2, 3)), x.mean((1, 2, 3))[:, None]], 1)


def scripted_features(path):
    torch.manual_seed(0)
    net = torch.jit.script(TinyFeatures().eval())
    torch.jit.save(net, str(path))
    return net


def test_compare_on_an_image_model_reports_pixel_metrics_floors_and_feature_frechet(tmp_path):
    write_pngs(tmp_path / "imgs", pixels(20, 8, 8, 3, seed=5))
    train_few(tmp_path, {"name": "images", "path": str(tmp_path / "imgs"), "holdout": 12}, steps=2)
    scripted_features(tmp_path / "feat.pt")
    out = tmp_path / "cmp"
    args = ["compare", "--model", str(tmp_path / "run" / "checkpoint.pt"), "--solvers", "ddim", "--steps", "3",
            "--n", "6", "--out", str(out), "--quiet", "--no-plots"]
    r = CliRunner().invoke(cli, args + ["--features", str(tmp_path / "feat.pt")])
    assert r.exit_code == 0, r.output
    assert "precision" in r.output and "recall" in r.output and "fd" in r.output
    assert "floors (two disjoint samples of size 6 of images:imgs-test (held out))" in r.output
    row = json.load(open(out / "results.json"))["rows"][0]
    for key in ("sw2", "precision", "recall", "fd", "sw2_floor", "precision_floor", "recall_floor", "fd_floor"):
        assert np.isfinite(row[key]), key
    assert 0 <= row["precision"] <= 1 and row["fd"] >= 0
    r = CliRunner().invoke(cli, args[:-4] + ["--n", "7", "--out", str(out), "--overwrite"])
    assert r.exit_code == 2 and "needs 2 × 7 reference images" in r.output and "--n 6 or fewer" in r.output
    (tmp_path / "junk.pt").write_bytes(b"not torchscript")
    r = CliRunner().invoke(cli, args + ["--features", str(tmp_path / "junk.pt"), "--overwrite"])
    assert r.exit_code == 2 and "is not a TorchScript module" in r.output, r.output


# -- bad input: one line, exit code 2, nothing written -----------------------------------------------
def _bad_inputs(tmp_path):
    write_pngs(tmp_path / "corrupt", pixels(3, 4, 4, 3))
    blob = (tmp_path / "corrupt" / "img_001.png").read_bytes()
    (tmp_path / "corrupt" / "img_001.png").write_bytes(blob[:len(blob) // 2])
    write_pngs(tmp_path / "mixed", pixels(2, 4, 4, 3))
    from PIL import Image
    Image.fromarray(pixels(1, 5, 4, 3)[0]).save(tmp_path / "mixed" / "img_009.png")
    os.makedirs(tmp_path / "cifar")
    np.zeros(3073 * 2 + 5, np.uint8).tofile(tmp_path / "cifar" / "data_batch_1.bin")
    np.save(tmp_path / "float.npy", np.full((4, 1, 4, 4), 300.0, np.float32))
    os.makedirs(tmp_path / "empty")
    return [
        ({"name": "images", "path": str(tmp_path / "corrupt")}, "img_001.png' cannot be read"),
        ({"name": "images", "path": str(tmp_path / "mixed")}, "img_009.png' is 4×5 but"),
        ({"name": "cifar10", "path": str(tmp_path / "cifar")}, "has 6151 bytes, not a positive multiple of"),
        ({"name": "file", "path": str(tmp_path / "float.npy"), "levels": 256}, "values span [300, 300], outside"),
        ({"name": "images", "path": str(tmp_path / "empty")}, "holds no .png/.jpg/.jpeg images"),
        ({"name": "cifar10", "path": str(tmp_path / "empty")}, "holds none of data_batch_1.bin"),
    ]


def test_bad_image_input_is_one_line_exit_2_and_writes_nothing(tmp_path):
    for i, (data, message) in enumerate(_bad_inputs(tmp_path)):
        cfg = tmp_path / f"c{i}.toml"
        cfg.write_text("[data]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in data.items()))
        out = tmp_path / f"run{i}"
        r = CliRunner().invoke(cli, ["train", "--config", str(cfg), "--out", str(out), "--quiet"])
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error: "), r.output
        assert message in lines[0], (message, lines[0])
        assert not out.exists()


# -- metrics: hand-checkable precision/recall, closed-form Fréchet distances --------------------------
def test_precision_recall_on_a_hand_checked_case():
    real = torch.tensor([[0.0], [1.0], [2.0], [10.0]])  # k = 1 radii: 1, 1, 1, 8
    fake = torch.tensor([[0.5], [5.0], [20.0], [2.5]])  # radii: 2, 2.5, 15, 2
    # precision: 0.5 ∈ B(0, 1), 5 ∈ B(10, 8), 20 in no real ball, 2.5 ∈ B(2, 1) → 3/4
    # recall: 0, 1 ∈ B(0.5, 2), 2 ∈ B(2.5, 2), 10 ∈ B(20, 15) → 4/4
    assert precision_recall(real, fake, k=1) == {"precision": 0.75, "recall": 1.0}
    assert precision_recall(fake, real, k=1) == {"precision": 1.0, "recall": 0.75}
    # two fakes of radius 2 cover 0, 1, 2 but not 10 → recall 3/4; both lie on the real manifold
    assert precision_recall(real, torch.tensor([[0.5], [2.5]]), k=1) == {"precision": 1.0, "recall": 0.75}


def test_frechet_distance_matches_closed_forms():
    from scipy.linalg import sqrtm

    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx((1 - 3) ** 2 + (2 - 3) ** 2)
    a, b = np.array([1.0, 2.0, 0.5]), np.array([3.0, 0.25, 0.5])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, -1.0])
    want = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()  # diagonal: Σ (σ₁ − σ₂)²
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want, rel=1e-12)
    rng = np.random.default_rng(0)
    A, B = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    c1, c2 = A @ A.T + 0.1 * np.eye(6), B @ B.T + 0.1 * np.eye(6)
    m1, m2 = rng.normal(size=6), rng.normal(size=6)
    want = ((m1 - m2) ** 2).sum() + np.trace(c1 + c2 - 2 * sqrtm(c1 @ c2).real)
    assert frechet_distance(m1, c1, m2, c2) == pytest.approx(want, rel=1e-9)
    assert frechet_distance(m1, c1, m1, c1) == pytest.approx(0, abs=1e-9)
    # from samples: N(0, I) vs N(μ, 4I) in 3-D has FD = ‖μ‖² + 3·(2 − 1)² = 1 + 3
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(200000, 3, generator=g), 2 * torch.randn(200000, 3, generator=g) + torch.tensor([1.0, 0, 0])
    assert frechet_distance(*gaussian_stats(x), *gaussian_stats(y)) == pytest.approx(4.0, abs=0.05)


def test_image_reference_fd_is_the_frechet_distance_of_the_scripted_features(tmp_path):
    from scipy.linalg import sqrtm

    net = scripted_features(tmp_path / "f.pt")
    g = torch.Generator().manual_seed(1)
    ref, ref2 = torch.rand(40, 3, 8, 8, generator=g) * 2 - 1, torch.rand(40, 3, 8, 8, generator=g) * 2 - 1
    x = (torch.rand(40, 3, 8, 8, generator=g) * 1.5 - 1).clamp(-1, 1)
    got = ImageReference(ref, ref2, torch.jit.load(str(tmp_path / "f.pt"))).score(x)
    with torch.no_grad():
        fx, fr = net(x).double().numpy(), net(ref).double().numpy()
    c1, c2 = np.cov(fx, rowvar=False), np.cov(fr, rowvar=False)
    want = ((fx.mean(0) - fr.mean(0)) ** 2).sum() + np.trace(c1 + c2 - 2 * sqrtm(c1 @ c2).real)
    assert got["fd"] == pytest.approx(want, rel=1e-6)
    assert torch.equal(features(net, x, batch_size=7), torch.from_numpy(fx))
    assert got["fd"] > got["fd_floor"] >= 0 and set(got) >= {"sw2", "precision", "recall", "sw2_floor"}


# -- on a GPU: uint8 images live on the device, or come through pinned buffers ------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("max_bytes", [float("inf"), 0])
def test_images_on_the_device_or_through_pinned_buffers(tmp_path, max_bytes):
    arr = pixels(10, 4, 4, 3, seed=6)
    np.save(tmp_path / "x.npy", arr)
    ds = make_dataset("file", str(tmp_path / "x.npy"), flip=True).to("cuda", max_bytes=max_bytes)
    on_device = max_bytes > 0
    assert ds.images.dtype == torch.uint8 and (ds.device.type == "cuda") == on_device
    g = torch.Generator(device=ds.device).manual_seed(0)
    k = torch.from_numpy(arr).permute(0, 3, 1, 2).long().cuda()
    for _ in range(3):  # more draws than buffers: a refilled pinned buffer must not corrupt a batch
        x = ds.sample(64, g)
        assert x.device.type == "cuda" and x.dtype == torch.float32
        got = torch.floor((x.double() + 1) * 128).long()
        match = ((got[:, None] == k[None]) | (got[:, None] == k[None].flip(-1))).flatten(2).all(2).any(1)
        assert bool(match.all())
    cfg = tiny_cfg({"name": "file", "path": str(tmp_path / "x.npy")}, steps=3)
    cfg.train.device, cfg.train.data_on_device_gb = "cuda", 1.0 if on_device else 0.0
    tr = Trainer(cfg, str(tmp_path / "run"), progress=False)
    assert tr.data.device.type == ("cuda" if on_device else "cpu")
    assert all(np.isfinite(tr.train(stop_after=2)))


def test_cifar10_config_builds_ddpms_network_on_cifar_files(tmp_path):
    from scoresde.training.config import load_config
    from scoresde.training.trainer import build_model

    cfg = load_config(os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "cifar10_vp.toml"))
    assert (cfg.data.name, cfg.data.batch_size, cfg.data.flip) == ("cifar10", 128, True)
    assert (cfg.train.lr, cfg.train.warmup, cfg.train.ema_decay, cfg.sde.name) == (2e-4, 5000, 0.9999, "vp")
    rng = np.random.default_rng(7)
    write_cifar(tmp_path / "data_batch_1.bin", rng.integers(0, 256, (3, 3, 32, 32)), [0, 1, 2])
    cfg.data.path = str(tmp_path)
    model, data = build_model(cfg)
    assert data.shape == (3, 32, 32) and data.flip
    n_params = sum(p.numel() for p in model.net.parameters())
    assert 33.3e6 < n_params < 33.4e6  # DDPM's 35.7 M less its learned resampling convolutions (see the config)


def test_options_that_cannot_apply_are_errors(tmp_path):
    write_pngs(tmp_path / "imgs", pixels(3, 4, 4, 3))
    with pytest.raises(ValueError, match="data.levels does not apply to data.name = 'images'"):
        make_dataset("images", str(tmp_path / "imgs"), levels=16)
    with pytest.raises(ValueError, match="data.holdout does not apply to data.name = 'cifar10'"):
        make_dataset("cifar10", str(tmp_path), holdout=3)
    np.save(tmp_path / "f.npy", np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match="data.flip applies to images, but data file .* is a float array"):
        make_dataset("file", str(tmp_path / "f.npy"), flip=True)
