"""Training throughput of Trainer.train_step: steps/s, img/s, achieved TFLOP/s and MFU.

    python experiments/train_throughput.py             # CUDA: both U-Nets, batch 128 and 512, every variant
    python experiments/train_throughput.py --quick     # CPU: the digits U-Net, batch 32, a few steps

Models: `digits` is configs/digits_vp.toml's U-Net (32 channels, mult 1-2, 1 block, attention at
4×4; 0.70 M parameters) on the 8×8 digits; `unet33m` is the CIFAR-sized U-Net of issue 9
(128 channels, mult 1-2-2-2, 2 blocks, attention at 16×16; configs/cifar10_vp.toml without its
dropout and flips) on 4096 random uint8 3×32×32 images (the data do not change the arithmetic).  Variants: `fp32 eager` is the trainer
as it was (NCHW, AdamW loop, no autocast); `fp32 fast` adds channels_last and fused AdamW;
`bf16` adds bf16 autocast; `+compile` torch.compile (default mode); `+graph` the whole-step
CUDA graph (train.cuda_graph).

FLOPs per step: torch.utils.flop_counter.FlopCounterMode over one fp32 forward + backward of the
network (convolutions, matmuls, attention; elementwise work and the optimizer are not counted,
as usual for MFU).  Peak: a bf16 matmul (fp32 on CPU) timed in the same run; MFU = achieved/peak.
A step is timed between synchronisations after warm-up steps (which include compilation and
graph capture; the first step's time is reported separately).
"""
import argparse
import gc
import os
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]

from _util import machine, markdown_table, out_path  # noqa: E402
from scoresde._io import write_csv, write_json, write_text  # noqa: E402
from scoresde.training.config import from_dict  # noqa: E402
from scoresde.training.losses import dsm_loss  # noqa: E402
from scoresde.training.build import build_model  # noqa: E402
from scoresde.training.trainer import Trainer  # noqa: E402

MODELS = {
    "digits": dict(data={"name": "digits"},
                   model={"arch": "unet", "channels": 32, "channel_mult": [1, 2], "blocks": 1,
                          "attention_resolutions": [4]}),
    "unet33m": dict(data={"name": "file"},
                    model={"arch": "unet", "channels": 128, "channel_mult": [1, 2, 2, 2], "blocks": 2,
                           "attention_resolutions": [16]}),
}
VARIANTS = {
    "fp32 eager": dict(bf16=False, channels_last=False, fused_optimizer=False),
    "fp32 fast": dict(bf16=False),
    "fp32+compile": dict(bf16=False, compile=True),
    "bf16": dict(bf16=True),
    "bf16+compile": dict(bf16=True, compile=True),
    "bf16+graph": dict(bf16=True, cuda_graph=True),
    "bf16+compile+graph": dict(bf16=True, compile=True, cuda_graph=True),
}
CUDA_ONLY = ("bf16", "graph")  # autocast and graphs are CUDA-only in the trainer: on CPU they equal fp32
COLS = ["model", "params_M", "batch", "variant", "first_step_s", "steps_per_s", "img_per_s", "gflop_per_step",
        "tflops", "mfu_pct", "note"]
FMT = {"params_M": "{:.2f}", "first_step_s": "{:.2f}", "steps_per_s": "{:.2f}", "img_per_s": "{:.0f}",
       "gflop_per_step": "{:.1f}", "tflops": "{:.3g}", "mfu_pct": "{:.1f}"}


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def peak_tflops(dev, seconds: float = 2.0) -> tuple[float, str]:
    """Dense matmul rate: bf16 8192² on CUDA, fp32 1024² on CPU (2n³ flops per product)."""
    n, dtype = (8192, torch.bfloat16) if dev.type == "cuda" else (1024, torch.float32)
    g = torch.Generator(device=dev).manual_seed(0)
    a, b = (torch.randn(n, n, device=dev, dtype=dtype, generator=g) for _ in range(2))
    c = torch.empty_like(a)
    for _ in range(3):
        torch.mm(a, b, out=c)
    sync(dev)
    iters, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(10):
            torch.mm(a, b, out=c)
        iters += 10
        sync(dev)
    return 2 * n ** 3 * iters / (time.perf_counter() - t0) / 1e12, f"{str(dtype).split('.')[-1]} matmul {n}²"


def make_cfg(model: str, batch: int, variant: dict, device: str, data_path: str):
    spec = MODELS[model]
    data = dict(spec["data"], batch_size=batch)
    if data["name"] == "file":
        data["path"] = data_path
    return from_dict({"data": data, "model": spec["model"],
                      "train": dict(dict(steps=10 ** 6, warmup=100, ckpt_every=0, device=device), **variant)})


def flops_per_step(cfg, dev) -> tuple[float, float]:
    """(FLOPs of one forward + backward at this batch, parameters in millions)."""
    from torch.utils.flop_counter import FlopCounterMode

    model, data = build_model(cfg)
    model.to(dev)
    g = torch.Generator(device=dev).manual_seed(0)
    x = data.sample(cfg.data.batch_size, torch.Generator().manual_seed(0)).to(dev)
    with FlopCounterMode(display=False) as fc:
        dsm_loss(model, x, g).backward()
    return float(fc.get_total_flops()), sum(p.numel() for p in model.net.parameters()) / 1e6


def warm_trainer(cfg, dev, out: str, warmup: int) -> tuple[Trainer, dict]:
    """A Trainer after `warmup` steps (compilation, graph capture), with what happened on the way."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tr = Trainer(cfg, out, progress=False)
        sync(dev)
        t0 = time.perf_counter()
        tr.train_step()
        sync(dev)
        first = time.perf_counter() - t0
        for _ in range(warmup - 1):
            tr.train_step()
        sync(dev)
    notes = [str(w.message).split(";")[0] for w in caught if issubclass(w.category, RuntimeWarning)]
    if cfg.train.cuda_graph:
        notes.append("graph captured" if tr._runner.captured else "no graph")
    return tr, dict(first_step_s=first, note="; ".join(notes))


def steps_per_s(tr: Trainer, dev, steps: int) -> float:
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = tr.train_step()
    sync(dev)
    dt = time.perf_counter() - t0
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss {float(loss)}")
    return steps / dt


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true",
                    help="CPU-sized run: digits only, batch 32, fp32 eager vs fp32 fast, 5 timed steps")
    ap.add_argument("--models", default=None, help="comma list of " + ", ".join(MODELS))
    ap.add_argument("--batches", default=None, help="comma list, default 128,512 (32 with --quick)")
    ap.add_argument("--variants", default=None, help="comma list of: " + ", ".join(VARIANTS))
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 15, 2 with --quick)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per repeat (default 50, 5 with --quick)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="the variants are timed round-robin this many times; the median is reported")
    args = ap.parse_args()
    dev = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                       "cpu" if args.device == "auto" else args.device)
    models = (args.models or ("digits" if args.quick else "digits,unet33m")).split(",")
    batches = [int(b) for b in (args.batches or ("32" if args.quick else "128,512")).split(",")]
    names = (args.variants or ("fp32 eager,fp32 fast" if args.quick else ",".join(VARIANTS))).split(",")
    if dev.type != "cuda":
        skipped = [v for v in names if any(k in v for k in CUDA_ONLY)]
        names = [v for v in names if v not in skipped]
        if skipped:
            print(f"(on {dev.type} the trainer uses neither autocast nor CUDA graphs: skipping {', '.join(skipped)})")
    warmup = args.warmup or (2 if args.quick else 15)
    steps = args.steps or (5 if args.quick else 50)
    for m in models + names:
        if m not in MODELS and m not in VARIANTS:
            raise SystemExit(f"unknown model or variant {m!r}; models: {', '.join(MODELS)}; variants: {', '.join(VARIANTS)}")

    peak, peak_what = peak_tflops(dev)
    header = (f"{machine()}; load average {os.getloadavg()[0]:.1f}\npeak {peak:.4g} TFLOP/s ({peak_what}, this run); "
              f"torch {torch.__version__}, CUDA {torch.version.cuda}; warm-up {warmup}, timed {steps} steps × "
              f"{args.repeats} repeats (median)")
    print(header, flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data_path = os.path.join(tmp, "noise32.npy")  # CIFAR-shaped uint8 images: the same device pipeline
        np.save(data_path, np.random.default_rng(0).integers(0, 256, (4096, 32, 32, 3), dtype=np.uint8))
        for model in models:
            for batch in batches:
                flops, params = flops_per_step(make_cfg(model, batch, {}, str(dev), data_path), dev)
                group, live, rates = [], {}, {}
                for name in names:
                    row = dict(model=model, params_M=params, batch=batch, variant=name, gflop_per_step=flops / 1e9)
                    try:
                        live[name], info = warm_trainer(make_cfg(model, batch, VARIANTS[name], str(dev), data_path),
                                                        dev, os.path.join(tmp, name), warmup)
                        row.update(info)
                    except Exception as e:  # noqa: BLE001 - one failing variant must not hide the others
                        row["note"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
                    group.append(row)
                # round-robin, so that a change of machine load hits every variant alike
                for _ in range(args.repeats):
                    for name, tr in list(live.items()):
                        try:
                            rates.setdefault(name, []).append(steps_per_s(tr, dev, steps))
                        except Exception as e:  # noqa: BLE001
                            next(r for r in group if r["variant"] == name)["note"] = f"failed: {type(e).__name__}"
                            del live[name]
                for row in group:
                    if row["variant"] in live:
                        row["steps_per_s"] = float(np.median(rates[row["variant"]]))
                        row["img_per_s"] = row["steps_per_s"] * batch
                        row["tflops"] = flops * row["steps_per_s"] / 1e12
                        row["mfu_pct"] = 100 * row["tflops"] / peak
                    print(markdown_table([row], COLS, FMT).splitlines()[-1], flush=True)
                rows += group
                del live
                gc.collect()
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
                torch._dynamo.reset()
    table = markdown_table(rows, COLS, FMT)
    print("\n" + table)
    write_text(out_path("train_throughput.md"), header + "\n\n" + table + "\n")
    write_csv(out_path("train_throughput.csv"), rows)
    write_json(out_path("train_throughput.json"), dict(machine=machine(), peak_tflops=peak, peak=peak_what,
                                                        device=str(dev), rows=rows))


if __name__ == "__main__":
    main()
