"""Typed run configurations read from TOML; an unknown key or a wrong type names itself."""
from __future__ import annotations

import dataclasses
import os
import math
import sys
from dataclasses import dataclass, field

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class DataConfig:
    name: str = "ring"              # ring | ring-c4 | ring-c8 | moons | swissroll | checkerboard | digits | file |
                                    # images | cifar10 (labelled: ring-c4/c8, digits, cifar10, an images folder of
                                    # class sub-folders, a .npz with a y array)
    path: str = ""                  # file: a .npy/.npz array (N, ...); images: a folder of PNG/JPEG;
                                    # cifar10: the folder cifar-10-batches-bin (data_batch_*.bin, test_batch.bin)
    batch_size: int = 512           # global batch (split across DDP ranks)
    holdout: int = 0                # file/images: hold out the last k samples (cifar10: test_batch.bin)
    layout: str = "auto"            # an image array's axes: auto | nhwc | nchw
    levels: int = 0                 # 0: 256 for integer arrays, float arrays continuous; L: integer levels 0…L−1
    image_size: int = 0             # 0: as stored; else the model's resolution, reached by `fit`
    fit: str = "crop"               # crop (central square) | resize (central square, antialiased)
    flip: bool = False              # random horizontal flip of training draws


@dataclass
class SDEConfig:
    name: str = "vp"                # vp | subvp | ve
    beta_min: float = 0.1
    beta_max: float = 20.0
    schedule: str = "linear"        # vp only: linear | cosine
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    N: int = 1000


@dataclass
class ModelConfig:
    arch: str = "mlp"               # mlp | unet
    hidden: int = 256               # mlp width
    blocks: int = 4                 # residual blocks (mlp) / per level (unet)
    channels: int = 32              # unet base channels
    channel_mult: list = field(default_factory=lambda: [1, 2])
    attention_resolutions: list = field(default_factory=lambda: [4])
    time_embedding: str = "fourier"  # fourier | sinusoidal
    dropout: float = 0.0
    sigma_data: float = 1.0         # input scaling c_in = 1/√(m²σ_data² + σ²)
    conditional: bool = False       # a class embedding (the data's labels; their count from the data)
    prediction: str = "epsilon"     # what the network predicts: epsilon | x0 | v | denoiser (EDM-preconditioned x0)


@dataclass
class TrainConfig:
    steps: int = 5000
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup: int = 200
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    loss: str = "dsm"               # dsm | ddpm (discrete t, VP only)
    weighting: str = "epsilon"      # the loss weight on the ε-error (losses.eps_weight): epsilon | likelihood |
                                    # min_snr | edm | x0 | v
    snr_gamma: float = 5.0          # γ of weighting = "min_snr"
    label_dropout: float = 0.1      # conditional models: the share of labels replaced by "no label"
    likelihood_weighting: bool = False  # the older spelling of weighting = "likelihood" (kept; the two agree)
    t_eps: float = 1e-5
    log_every: int = 50
    ckpt_every: int = 1000
    preview_every: int = 0          # 0: a preview only at the end
    bf16: bool = True               # autocast on CUDA only
    compile: bool = False           # torch.compile the network; falls back to eager, with a warning, if it fails
    device: str = "auto"
    # the fast path (README "Training on a GPU"); each is right on CUDA and harmless on CPU
    compile_mode: str = "default"   # default | reduce-overhead (CUDA graphs; CUDA only) | max-autotune
    channels_last: bool = True      # U-Nets: weights and inputs in NHWC, cuDNN's and Inductor's fast layout
    fused_optimizer: bool = True    # one fused AdamW kernel (CUDA and CPU) instead of a loop over tensors
    cuda_graph: bool = False        # replay data draw + forward + backward from one CUDA graph (CUDA only)
    data_on_device_gb: float = 4.0  # move a data table up to this size to the training device once; 0: never


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    sde: SDEConfig = field(default_factory=SDEConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def sde_kwargs(self) -> dict:
        s = self.sde
        if s.name == "ve":
            return dict(sigma_min=s.sigma_min, sigma_max=s.sigma_max, N=s.N)
        kw = dict(beta_min=s.beta_min, beta_max=s.beta_max, N=s.N)
        return kw if s.name == "subvp" else dict(kw, schedule=s.schedule)


CHOICES = {
    ("data", "name"): ("ring", "ring-c4", "ring-c8", "moons", "swissroll", "checkerboard", "digits", "file", "images", "cifar10"),
    ("data", "layout"): ("auto", "nhwc", "nchw"),
    ("data", "fit"): ("crop", "resize"),
    ("sde", "name"): ("vp", "subvp", "ve"),
    ("sde", "schedule"): ("linear", "cosine"),
    ("model", "arch"): ("mlp", "unet"),
    ("model", "time_embedding"): ("fourier", "sinusoidal"),
    ("model", "prediction"): ("epsilon", "x0", "v", "denoiser"),
    ("train", "loss"): ("dsm", "ddpm"),
    ("train", "weighting"): ("epsilon", "likelihood", "min_snr", "edm", "x0", "v"),
    ("train", "compile_mode"): ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
}


# The allowed range of every numeric key: (low, high, low_open, high_open[, how to say it]);
# None = unbounded.  Floats must also be finite.  T = 1 for every SDE, hence t_eps in (0, 1).
SEED_MAX = 2 ** 64 - 1
RANGES = {
    ("data", "batch_size"): (1, None, False, False),
    ("data", "holdout"): (0, None, False, False),
    ("data", "levels"): (0, 256, False, False, "0 (automatic) or between 2 and 256"),  # 1: refused below
    ("data", "image_size"): (0, None, False, False),             # 0: as stored
    ("sde", "beta_min"): (0, None, True, False),
    ("sde", "beta_max"): (0, None, True, False),
    ("sde", "sigma_min"): (0, None, True, False),
    ("sde", "sigma_max"): (0, None, True, False),
    ("sde", "N"): (1, None, False, False),
    ("model", "hidden"): (1, None, False, False),
    ("model", "blocks"): (1, None, False, False),
    ("model", "channels"): (1, None, False, False),
    ("model", "channel_mult"): (1, None, False, False),           # each entry
    ("model", "attention_resolutions"): (1, None, False, False),  # each entry
    ("model", "dropout"): (0, 1, False, True),
    ("model", "sigma_data"): (0, None, True, False),
    ("train", "steps"): (1, None, False, False),
    ("train", "lr"): (0, None, True, False),
    ("train", "weight_decay"): (0, None, False, False),
    ("train", "warmup"): (0, None, False, False),
    ("train", "grad_clip"): (0, None, False, False),             # 0: no clipping
    ("train", "ema_decay"): (0, 1, False, True),
    ("train", "seed"): (0, SEED_MAX, False, False),
    ("train", "t_eps"): (0, 1, True, True),
    ("train", "snr_gamma"): (0, None, True, False),
    ("train", "label_dropout"): (0, 1, False, True),
    ("train", "log_every"): (1, None, False, False),
    ("train", "ckpt_every"): (0, None, False, False),            # 0: only at the end
    ("train", "preview_every"): (0, None, False, False),         # 0: only at the end
    ("train", "data_on_device_gb"): (0, None, False, False),
}


class ConfigError(ValueError):
    pass


def _describe(rng) -> str:
    lo, hi, lo_open, hi_open = rng[:4]
    if len(rng) > 4:
        return rng[4]
    if hi is None:
        return f"{'>' if lo_open else '>='} {lo}"
    return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


def _in_range(value, rng) -> bool:
    lo, hi, lo_open, hi_open = rng[:4]
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return (value > lo if lo_open else value >= lo) and (hi is None or (value < hi if hi_open else value <= hi))


def _check(section: str, key: str, value, default):
    where = f"{section}.{key}"
    expected = type(default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if expected is list:
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{where} must be a list of integers, got {value!r}")
    elif not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"{where} must be {expected.__name__}, got {type(value).__name__} {value!r}")
    allowed = CHOICES.get((section, key))
    if allowed and value not in allowed:
        raise ConfigError(f"{where} = {value!r} is not allowed; choose one of: {', '.join(allowed)}")
    rng = RANGES.get((section, key))
    if rng is not None:
        for v in value if expected is list else [value]:
            if not _in_range(v, rng):
                kind = "finite and " if expected is float else ""
                entry = "each entry of " if expected is list else ""
                raise ConfigError(f"{entry}{where} must be {kind}{_describe(rng)}, got {v!r}")
    return value


def _weighting(train: TrainConfig, given: dict) -> None:
    """train.likelihood_weighting = true is weighting = "likelihood"; a config that sets both
    differently is refused.  Afterwards the two keys agree, so a saved config reads back the same."""
    if train.likelihood_weighting:
        if "weighting" in given and train.weighting != "likelihood":
            raise ConfigError(f"train.likelihood_weighting = true contradicts train.weighting = {train.weighting!r}; "
                              f"keep train.weighting alone")
        train.weighting = "likelihood"
    train.likelihood_weighting = train.weighting == "likelihood"


def from_dict(raw: dict) -> Config:
    """Build a Config, rejecting unknown sections/keys and wrong types by name."""
    cfg = Config()
    if not isinstance(raw, dict):
        raise ConfigError("a config must be a table of sections")
    sections = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    for sec, body in raw.items():
        if sec not in sections:
            raise ConfigError(f"unknown config section [{sec}]; allowed: {', '.join(sections)}")
        if not isinstance(body, dict):
            raise ConfigError(f"[{sec}] must be a table of keys, got {body!r}")
        target = sections[sec]
        names = [f.name for f in dataclasses.fields(target)]
        for key, value in body.items():
            if key not in names:
                raise ConfigError(f"unknown key '{sec}.{key}'; allowed in [{sec}]: {', '.join(names)}")
            setattr(target, key, _check(sec, key, value, getattr(target, key)))
    for lo, hi in (("beta_min", "beta_max"), ("sigma_min", "sigma_max")):
        if getattr(cfg.sde, lo) >= getattr(cfg.sde, hi):
            raise ConfigError(f"sde.{lo} must be < sde.{hi}, got {getattr(cfg.sde, lo)} >= {getattr(cfg.sde, hi)}")
    if not cfg.model.channel_mult:
        raise ConfigError("model.channel_mult must list at least one multiplier")
    if cfg.data.levels and not 2 <= cfg.data.levels <= 256:
        raise ConfigError(f"data.levels must be 0 (automatic) or between 2 and 256, got {cfg.data.levels}")
    if cfg.train.cuda_graph and cfg.train.compile and cfg.train.compile_mode in ("reduce-overhead", "max-autotune"):
        raise ConfigError(f"train.cuda_graph and train.compile_mode = {cfg.train.compile_mode!r} both capture CUDA "
                          f"graphs; keep one (compile_mode 'default' or 'max-autotune-no-cudagraphs' combine)")
    _weighting(cfg.train, raw.get("train", {}))
    if cfg.train.loss == "ddpm" and cfg.sde.name != "vp":
        raise ConfigError("train.loss = 'ddpm' (discrete timesteps) needs sde.name = 'vp'")
    return cfg


def load_config(path: str) -> Config:
    """The Config a TOML file describes; a relative data.path is taken from the file's folder
    (not the working folder), and made absolute so a checkpoint records where the data were."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path!r} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path!r} is not valid TOML: {e}") from None
    try:
        cfg = from_dict(raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    if cfg.data.path:
        cfg.data.path = os.path.join(os.path.dirname(os.path.abspath(path)), os.path.expanduser(cfg.data.path))
    return cfg
