"""Checkpoints: checksummed, written atomically, loaded with weights_only=True, validated before use.

File layout: one header line, then the torch.save payload,

    SCORESDE-CHECKPOINT v2 sha256=<64 hex digits of the payload> bytes=<payload length>\\n

so a file copied on its own still carries its checksum, and damage anywhere is found before
torch reads a byte of it.  The payload is a dict: format, version, config (plain dict), shape
(one sample's shape), step, model, ema, optimizer, rng (one generator state per DDP rank),
torch_rng, and, for data without an oracle whose reference sample is small (at most
MAX_REFERENCE_BYTES), reference and reference_name, so metrics need no training data; a file
without them builds its reference from the data when a metric first asks.  Loading then checks every type, and every weight's key, shape and dtype against the
network the checkpoint's own config builds.  Any failure is one CheckpointError line naming
the file and what is wrong.
"""
from __future__ import annotations

import hashlib
import io
import math
import os
import re

import torch

from scoresde._io import atomic_path
from scoresde.resolved import ResolvedModel
from scoresde.training.build import build_score_model
from scoresde.training.config import Config, ConfigError, from_dict

FORMAT, VERSION = "scoresde-checkpoint", 2
MAGIC = b"SCORESDE-CHECKPOINT "
HEADER = re.compile(rb"SCORESDE-CHECKPOINT v([0-9]+) sha256=([0-9a-f]{64}) bytes=([0-9]+)\n")
REQUIRED = ("config", "shape", "step", "model", "ema", "optimizer", "rng", "torch_rng")
MAX_REFERENCE_BYTES = 8 * 2 ** 20  # 20 000 draws of 100-dim vectors, or the 200 held-out digits


class CheckpointError(ValueError):
    pass


def _header(version: int, digest: str, n: int) -> bytes:
    return f"SCORESDE-CHECKPOINT v{version} sha256={digest} bytes={n}\n".encode()


def save_checkpoint(path: str, state: dict) -> None:
    """Header (sha256 and length of the payload) + torch.save payload, to a temp file beside
    `path`, then renamed: a crash never leaves half a file, and damage is always detected."""
    buf = io.BytesIO()
    torch.save(dict(state, format=FORMAT, version=VERSION), buf)
    payload = buf.getvalue()
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(_header(VERSION, hashlib.sha256(payload).hexdigest(), len(payload)))
        f.write(payload)


def _fail(path: str, what: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {path!r} {what}".replace("\n", " "))


def _read(path: str, map_location) -> dict:
    """The payload after the header, its length and its checksum are verified."""
    if os.path.isdir(path):
        raise _fail(path, "is a folder, not a checkpoint file")
    if not os.path.isfile(path):
        raise _fail(path, "is not a regular file" if os.path.exists(path) else "does not exist")
    try:
        with open(path, "rb") as f:
            head = f.readline(200)
            m = HEADER.fullmatch(head)
            n, rest = (int(m[3]) if m else 0), os.fstat(f.fileno()).st_size - len(head)
            payload = f.read(n) if m and n == rest else b""
    except OSError as e:
        raise _fail(path, f"cannot be read ({e.strerror})") from None
    if not head.startswith(MAGIC):
        if head.startswith(b"PK\x03\x04"):
            raise _fail(path, "is a plain torch file with no scoresde header: written by another toolkit "
                              "or by an earlier scoresde (format 1, no checksum); retrain to get a checked file")
        raise _fail(path, f"is not a scoresde checkpoint (it does not begin with the scoresde header); it is not "
                          f"a torch file either (it starts with {head[:12]!r})" if head else "is empty (0 bytes)")
    if not m or head != _header(int(m[1]), m[2].decode(), n):
        raise _fail(path, "has a damaged header line")
    if int(m[1]) != VERSION:
        raise _fail(path, f"has format version {int(m[1])}; this scoresde reads version {VERSION}")
    if rest < n:
        raise _fail(path, f"is truncated: {rest} of its {n} payload bytes are present")
    if rest > n:
        raise _fail(path, f"has {rest - n} bytes more than its payload")
    if len(payload) != n:
        raise _fail(path, "changed while it was being read")
    if hashlib.sha256(payload).hexdigest() != m[2].decode():
        raise _fail(path, "is damaged: the sha256 of its payload does not match the one it was written with")
    try:
        return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as e:  # the bytes are the ones written: only a forged file gets here
        msg = (str(e).strip().splitlines() or [""])[0][:160]
        raise _fail(path, f"passes its checksum but cannot be unpickled safely ({type(e).__name__}: {msg})") from None


def _short(v) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _is_tensor_dict(d) -> bool:
    return isinstance(d, dict) and all(isinstance(k, str) and torch.is_tensor(v) for k, v in d.items())


def _is_state(t) -> bool:
    return torch.is_tensor(t) and t.dtype == torch.uint8 and t.ndim == 1 and t.numel() > 0


def _check_types(path: str, ck) -> Config:
    """Every entry has the type the trainer wrote; returns the checkpoint's (validated) config."""
    if not isinstance(ck, dict):
        raise _fail(path, f"holds a {type(ck).__name__}, not a dict")
    if ck.get("format") != FORMAT or ck.get("version") != VERSION:
        raise _fail(path, f"has no '{FORMAT}' v{VERSION} marker in its payload")
    missing = [k for k in REQUIRED if k not in ck]
    if missing:
        raise _fail(path, f"lacks {', '.join(missing)}")
    if not isinstance(ck["config"], dict):
        raise _fail(path, f"has a config of type {type(ck['config']).__name__}, not a table")
    try:
        cfg = from_dict(ck["config"])
    except ConfigError as e:
        raise _fail(path, f"has an invalid config: {e}") from None
    if isinstance(ck["step"], bool) or not isinstance(ck["step"], int) or ck["step"] < 0:
        raise _fail(path, f"has step {_short(ck['step'])}, not an integer >= 0")
    shape = ck["shape"]
    if not isinstance(shape, (list, tuple)) or not shape or not all(
            isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= 2 ** 20 for s in shape):
        raise _fail(path, f"has sample shape {_short(shape)}, not a list of sizes >= 1")
    for key in ("model", "ema"):
        if not _is_tensor_dict(ck[key]):
            raise _fail(path, f"has {key} of type {type(ck[key]).__name__}, not a dict of named tensors")
    opt = ck["optimizer"]
    if not (isinstance(opt, dict) and isinstance(opt.get("state"), dict) and isinstance(opt.get("param_groups"), list)
            and all(isinstance(g, dict) for g in opt["param_groups"])):
        raise _fail(path, "has an optimizer state that is not {'state': dict, 'param_groups': [dict, ...]}")
    rng = ck["rng"]
    if not (isinstance(rng, list) and rng and all(isinstance(r, (list, tuple)) and len(r) == 2 and
                                                    all(_is_state(s) for s in r) for r in rng)):
        raise _fail(path, "has an rng entry that is not a list of [generator state, generator state] byte tensors")
    threads = ck.get("threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise _fail(path, f"has threads {_short(threads)}, not a whole number >= 1")
    ref = ck.get("reference")
    if ref is not None and not (torch.is_tensor(ref) and ref.dtype == torch.float32 and ref.ndim == len(shape) + 1
                                and ref.shape[0] >= 1 and list(ref.shape[1:]) == list(shape)
                                and bool(torch.isfinite(ref).all()) and isinstance(ck.get("reference_name"), str)):
        raise _fail(path, f"has a reference sample that is not finite float32 data of shape (N, {', '.join(map(str, shape))}) "
                          f"with a reference_name")
    names = ck.get("class_names")
    if names is not None and not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)
                                  and len(set(names)) == len(names)):
        raise _fail(path, f"has class_names {_short(names)}, not a list of distinct names")
    if cfg.model.conditional and names is None:
        raise _fail(path, "has model.conditional = true but no class_names")
    if not _is_state(ck["torch_rng"]):
        raise _fail(path, "has a torch_rng entry that is not a generator state (byte tensor)")
    try:
        torch.Generator().set_state(ck["torch_rng"])
    except RuntimeError:
        raise _fail(path, f"has a torch_rng state of {ck['torch_rng'].numel()} bytes, not a CPU generator's") from None
    return cfg


def _check_weights(path: str, ck: dict, net: torch.nn.Module) -> None:
    """model and ema: the network's keys, shapes and dtypes, finite values; optimizer: one
    parameter group layout and per-parameter state of the parameters' shapes."""
    ref = net.state_dict()
    for key in ("model", "ema"):
        sd = ck[key]
        missing, extra = sorted(set(ref) - set(sd)), sorted(set(sd) - set(ref))
        if missing or extra:
            raise _fail(path, f"has {key} weights that do not fit the network its config builds "
                              f"(missing: {', '.join(missing[:3]) or '-'}; unexpected: {', '.join(extra[:3]) or '-'})")
        for name, want in ref.items():
            got = sd[name]
            if got.shape != want.shape or got.dtype != want.dtype:
                raise _fail(path, f"has {key}.{name} of shape {tuple(got.shape)} {got.dtype}; the network its "
                                  f"config builds needs {tuple(want.shape)} {want.dtype}")
            if got.is_floating_point() and not bool(torch.isfinite(got).all()):
                raise _fail(path, f"has NaN or inf in {key}.{name}")
    params = list(net.parameters())
    opt = ck["optimizer"]
    ids = []
    for g in opt["param_groups"]:
        betas = g.get("betas")
        numbers = [g.get(k) for k in ("lr", "eps", "weight_decay")] + (list(betas) if isinstance(betas, (list, tuple))
                                                                       else [None])
        if not all(isinstance(v, float) and math.isfinite(v) for v in numbers) or len(numbers) != 5:
            raise _fail(path, "has optimizer settings (lr, betas, eps, weight_decay) that are not finite numbers")
        if not isinstance(g.get("params"), list) or not all(type(i) is int for i in g["params"]):
            raise _fail(path, "has an optimizer parameter group without a list of parameter indices")
        ids += g["params"]
    if sorted(ids) != list(range(len(params))):
        raise _fail(path, f"has an optimizer over {len(ids)} parameters, the network has {len(params)}")
    for i, st in opt["state"].items():
        if not (isinstance(i, int) and 0 <= i < len(params) and isinstance(st, dict)):
            raise _fail(path, f"has optimizer state for parameter {_short(i)}, which the network lacks")
        for name, v in st.items():
            ok = torch.is_tensor(v) and v.is_floating_point() and v.shape in (params[i].shape, torch.Size([]))
            if not ok or not bool(torch.isfinite(v).all()):
                raise _fail(path, f"has a bad optimizer state {_short(name)} for parameter {i} (shape, type or NaN)")


def _load(path: str, map_location="cpu", net: torch.nn.Module | None = None):
    path = os.fspath(path)
    ck = _read(path, map_location)
    cfg = _check_types(path, ck)
    model = None
    if net is None:
        try:
            model = build_score_model(cfg, tuple(ck["shape"]),
                                      class_names=ck.get("class_names") if cfg.model.conditional else None)
        except Exception as e:  # a forged config may ask for anything; say so in one line
            raise _fail(path, f"has a config that builds no network for shape {tuple(ck['shape'])} "
                              f"({type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:160]})") from None
        net = model.net
    _check_weights(path, ck, net)
    return ck, cfg, model


def load_checkpoint(path: str, map_location="cpu", net: torch.nn.Module | None = None) -> dict:
    """The checkpoint dict, after its checksum, types and weights were checked (against `net`,
    or the network its own config builds); CheckpointError names the file and the fault."""
    return _load(path, map_location, net)[0]


def reference_payload(cfg: Config, data) -> dict:
    """{reference, reference_name} for a checkpoint of a model trained on `data` (a Dataset)
    under `cfg`: the sample metrics are scored against (data.evaluation_reference) when the
    data have no oracle and it fits in MAX_REFERENCE_BYTES; else {} (it is built on demand)."""
    from scoresde.training.data import evaluation_reference

    if data.oracle is not None:
        return {}
    n = 20000  # evaluation_reference's default size
    table = getattr(data, "table", None)
    have = min(n, table.shape[0]) if table is not None else n
    if have * math.prod(data.shape) * 4 > MAX_REFERENCE_BYTES:  # skip building what would not be kept
        return {}
    ref, name = evaluation_reference(cfg.data, data, n)
    ref = ref.detach().float().cpu().contiguous()
    if ref.numel() * 4 > MAX_REFERENCE_BYTES:
        return {}
    return dict(reference=ref, reference_name=name)


def _lazy_reference(path: str, cfg: Config):
    """The reference a checkpoint without a stored one gets: built from its training data on
    first use; CheckpointError, naming the data file, when they are gone."""
    def load():
        from scoresde.training.data import data_from_config, evaluation_reference

        try:
            return evaluation_reference(cfg.data, data_from_config(cfg.data))
        except (OSError, ValueError) as e:
            raise _fail(path, f"holds no reference sample for sample-quality metrics, and its training data "
                              f"(data.path {cfg.data.path!r}) cannot be read to build one ({e}); restore that "
                              f"file, or sample without metrics") from None
    return load


def load_score_model(path: str, sde=None, device=None, use_ema: bool = True) -> ResolvedModel:
    """A trained checkpoint as a ResolvedModel (EMA weights by default) for sampling/likelihood:
    .score_fn(x, t) = −ε_θ(x, t)/σ(t), .sde, .shape, .step, .data_name, .data_config, and the
    oracle or reference data to score samples against.

    Needs no training data (a reference not stored in the file is built from them only when a
    metric reads .data) and leaves torch's global RNG as it was."""
    from scoresde.training.data import data_from_config

    ck, cfg, model = _load(path)
    if sde is not None and sde.config() != model.sde.config():
        raise CheckpointError(f"checkpoint {path!r} was trained with {model.sde!r}, not {sde!r}; drop --sde")
    model.net.load_state_dict(ck["ema" if use_ema else "model"])
    model.to(device or "cpu").eval()
    # the built-in data sets need no file, and only they have oracles
    oracle = None if cfg.data.path else data_from_config(cfg.data).oracle
    common = dict(oracle=oracle, step=ck["step"], data_name=cfg.data.name, data_config=cfg.data)
    if model.class_names:  # the ScoreModel is its own cond_score_fn(x, t, y); score_fn = its "no label" score
        common.update(cond_score_fn=model, class_names=tuple(model.class_names))
    if oracle is not None:
        return ResolvedModel(path, model, model.sde, tuple(ck["shape"]), **common)
    if "reference" in ck:
        return ResolvedModel(path, model, model.sde, tuple(ck["shape"]), data=ck["reference"],
                             reference_name=ck["reference_name"], **common)
    return ResolvedModel(path, model, model.sde, tuple(ck["shape"]), load_reference=_lazy_reference(path, cfg),
                         **common)
