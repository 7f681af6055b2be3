"""The trainer: AdamW with warm-up, gradient clipping, EMA, bf16 autocast on CUDA, optional
torch.compile, DDP through torch.distributed, atomic checkpoints and exact resume.

Every random draw of training (batches, t, noise) comes from one torch.Generator per rank whose
state is saved in the checkpoint, so a resumed CPU run reproduces the uninterrupted loss
sequence bit for bit.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time

import torch
from torch import nn

from scoresde._checks import resolve_device
from scoresde._signals import deferred
from scoresde.training.build import build_model
from scoresde.training.checkpoint import CheckpointError, reference_payload, save_checkpoint
from scoresde.training.config import Config
from scoresde.training.fastpath import StepRunner, batch_to, compile_net
from scoresde.training.ema import EMA
from scoresde.training.losses import ddpm_loss, dsm_loss
from scoresde.training.nn import ScoreModel
from scoresde.training.rundir import RunFolder, cut_log
from scoresde.training.state import gather_state, restore_state
from scoresde.training.stopping import StopSignals, agree_to_stop

CKPT = "checkpoint.pt"
PREVIEW_N, PREVIEW_STEPS = 2000, 30  # points (2-D data; images: 64) and Heun steps of a preview
LOG = "log.jsonl"
log = logging.getLogger("scoresde")


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM during Trainer.train: the step in progress finished and a checkpoint
    was written; str() says which step and where."""


def _dist():
    import torch.distributed as dist

    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)


class Trainer:
    """Trainer(cfg, out_dir).train() -> the per-step losses of this call.

    Under torch.distributed (torchrun) each rank draws its own shard of every global batch
    from its own generator; gradients are averaged by DDP; only rank 0 writes files.  Rank 0
    holds the folder's lock (OUT/.lock) from construction until train() returns or close()."""

    def __init__(self, cfg: Config, out_dir: str, device: str | None = None, resume: bool = False,
                 progress: bool = True, previews: bool = True):
        self.cfg, self.out = cfg, out_dir
        self.previews, self.last_preview = previews, None  # previews=False: no preview PNGs at all
        self.rank, self.world = _dist()
        dev = resolve_device(device or cfg.train.device)
        if dev.type == "cuda" and self.world > 1:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", self.rank)))
        self.device = dev
        if cfg.data.batch_size % self.world:
            raise ValueError(f"data.batch_size = {cfg.data.batch_size} is not divisible by {self.world} ranks")
        c = cfg.train
        self.model, self.data = build_model(cfg)
        self.model.to(dev)
        # layout before the optimizer and the EMA are made, so their buffers share it
        self.channels_last = c.channels_last and len(self.data.shape) == 3
        if self.channels_last:
            self.model.net.to(memory_format=torch.channels_last)
        self.bf16 = c.bf16 and dev.type == "cuda"
        # what metrics score against, kept in the checkpoint (drawn before the data move, on the CPU)
        self.reference = reference_payload(cfg, self.data) if self.rank == 0 else {}
        self.data.to(dev, max_bytes=c.data_on_device_gb * 2 ** 30)
        self.ema = EMA(self.model.net, c.ema_decay)
        self.opt = torch.optim.AdamW(self.model.net.parameters(), lr=c.lr, weight_decay=c.weight_decay,
                                     fused=c.fused_optimizer or None)
        # one generator for t and noise (on the device), one for the data (where the data set draws)
        self.gen = torch.Generator(device=dev).manual_seed((c.seed * 1000 + self.rank) % 2 ** 64)
        self.data_gen = torch.Generator(device=self.data.device).manual_seed(
            (c.seed * 1000 + self.rank + 500) % 2 ** 64)
        self.step = 0
        self.resumed_threads: int | None = None  # the CPU thread count the resumed checkpoint was written with
        self.progress = progress and self.rank == 0
        self._runner = self._step_runner()
        self.folder = RunFolder(out_dir, CKPT, owner=self.rank == 0)
        self._open_folder(resume)
        self.saved_step: int | None = self.step if resume else None  # what OUT/checkpoint.pt holds

    def _step_runner(self) -> StepRunner:
        """The network that trains (DDP-wrapped, compiled as asked) and the StepRunner that runs
        one step of it, as a CUDA graph where one can hold the step."""
        c, dev = self.cfg.train, self.device
        self._train_net = self.model.net
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self._train_net = DDP(self.model.net, device_ids=[dev.index] if dev.type == "cuda" else None)
        self._eager_net = self._train_net
        if c.compile:
            self._train_net = compile_net(self._train_net, c.compile_mode, dev)
        self._loss_model = self.model.with_net(self._train_net)
        gens = [self.gen, self.data_gen, torch.default_generator]
        if dev.type == "cuda":
            gens.append(torch.cuda.default_generators[dev.index if dev.index is not None else torch.cuda.current_device()])
        # a whole-step graph needs one rank (NCCL collectives stay eager) and batches drawn on the device
        graph = c.cuda_graph and dev.type == "cuda" and self.world == 1 and self.data.device == dev
        if c.cuda_graph and dev.type == "cuda" and not graph:
            import warnings

            warnings.warn("train.cuda_graph needs one process and a data table on the device "
                          f"(data set {self.data.name!r} draws on {self.data.device}); training without the graph",
                          RuntimeWarning, stacklevel=3)  # the Trainer(...) call
        return StepRunner(self._loss_and_grad, lambda: self.opt.zero_grad(set_to_none=True), gens,
                          compiled=c.compile, on_compile_failure=self._uncompile, graph=graph)

    # -- the run folder and checkpoints -----------------------------------------------------------
    def _open_folder(self, resume: bool) -> None:
        """Lock the folder (rank 0), restore or refuse to overwrite, and cut log.jsonl back to
        the checkpoint's step so no step is logged twice."""
        path = os.path.join(self.out, CKPT)
        self.folder.acquire()
        try:
            if resume:
                if not os.path.exists(path):
                    raise CheckpointError(f"--resume: {path} does not exist (nothing to resume); "
                                          f"start without --resume")
                restore_state(self, path)
            elif os.path.exists(path):
                raise ValueError(f"{path} already exists; pass --resume to continue it, or choose another --out")
            if self.rank == 0:
                cut_log(os.path.join(self.out, LOG), self.step)
        except BaseException:
            self.close()
            raise
        table = self.data.table
        if table is not None and self.cfg.data.batch_size > table.shape[0]:
            log.warning(f"data.batch_size = {self.cfg.data.batch_size} is larger than the data set "
                        f"({table.shape[0]} samples): batches are drawn with replacement")

    def close(self) -> None:
        """Release the run folder's lock (train() does this when it returns)."""
        if hasattr(self, "folder"):
            self.folder.release()

    def __del__(self):
        self.close()

    def state(self) -> dict:
        """The checkpoint payload (every rank must call it under DDP)."""
        return gather_state(self)

    def save(self) -> None:
        st = self.state()  # every rank joins the gather
        if self.rank == 0:
            # a Ctrl-C during the write is acted on once the file is whole and saved_step says so
            with deferred():
                save_checkpoint(os.path.join(self.out, CKPT), st)
                self.saved_step = self.step

    # -- one step ------------------------------------------------------------------------------
    def _lr(self) -> float:
        w = self.cfg.train.warmup
        return self.cfg.train.lr * min(1.0, (self.step + 1) / w) if w > 0 else self.cfg.train.lr

    def _loss_and_grad(self) -> torch.Tensor:
        """Draw a batch, t and noise; the loss; its clipped gradient in .grad.  No host sync, so a
        CUDA graph can hold it (StepRunner)."""
        c = self.cfg.train
        n = self.cfg.data.batch_size // self.world
        y = None
        if self.cfg.model.conditional:
            x0, y = self.data.sample_labelled(n, self.data_gen)
            y = self._drop_labels(y.to(self.device))
        else:
            x0 = self.data.sample(n, self.data_gen)
        x0 = batch_to(x0, self.device, self.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            if c.loss == "ddpm":
                loss = ddpm_loss(self._loss_model, x0, self.gen, c.weighting, c.snr_gamma, labels=y)
            else:
                loss = dsm_loss(self._loss_model, x0, self.gen, c.t_eps, c.weighting, c.snr_gamma, labels=y)
        loss.backward()
        if c.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.net.parameters(), c.grad_clip)
        return loss.detach()

    def _drop_labels(self, y: torch.Tensor) -> torch.Tensor:
        """Each label replaced by "no label" (index C) with probability train.label_dropout, so the
        same network learns the unconditional score that guidance needs (Ho & Salimans 2022)."""
        p = self.cfg.train.label_dropout
        if p == 0:
            return y
        drop = torch.rand(y.shape[0], generator=self.gen, device=self.device) < p
        return torch.where(drop, torch.full_like(y, len(self.data.class_names)), y)

    def _uncompile(self) -> None:
        """The compile fallback: train the eager network (DDP-wrapped where it was)."""
        self._train_net = self._eager_net
        self._loss_model = self.model.with_net(self._eager_net)

    def train_step(self) -> torch.Tensor:
        c = self.cfg.train
        for group in self.opt.param_groups:
            group["lr"] = self._lr()
        if c.compile and c.compile_mode == "reduce-overhead" and self.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
        loss = self._runner()
        self.opt.step()
        self.ema.update(self.step)
        self.step += 1
        return loss

    def ema_model(self) -> ScoreModel:
        """A copy of the ScoreModel carrying the EMA weights (what sampling uses by default)."""
        return self.ema.copy_of(self.model)

    # -- the loop ------------------------------------------------------------------------------
    def train(self, steps: int | None = None, stop_after: int | None = None) -> list[float]:
        """Train up to `steps` (default train.steps) total steps; stop_after=k stops (and
        checkpoints) after k steps of this call, as an interruption would.

        SIGINT or SIGTERM (in the main thread) lets the step in progress finish, writes a
        checkpoint and raises TrainingInterrupted; a second signal stops at once (the last
        checkpoint stays intact).  The folder's lock is held until this returns."""
        from tqdm.auto import tqdm

        c = self.cfg.train
        total = steps or c.steps
        self.folder.acquire()
        losses, pending, agreed = [], [], None
        bar = tqdm(total=total, initial=self.step, desc="train", disable=not self.progress, leave=False)
        t0, s0 = time.perf_counter(), self.step
        logf = open(os.path.join(self.out, LOG), "a") if self.rank == 0 else None
        with StopSignals() as stop:
            def halt():  # under DDP every rank stops at the same step
                return stop.signal if self.world == 1 else agreed

            try:
                while self.step < total and (stop_after is None or len(losses) + len(pending) < stop_after):
                    pending.append(self.train_step())
                    if self.step % c.log_every == 0 or self.step == total or len(pending) >= 64:
                        losses += self._flush(pending, logf, bar, (self.step - s0) / max(time.perf_counter() - t0, 1e-9))
                        pending = []
                        if self.world > 1:  # every rank flushes at the same steps
                            agreed = agree_to_stop(stop.signal, self.device)
                    bar.update(1)
                    if halt():
                        break
                    if c.ckpt_every and self.step % c.ckpt_every == 0:
                        self.save()
                    if self.previews and c.preview_every and self.step % c.preview_every == 0:
                        self.preview()
                losses += torch.stack(pending).float().cpu().tolist() if pending else []
                pending = []
                self.save()
                if halt():
                    stop.committed = True
                    raise TrainingInterrupted(f"{halt()} at step {self.step}: the checkpoint "
                                              f"{os.path.join(self.out, CKPT)} holds steps 1-{self.step}; continue "
                                              f"with --resume")
                if self.previews and self.step >= total and not c.preview_every:
                    self._final_preview()
            except KeyboardInterrupt as e:
                if isinstance(e, TrainingInterrupted) or stop.signal is None:
                    raise
                stop.committed = True  # the second signal: stop now, and say what the checkpoint holds
                raise TrainingInterrupted(self._stopped_at_once(stop.signal)) from None
            finally:
                with deferred():  # the lock must be released even if another Ctrl-C lands here
                    losses += torch.stack(pending).float().cpu().tolist() if pending else []
                    bar.close()
                    if logf:
                        logf.close()
                    self.close()
        return losses

    def _stopped_at_once(self, name: str) -> str:
        where = os.path.join(self.out, CKPT)
        if self.saved_step is None:
            return f"a second {name} at step {self.step} stopped training before any checkpoint was written"
        return (f"a second {name} at step {self.step} stopped training at once: the checkpoint {where} holds "
                f"steps 1-{self.saved_step}; continue with --resume")

    def _flush(self, pending: list, logf, bar, rate: float) -> list[float]:
        """The pending losses as floats (one host sync), checked finite, shown and logged."""
        vals = torch.stack(pending).float().cpu().tolist()
        bad = next((v for v in vals if not math.isfinite(v)), None)
        if bad is not None:
            raise FloatingPointError(f"the loss became {bad} by step {self.step}; lower train.lr "
                                     f"or raise train.grad_clip")
        bar.set_postfix(loss=f"{vals[-1]:.4f}", steps_per_s=f"{rate:.1f}")
        if logf and self.step % self.cfg.train.log_every == 0:
            logf.write(json.dumps(dict(step=self.step, loss=vals[-1], lr=self._lr(), steps_per_s=rate)) + "\n")
            logf.flush()
        return vals

    def _final_preview(self) -> None:
        if self.progress:  # it takes seconds: say what is happening and how to skip it
            from tqdm.auto import tqdm

            tqdm.write(f"end of training: sampling a preview (EMA weights, heun {PREVIEW_STEPS} steps) into "
                       f"{os.path.join(self.out, 'previews')} (previews=False / --no-preview skips it)",
                       file=sys.stderr)
        self.preview()

    def preview(self, n: int = PREVIEW_N, steps: int = PREVIEW_STEPS) -> str | None:
        """Sample from the EMA model (Heun) and save previews/step_<7-digit step>.png."""
        if self.rank != 0:
            return None
        import solvers

        from scoresde.training.figures import save_samples_png

        model = self.ema_model()
        n = n if len(self.data.shape) == 1 else 64
        res = solvers.sample(model, model.sde, shape=(n, *self.data.shape), solver="heun", steps=steps,
                             generator=torch.Generator(device=self.device).manual_seed(0), device=self.device)
        path = os.path.join(self.out, "previews", f"step_{self.step:07d}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        save_samples_png(res.x.float().cpu(), path, title=f"{self.data.name}, step {self.step}, EMA, heun {steps}")
        self.last_preview = path
        return path


def init_distributed() -> bool:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): NCCL on CUDA, else gloo."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return True
    return False
