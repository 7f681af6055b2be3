"""Networks with the time embedded in every block, and the ScoreModel wrapper.

ScoreModel turns a network that predicts ε, x̂_0 or v into the score s_θ(x, t) = −ε̂(x, t)/σ(t),
where the input is scaled to unit variance, x̃ = x/√(m²σ_data² + σ²) (for VE, x_t has std up to
σ_max), and ε̂ is converted from the output by scoresde.convert.  It is a plain score function for every solver
and for the likelihood code.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from scoresde._checks import bcast
from scoresde.convert import denoiser_coefficients, eps_from_prediction


class GaussianFourierEmbedding(nn.Module):
    """[sin(2πWt), cos(2πWt)] with fixed random W ~ N(0, scale²) (Tancik et al.; score_sde)."""

    def __init__(self, dim: int, scale: float = 16.0):
        super().__init__()
        self.register_buffer("W", torch.randn(dim // 2, generator=torch.Generator().manual_seed(0)) * scale)

    def forward(self, t):
        # Stays in t's dtype (fp32) under autocast: the phases reach 2π·16·4 ≈ 400 rad, where bf16's
        # 8-bit mantissa would leave nothing of sin/cos.  The MLP that follows may run in bf16.
        proj = 2 * math.pi * t[:, None] * self.W[None].to(t.dtype)
        return torch.cat([proj.sin(), proj.cos()], -1)


class SinusoidalEmbedding(nn.Module):
    """Transformer positional features of 1000·t (DDPM's timestep embedding)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t):
        half = self.dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=t.dtype) / half)
        args = 1000 * t[:, None] * freqs[None]
        return torch.cat([args.sin(), args.cos()], -1)


def time_embedding(kind: str, dim: int) -> nn.Module:
    if kind == "fourier":
        emb = GaussianFourierEmbedding(dim)
    elif kind == "sinusoidal":
        emb = SinusoidalEmbedding(dim)
    else:
        raise ValueError(f"time_embedding must be 'fourier' or 'sinusoidal', got {kind!r}")
    return nn.Sequential(emb, nn.Linear(dim, dim * 2), nn.SiLU(), nn.Linear(dim * 2, dim))


class LabelEmbedding(nn.Module):
    """A learned vector per class, added to the time embedding; index C is the "no label" class
    (what label dropout trains, and what classifier-free guidance subtracts).  y None: all ∅."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)

    def forward(self, temb: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if y is None:
            y = torch.full((temb.shape[0],), self.num_classes, dtype=torch.long, device=temb.device)
        return temb + self.table(y).to(temb.dtype)


def _with_label(label_emb: "LabelEmbedding | None", temb: torch.Tensor, y) -> torch.Tensor:
    if label_emb is None:
        if y is not None:
            raise ValueError("this network is unconditional (num_classes = 0); it takes no class labels")
        return temb
    return label_emb(temb, y)


class ResidualMLPBlock(nn.Module):
    def __init__(self, hidden: int, tdim: int, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.temb = nn.Linear(tdim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.drop = nn.Dropout(dropout)

    def forward(self, h, temb):
        a = self.fc1(nn.functional.silu(self.norm(h))) + self.temb(temb)
        return h + self.fc2(self.drop(nn.functional.silu(a)))


class MLP(nn.Module):
    """Network for vector data: input layer, residual blocks each fed the time embedding (plus,
    with num_classes = C > 0, a learned class embedding; forward(x, t, y) with y (B,) in 0 … C)."""

    def __init__(self, dim: int, hidden: int = 256, blocks: int = 4, time_embedding_kind: str = "fourier",
                 dropout: float = 0.0, num_classes: int = 0):
        super().__init__()
        self.temb = time_embedding(time_embedding_kind, hidden)
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(ResidualMLPBlock(hidden, hidden, dropout) for _ in range(blocks))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, dim))
        # made last, so the other layers draw the same initial weights as an unconditional network's
        self.label_emb = LabelEmbedding(num_classes, hidden) if num_classes else None

    def forward(self, x, t, y=None):
        temb = _with_label(self.label_emb, self.temb(t), y)
        h = self.inp(x.flatten(1))
        for blk in self.blocks:
            h = blk(h, temb)
        return self.out(h).reshape(x.shape)


def _groups(ch: int) -> int:
    return math.gcd(ch, 8)


class GroupNorm(nn.GroupNorm):
    """GroupNorm that runs in the dtype of its input: y = (x − μ_g)/√(σ_g² + eps)·γ + β.

    CUDA autocast lists group_norm among the float32 ops, so under bf16 autocast every norm of a
    U-Net would cast its bf16 input up to fp32, normalise at twice the memory traffic, hand fp32
    to SiLU, and the next convolution would cast back down: two casts and an fp32 round trip per
    norm.  The kernel accumulates μ and σ² in fp32 whatever the input dtype, so running it on
    bf16 loses nothing that the following bf16 convolution would keep.  The parameters stay
    fp32 (the optimizer's master copy); only their use is cast.  fp32/fp64 inputs take the stock
    path unchanged, so CPU training is bit-for-bit what nn.GroupNorm gives."""

    def forward(self, x):
        if x.dtype in (torch.float32, torch.float64):
            return super().forward(x)
        with torch.autocast(x.device.type, enabled=False):
            return nn.functional.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype),
                                            self.eps)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, tdim: int, dropout: float = 0.0):
        super().__init__()
        self.n1, self.c1 = GroupNorm(_groups(cin), cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.t = nn.Linear(tdim, cout)
        self.n2, self.c2 = GroupNorm(_groups(cout), cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, temb):
        h = self.c1(nn.functional.silu(self.n1(x))) + self.t(temb)[:, :, None, None]
        h = self.c2(self.drop(nn.functional.silu(self.n2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    def __init__(self, ch: int, heads: int = 1):
        super().__init__()
        self.norm, self.qkv, self.proj = GroupNorm(_groups(ch), ch), nn.Conv2d(ch, 3 * ch, 1), nn.Conv2d(ch, ch, 1)
        self.heads = heads

    def forward(self, x):
        # Tokens are the H·W positions, features the channels (split as 3 × heads × C/heads).  Going
        # through the (B, H, W, C) view keeps a channels_last tensor copy-free, and gives
        # scaled_dot_product_attention the unit-stride last dimension its fused kernels need.
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).permute(0, 2, 3, 1).reshape(B, H * W, 3, self.heads, C // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        h = nn.functional.scaled_dot_product_attention(q, k, v)
        return x + self.proj(h.transpose(1, 2).reshape(B, H, W, C).permute(0, 3, 1, 2))


class UNet(nn.Module):
    """Compact U-Net: residual blocks with group norm and the time embedding (plus a class
    embedding when num_classes > 0, as in MLP), attention at the resolutions listed, average-pool
    down / nearest up, skip connections per block."""

    def __init__(self, in_ch: int = 1, resolution: int = 8, channels: int = 32, channel_mult=(1, 2),
                 blocks: int = 2, attention_resolutions=(4,), time_embedding_kind: str = "fourier",
                 dropout: float = 0.0, num_classes: int = 0):
        super().__init__()
        tdim = channels * 4
        self.temb = time_embedding(time_embedding_kind, tdim)
        self.inp = nn.Conv2d(in_ch, channels, 3, padding=1)
        self.down, skips, ch, res = nn.ModuleList(), [channels], channels, resolution
        for li, mult in enumerate(channel_mult):
            for _ in range(blocks):
                self.down.append(nn.ModuleList([ResBlock(ch, channels * mult, tdim, dropout),
                                                Attention(channels * mult) if res in attention_resolutions
                                                else nn.Identity()]))
                ch = channels * mult
                skips.append(ch)
            if li < len(channel_mult) - 1:
                self.down.append(nn.AvgPool2d(2))
                res //= 2
                skips.append(ch)
        self.mid = nn.ModuleList([ResBlock(ch, ch, tdim, dropout), Attention(ch), ResBlock(ch, ch, tdim, dropout)])
        self.up = nn.ModuleList()
        for li, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(blocks + 1):
                self.up.append(nn.ModuleList([ResBlock(ch + skips.pop(), channels * mult, tdim, dropout),
                                              Attention(channels * mult) if res in attention_resolutions
                                              else nn.Identity()]))
                ch = channels * mult
            if li > 0:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
                res *= 2
        self.out = nn.Sequential(GroupNorm(_groups(ch), ch), nn.SiLU(), nn.Conv2d(ch, in_ch, 3, padding=1))
        self.label_emb = LabelEmbedding(num_classes, tdim) if num_classes else None  # last: see MLP

    def forward(self, x, t, y=None):
        temb = _with_label(self.label_emb, self.temb(t), y)
        h = self.inp(x)
        hs = [h]
        for layer in self.down:
            if isinstance(layer, nn.ModuleList):
                h = layer[1](layer[0](h, temb))
            else:
                h = layer(h)
            hs.append(h)
        h = self.mid[2](self.mid[1](self.mid[0](h, temb)), temb)
        for layer in self.up:
            if isinstance(layer, nn.ModuleList):
                h = layer[1](layer[0](torch.cat([h, hs.pop()], 1), temb))
            else:
                h = layer(h)
        return self.out(h)


#: what a trained network can predict (scoresde.convert's maps, and EDM's preconditioned denoiser)
TRAINED_PREDICTIONS = ("epsilon", "x0", "v", "denoiser")


class ScoreModel(nn.Module):
    """s_θ(x, t) = −ε̂/σ(t), where the network F sees x/c with c = √(m²σ_data² + σ²) and predicts
    `prediction` ('epsilon', 'x0' or 'v'); ε̂ = eps_from_prediction(prediction, F, x, m, σ) is the one
    conversion (scoresde.convert), so every solver and the likelihood see a plain score_fn(x, t).
    'denoiser' is EDM's preconditioned x̂_0 = a·x + b·F (convert.denoiser_coefficients), converted
    the same way as an x̂_0."""

    def __init__(self, net: nn.Module, sde, sigma_data: float = 1.0, prediction: str = "epsilon"):
        super().__init__()
        self.net, self.sde, self.sigma_data = net, sde, float(sigma_data)
        if prediction not in TRAINED_PREDICTIONS:
            raise ValueError(f"prediction must be one of {', '.join(map(repr, TRAINED_PREDICTIONS))}, got {prediction!r}")
        self.prediction = prediction
        self.class_names = None  # a conditional model's classes (set by build_score_model)

    def with_net(self, net: nn.Module) -> "ScoreModel":
        """The same parameterisation around another network (a DDP-wrapped or compiled one)."""
        other = ScoreModel(net, self.sde, self.sigma_data, self.prediction)
        other.class_names = self.class_names
        return other

    def output(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """F_θ(x/c, t[, y]): the network's raw prediction of `self.prediction` at x_t = x, for class
        labels y (B,) when the network is conditional (y None: its "no label" class)."""
        m, s = torch.exp(self.sde.log_mean_coef(t)), self.sde.std(t)
        x_in = bcast(torch.rsqrt(m ** 2 * self.sigma_data ** 2 + s ** 2), x) * x
        return self.net(x_in, t) if y is None else self.net(x_in, t, y)

    def eps(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """ε̂_θ(x, t[, y]), converted from the network's output."""
        out = self.output(x, t, y)
        if self.prediction == "epsilon":
            return out
        # in x's precision (fp32) when a bf16 network output would lose the difference x − m·x̂_0
        dtype = torch.promote_types(out.dtype, x.dtype)
        m, s = torch.exp(self.sde.log_mean_coef(t)), self.sde.std(t)
        out, x = out.to(dtype), x.to(dtype)
        if self.prediction == "denoiser":
            a, b = denoiser_coefficients(m, s, self.sigma_data)
            return eps_from_prediction("x0", bcast(a.to(dtype), x) * x + bcast(b.to(dtype), x) * out, x, m, s)
        return eps_from_prediction(self.prediction, out, x, m, s)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The score −ε̂/σ(t) (of p_t(x | y) for a conditional network given labels y)."""
        eps = self.eps(x, t, y)
        return -eps / bcast(self.sde.std(t).to(eps.dtype), eps)
