"""`scoresde train`: train an ε-network."""
from __future__ import annotations

import os
import time

import click

from scoresde.cli._common import CLIError, chosen_threads, threads_option


@click.command("train")
@click.option("--config", "config_path", default=None, type=click.Path(exists=True, dir_okay=False),
              help="TOML run configuration (see configs/) [required for a new run; with --resume, default: the "
                   "checkpoint's own]")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="run folder (checkpoint, log, previews)")
@click.option("--resume", is_flag=True, help="continue from OUT/checkpoint.pt")
@click.option("--device", default=None, metavar="auto|cpu|cuda", help="overrides train.device")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="overrides train.steps (total steps)")
@threads_option
@click.option("--no-preview", is_flag=True, help="skip the preview PNGs (by default one at the end: a few seconds)")
@click.option("--quiet", is_flag=True, help="no progress bar")
def command(config_path, out, resume, device, steps, threads, no_preview, quiet):
    """Train an ε-network by denoising score matching; EMA weights, atomic checkpoints.

    One run per folder: OUT/.lock names the running trainer, and a second one exits 2.
    Ctrl-C or SIGTERM finishes the step in progress, writes a checkpoint and exits 130;
    --resume then continues bit for bit.  Under torchrun (WORLD_SIZE > 1) it trains with DDP;
    only rank 0 writes files.

    \b
    Examples:
      scoresde train --config configs/ring_vp.toml --out runs/ring_vp
      scoresde train --out runs/ring_vp --resume --steps 8000
      torchrun --nproc_per_node 2 -m scoresde.cli train --config configs/digits_vp.toml --out runs/digits
    """
    if config_path is None and not resume:
        raise CLIError("--config is required for a new run (with --resume the checkpoint's config is used)")
    from scoresde.training.trainer import Trainer, init_distributed

    cfg = _config(config_path, out)
    if steps is not None:
        cfg.train.steps = steps
    init_distributed()
    t0 = time.perf_counter()
    trainer = Trainer(cfg, out, device=device, resume=resume, progress=not quiet, previews=not no_preview)
    start = trainer.step
    if start >= cfg.train.steps:
        trainer.close()
        raise CLIError(f"the checkpoint in {out} is already at step {start} >= --steps {cfg.train.steps}")
    # the network's forward pass on one training batch stands in for a training step when timing threads
    import torch

    x_probe = trainer.model.sde.prior_sample((cfg.data.batch_size, *trainer.data.shape),
                                             generator=torch.Generator().manual_seed(0)).to(trainer.device)
    with chosen_threads(threads, trainer.model, x_probe, trainer.device, quiet=quiet or trainer.rank != 0,
                        resumed=trainer.resumed_threads):
        losses = trainer.train()
    wall = time.perf_counter() - t0
    if trainer.rank == 0:
        tail = losses[-min(len(losses), 100):]
        click.echo(f"trained steps {start} -> {trainer.step} on {trainer.device} in {wall:.1f} s "
                   f"({(trainer.step - start) / wall:.1f} steps/s); loss (mean of last {len(tail)}) "
                   f"{sum(tail) / len(tail):.4f}; checkpoint {os.path.join(out, 'checkpoint.pt')}"
                   + (f"; preview {trainer.last_preview}" if trainer.last_preview else ""))




def _config(config_path: str | None, out: str):
    """The run's Config: from the TOML file, or without one (--resume) from OUT's checkpoint."""
    from scoresde.training.config import from_dict, load_config

    if config_path is not None:
        return load_config(config_path)
    from scoresde.training.checkpoint import load_checkpoint
    from scoresde.training.trainer import CKPT

    path = os.path.join(out, CKPT)
    if not os.path.isfile(path):
        raise CLIError(f"--resume without --config takes the config from {path!r}, which does not exist; pass "
                       f"--config to start a new run in {out!r}")
    return from_dict(load_checkpoint(path)["config"])
