"""Class labels in training: networks with a class embedding and a "no label" class, labels from
every data source, label dropout, checkpoints that keep the class names, and the errors."""
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from scoresde.cli import cli
from scoresde.training.config import ConfigError, from_dict
from scoresde.training.data import make_dataset
from scoresde.training.nn import MLP, UNet
from test_images import write_cifar, write_pngs

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("net", [MLP(2, 32, 2, num_classes=3),
                                 UNet(1, 8, 8, (1, 2), 1, (), num_classes=3)])
def test_a_class_embedding_with_a_no_label_class(net):
    x = torch.randn(6, *((2,) if isinstance(net, MLP) else (1, 8, 8)), generator=torch.Generator().manual_seed(0))
    t = torch.full((6,), 0.3)
    with torch.no_grad():
        for p in net.label_emb.parameters():
            p.add_(1.0)  # (the U-Net zero-initialises nothing; make every class visibly different)
        none = net(x, t)
        null = net(x, t, torch.full((6,), 3))
        torch.testing.assert_close(none, null)  # no labels = the "no label" class, index C
        a, b = net(x, t, torch.zeros(6, dtype=torch.long)), net(x, t, torch.ones(6, dtype=torch.long))
    assert not torch.allclose(a, b) and not torch.allclose(a, null)


def test_a_conditional_network_draws_the_same_other_weights_as_an_unconditional_one():
    torch.manual_seed(0)
    plain = MLP(2, 16, 2)
    torch.manual_seed(0)
    cond = MLP(2, 16, 2, num_classes=4)
    for k, v in plain.state_dict().items():
        assert torch.equal(v, cond.state_dict()[k]), k
    with pytest.raises(ValueError, match="this network is unconditional"):
        plain(torch.zeros(2, 2), torch.zeros(2), torch.zeros(2, dtype=torch.long))


def test_labels_from_every_source(tmp_path):
    from sklearn.datasets import load_digits

    d = make_dataset("digits")
    assert d.class_names == tuple(map(str, range(10)))
    assert torch.equal(d.labels, torch.as_tensor(load_digits().target[:-200]))
    x, y = d.sample_labelled(50, torch.Generator().manual_seed(0))
    x2 = d.sample(50, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)  # the same draws, with their labels
    # the labelled ring: each label is the class of the mode its point sits on
    ring = make_dataset("ring-c4")
    x, y = ring.sample_labelled(500, torch.Generator().manual_seed(0))
    nearest = torch.cdist(x.double(), ring.oracle.means).argmin(1)
    assert torch.equal(ring.oracle.classes[nearest], y) and ring.class_names == ("arc0", "arc1", "arc2", "arc3")
    # CIFAR-10: the label byte
    rng = np.random.default_rng(0)
    write_cifar(tmp_path / "data_batch_1.bin", rng.integers(0, 256, (5, 3, 32, 32)), [3, 1, 4, 1, 5])
    write_cifar(tmp_path / "test_batch.bin", rng.integers(0, 256, (2, 3, 32, 32)), [9, 0])
    c = make_dataset("cifar10", str(tmp_path))
    assert c.labels.tolist() == [3, 1, 4, 1, 5] and c.class_names[3] == "cat"
    assert make_dataset("cifar10", str(tmp_path), "test").labels.tolist() == [9, 0]
    # an image folder of class sub-folders: one class each, sorted by name
    write_pngs(tmp_path / "imgs" / "dogs", rng.integers(0, 256, (3, 8, 8, 1), dtype=np.uint8))
    write_pngs(tmp_path / "imgs" / "cats", rng.integers(0, 256, (2, 8, 8, 1), dtype=np.uint8))
    f = make_dataset("images", str(tmp_path / "imgs"))
    assert f.class_names == ("cats", "dogs") and sorted(f.labels.tolist()) == [0, 0, 1, 1, 1]
    # the images and labels stay paired: a cat picture is labelled "cats"
    from scoresde.training.data import read_image_folder
    cats = read_image_folder(str(tmp_path / "imgs" / "cats"))
    assert all(any(torch.equal(img, cat) for cat in cats) for img in f.images[f.labels == 0])
    # an .npz with a y array (continuous data and integer images)
    np.savez(tmp_path / "pts.npz", x=rng.normal(size=(20, 2)).astype(np.float32), y=np.arange(20) % 3)
    p = make_dataset("file", str(tmp_path / "pts.npz"), holdout=5)
    assert p.class_names == ("0", "1", "2") and p.labels.tolist() == (np.arange(15) % 3).tolist()
    assert make_dataset("file", str(tmp_path / "pts.npz"), "test", holdout=5).labels.tolist() == \
        (np.arange(15, 20) % 3).tolist()
    np.savez(tmp_path / "im.npz", x=rng.integers(0, 256, (4, 8, 8), dtype=np.uint8), y=[1, 0, 1, 0])
    assert make_dataset("file", str(tmp_path / "im.npz")).labels.tolist() == [1, 0, 1, 0]
    # unlabelled sources
    assert make_dataset("ring").class_names is None and make_dataset("moons").class_names is None


def test_bad_labels_are_named(tmp_path):
    np.savez(tmp_path / "neg.npz", x=np.zeros((3, 2), np.float32), y=[0, -1, 2])
    with pytest.raises(ValueError, match=r"array y: class labels must lie in 0…C−1, got -1"):
        make_dataset("file", str(tmp_path / "neg.npz"))
    np.savez(tmp_path / "short.npz", x=np.zeros((3, 2), np.float32), y=[0, 1])
    with pytest.raises(ValueError, match=r"need one class label per sample, shape \(3,\), got \(2,\)"):
        make_dataset("file", str(tmp_path / "short.npz"))
    np.savez(tmp_path / "frac.npz", x=np.zeros((2, 2), np.float32), y=[0.5, 1])
    with pytest.raises(ValueError, match="class labels must be integers, got dtype float64"):
        make_dataset("file", str(tmp_path / "frac.npz"))


def _cond_cfg(data="ring-c4", steps=20, **train):
    return from_dict({"data": {"name": data, "batch_size": 64}, "model": {"hidden": 32, "blocks": 1, "conditional": True},
                      "train": dict(dict(steps=steps, warmup=2, ckpt_every=0, log_every=5), **train)})


def test_a_conditional_config_on_unlabelled_data_is_one_config_error(tmp_path):
    from scoresde.training.trainer import Trainer

    with pytest.raises(ConfigError, match=r"model.conditional = true needs labelled data; data.name = 'moons'"):
        Trainer(_cond_cfg("moons"), str(tmp_path / "a"), progress=False)
    (tmp_path / "c.toml").write_text('[data]\nname = "ring"\n[model]\nconditional = true\n')
    r = CliRunner().invoke(cli, ["train", "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "b")])
    assert r.exit_code == 2 and "needs labelled data; data.name = 'ring'" in r.output
    assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output


def test_conditional_training_drops_labels_resumes_exactly_and_keeps_the_class_names(tmp_path):
    from scoresde.training.checkpoint import load_checkpoint, load_score_model
    from scoresde.training.trainer import Trainer

    cfg = _cond_cfg(label_dropout=0.25)
    tr = Trainer(cfg, str(tmp_path / "probe"), progress=False, previews=False)
    y = tr._drop_labels(torch.zeros(4000, dtype=torch.long))
    assert abs(float((y == 4).double().mean()) - 0.25) < 0.03 and set(y.tolist()) == {0, 4}
    tr.close()
    full = Trainer(cfg, str(tmp_path / "a"), progress=False, previews=False).train()
    first = Trainer(cfg, str(tmp_path / "b"), progress=False, previews=False).train(stop_after=7)
    rest = Trainer(cfg, str(tmp_path / "b"), resume=True, progress=False, previews=False).train()
    assert first + rest == full
    ck = load_checkpoint(str(tmp_path / "a" / "checkpoint.pt"))
    assert ck["class_names"] == ["arc0", "arc1", "arc2", "arc3"]
    m = load_score_model(str(tmp_path / "a" / "checkpoint.pt"))
    assert m.class_names == ("arc0", "arc1", "arc2", "arc3") and m.cond_score_fn is not None
    x, t = torch.randn(5, 2), torch.full((5,), 0.5)
    with torch.no_grad():  # its plain score_fn is the "no label" class
        torch.testing.assert_close(m.score_fn(x, t), m.cond_score_fn(x, t, torch.full((5,), 4)))


@pytest.mark.slow
def test_the_conditional_ring_config_reaches_98_percent_class_accuracy_at_w1_in_20_nfe(tmp_path):
    """configs/ring_c4_cond.toml, shortened to 3000 steps (a few minutes on a shared CPU): every
    class at w = 1 with dpmpp_2m, 20 steps = 20 nfe, has class accuracy >= 98 %."""
    import solvers
    from scoresde.evaluation.metrics import class_metrics
    from scoresde.guidance import guide
    from scoresde.training.checkpoint import load_score_model
    from scoresde.training.config import load_config
    from scoresde.training.trainer import Trainer

    cfg = load_config(os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "ring_c4_cond.toml"))
    cfg.train.steps, cfg.train.ckpt_every = 3000, 0
    Trainer(cfg, str(tmp_path), progress=False, previews=False).train()
    model = load_score_model(str(tmp_path / "checkpoint.pt"))
    for c in model.class_names:
        g = guide(model, c, 1.0)
        with torch.no_grad():
            res = solvers.sample(g.score_fn, g.sde, shape=(2000, 2), solver="dpmpp_2m", steps=20,
                                 generator=torch.Generator().manual_seed(0))
        assert res.nfe == 20
        acc = class_metrics(res.x, model.oracle, g.label)["class_acc"]
        assert acc >= 0.98, (c, acc)


@pytest.mark.parametrize("name, classes", [("ring_c4_cond", 4), ("digits_cond", 10)])
def test_the_conditional_configs_build_a_network_with_one_embedding_per_class_and_no_label(name, classes):
    from scoresde.training.build import build_model
    from scoresde.training.config import load_config

    cfg = load_config(os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", f"{name}.toml"))
    model, data = build_model(cfg)
    assert cfg.model.conditional and cfg.train.label_dropout == 0.1
    assert len(model.class_names) == classes and model.net.label_emb.table.num_embeddings == classes + 1
