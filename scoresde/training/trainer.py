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
import signal
import sys
import threading
import time

import torch
from torch import nn

from scoresde._checks import resolve_device
from scoresde._io import RunLock, remove_temps, write_text
from scoresde.training.build import build_model
from scoresde.training.checkpoint import CheckpointError, load_checkpoint, reference_payload, save_checkpoint
from scoresde.training.config import Config
from scoresde.training.fastpath import StepRunner, batch_to, compile_net
from scoresde.training.losses import ddpm_loss, dsm_loss
from scoresde.training.nn import ScoreModel

CKPT = "checkpoint.pt"
PREVIEW_N, PREVIEW_STEPS = 2000, 30  # points (2-D data; images: 64) and Heun steps of a preview
# keys a resumed run may change: the length, and the switches that change speed, not the model
# (not where the data are drawn: a CPU generator's state does not continue on a CUDA one)
RESUMABLE = ("train.steps", "train.bf16", "train.compile", "train.compile_mode", "train.channels_last",
             "train.fused_optimizer", "train.cuda_graph")
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
        self._reference = reference_payload(cfg, self.data) if self.rank == 0 else {}
        self.data.to(dev, max_bytes=c.data_on_device_gb * 2 ** 30)
        self.ema = [p.detach().clone() for p in self.model.net.parameters()]
        self.opt = torch.optim.AdamW(self.model.net.parameters(), lr=c.lr, weight_decay=c.weight_decay,
                                     fused=c.fused_optimizer or None)
        # one generator for t and noise (on the device), one for the data (where the data set draws)
        self.gen = torch.Generator(device=dev).manual_seed((c.seed * 1000 + self.rank) % 2 ** 64)
        self.data_gen = torch.Generator(device=self.data.device).manual_seed(
            (c.seed * 1000 + self.rank + 500) % 2 ** 64)
        self.step = 0
        self.progress = progress and self.rank == 0
        self._train_net = self.model.net
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self._train_net = DDP(self.model.net, device_ids=[dev.index] if dev.type == "cuda" else None)
        self._eager_net = self._train_net
        if c.compile:
            self._train_net = compile_net(self._train_net, c.compile_mode, dev)
        self._loss_model = ScoreModel(self._train_net, self.model.sde, self.model.sigma_data)
        gens = [self.gen, self.data_gen, torch.default_generator]
        if dev.type == "cuda":
            gens.append(torch.cuda.default_generators[dev.index if dev.index is not None else torch.cuda.current_device()])
        # a whole-step graph needs one rank (NCCL collectives stay eager) and batches drawn on the device
        graph = c.cuda_graph and dev.type == "cuda" and self.world == 1 and self.data.device == dev
        if c.cuda_graph and dev.type == "cuda" and not graph:
            import warnings

            warnings.warn("train.cuda_graph needs one process and a data table on the device "
                          f"(data set {self.data.name!r} draws on {self.data.device}); training without the graph",
                          RuntimeWarning, stacklevel=2)
        self._runner = StepRunner(self._loss_and_grad, lambda: self.opt.zero_grad(set_to_none=True), gens,
                                  compiled=c.compile, on_compile_failure=self._uncompile, graph=graph)
        self._open_folder(resume)

    # -- the run folder --------------------------------------------------------------------------
    def _open_folder(self, resume: bool) -> None:
        """Lock the folder (rank 0; a second trainer or --resume is refused, naming the holder),
        remove a killed writer's temp files, restore or refuse to overwrite, and cut log.jsonl
        back to the checkpoint's step so no step is logged twice."""
        path = os.path.join(self.out, CKPT)
        self._lock, self._ckpt_seen = None, None
        self._acquire()
        try:
            if resume:
                if not os.path.exists(path):
                    raise CheckpointError(f"--resume: {path} does not exist (nothing to resume); "
                                          f"start without --resume")
                self._restore(path)
            elif os.path.exists(path):
                raise ValueError(f"{path} already exists; pass --resume to continue it, or choose another --out")
            if self.rank == 0:
                self._cut_log()
        except BaseException:
            self.close()
            raise
        table = self.data.table
        if table is not None and self.cfg.data.batch_size > table.shape[0]:
            log.warning(f"data.batch_size = {self.cfg.data.batch_size} is larger than the data set "
                        f"({table.shape[0]} samples): batches are drawn with replacement")

    def _acquire(self) -> None:
        if self.rank != 0 or self._lock is not None:
            return
        lock = RunLock(self.out).acquire()
        if lock.stale:
            log.warning(f"{self.out}: took over a stale lock ({lock.stale}; that process is gone)")
        removed = remove_temps(self.out, only_dead=False) + remove_temps(os.path.join(self.out, "previews"),
                                                                         only_dead=False)
        if removed:
            log.warning(f"{self.out}: removed {len(removed)} temp file(s) left by a killed writer")
        path = os.path.join(self.out, CKPT)
        seen = self._fingerprint(path)
        if self._ckpt_seen is not None and seen != self._ckpt_seen:
            lock.release()
            raise CheckpointError(f"{path} was changed by another run since this trainer last saved it; "
                                  f"start a new Trainer with resume=True")
        self._lock = lock

    @staticmethod
    def _fingerprint(path: str):
        try:
            st = os.stat(path)
            return st.st_mtime_ns, st.st_size, st.st_ino
        except FileNotFoundError:
            return None

    def _cut_log(self) -> None:
        """Keep the log lines of steps <= self.step (a fresh run keeps none)."""
        path = os.path.join(self.out, LOG)
        if not os.path.exists(path):
            return
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines(keepends=True)
        keep = []
        for line in lines:
            try:
                ok = line.endswith("\n") and json.loads(line)["step"] <= self.step
            except (ValueError, KeyError, TypeError):
                ok = False  # a line cut short by a kill
            if ok:
                keep.append(line)
        if keep != lines:
            write_text(path, "".join(keep))

    def close(self) -> None:
        """Release the run folder's lock (train() does this when it returns)."""
        lock, self._lock = getattr(self, "_lock", None), None
        if lock is not None:
            self._ckpt_seen = self._fingerprint(os.path.join(self.out, CKPT))
            lock.release()

    def __del__(self):
        self.close()

    # -- checkpoints --------------------------------------------------------------------------
    def state(self) -> dict:
        import torch.distributed as dist

        rng = [self.gen.get_state().cpu(), self.data_gen.get_state()]
        rngs = [rng]
        if self.world > 1:
            rngs = [None] * self.world
            dist.all_gather_object(rngs, rng)
        names = [n for n, _ in self.model.net.named_parameters()]
        ema = dict(self.model.net.state_dict())
        ema.update({n: e.detach().cpu() for n, e in zip(names, self.ema)})
        return dict(config=self.cfg.to_dict(), shape=list(self.data.shape), step=self.step,
                    model={k: v.detach().cpu() for k, v in self.model.net.state_dict().items()},
                    ema={k: v.detach().cpu() for k, v in ema.items()}, optimizer=self.opt.state_dict(),
                    rng=rngs, torch_rng=torch.get_rng_state(), **self._reference)

    def save(self) -> None:
        st = self.state()  # every rank joins the gather
        if self.rank == 0:
            save_checkpoint(os.path.join(self.out, CKPT), st)

    def _restore(self, path: str) -> None:
        ckpt = load_checkpoint(path)  # checksum, types, and weights against its own config
        if ckpt["config"] != self.cfg.to_dict():
            mine = self.cfg.to_dict()
            diff = [f"{s}.{k}" for s in mine for k in mine[s] if ckpt["config"].get(s, {}).get(k) != mine[s][k]]
            if any(k not in RESUMABLE for k in diff):
                raise CheckpointError(f"{path} was written with a different config ({', '.join(diff)}); "
                                      f"resume with the same config (only {', '.join(RESUMABLE)} may change)")
        if tuple(ckpt["shape"]) != tuple(self.data.shape):
            raise CheckpointError(f"{path} was written for samples of shape {tuple(ckpt['shape'])}; the data "
                                  f"now have shape {tuple(self.data.shape)}")
        if len(ckpt["rng"]) != self.world:
            raise CheckpointError(f"{path} was written by {len(ckpt['rng'])} rank(s), this run has {self.world}")
        self.model.net.load_state_dict(ckpt["model"])
        names = [n for n, _ in self.model.net.named_parameters()]
        for e, n in zip(self.ema, names):
            e.copy_(ckpt["ema"][n])
        self.opt.load_state_dict(ckpt["optimizer"])
        for p, st in self.opt.state.items():  # moments in the parameter's layout (the fused kernel needs it)
            for k, v in st.items():
                if torch.is_tensor(v) and v.shape == p.shape:
                    st[k] = torch.empty_like(p).copy_(v)
        loss_state, data_state = ckpt["rng"][self.rank]
        try:  # generator states are CPU byte tensors for CUDA generators too
            self.gen.set_state(loss_state)
            self.data_gen.set_state(data_state)
        except RuntimeError:
            raise CheckpointError(f"{path} holds generator states of another device type than {self.device.type}; "
                                  f"resume on the kind of device it was written on") from None
        torch.set_rng_state(ckpt["torch_rng"])
        self.step = int(ckpt["step"])

    # -- one step ------------------------------------------------------------------------------
    def _lr(self) -> float:
        w = self.cfg.train.warmup
        return self.cfg.train.lr * min(1.0, (self.step + 1) / w) if w > 0 else self.cfg.train.lr

    def _loss_and_grad(self) -> torch.Tensor:
        """Draw a batch, t and noise; the loss; its clipped gradient in .grad.  No host sync, so a
        CUDA graph can hold it (StepRunner)."""
        c = self.cfg.train
        x0 = batch_to(self.data.sample(self.cfg.data.batch_size // self.world, self.data_gen), self.device,
                      self.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            if c.loss == "ddpm":
                loss = ddpm_loss(self._loss_model, x0, self.gen)
            else:
                loss = dsm_loss(self._loss_model, x0, self.gen, c.t_eps, c.likelihood_weighting)
        loss.backward()
        if c.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.net.parameters(), c.grad_clip)
        return loss.detach()

    def _uncompile(self) -> None:
        """The compile fallback: train the eager network (DDP-wrapped where it was)."""
        self._train_net = self._eager_net
        self._loss_model = ScoreModel(self._eager_net, self.model.sde, self.model.sigma_data)

    def train_step(self) -> torch.Tensor:
        c = self.cfg.train
        for group in self.opt.param_groups:
            group["lr"] = self._lr()
        if c.compile and c.compile_mode == "reduce-overhead" and self.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
        loss = self._runner()
        self.opt.step()
        # Python-float weight: one multi-tensor kernel and no host sync (a tensor would need none either)
        decay = min(c.ema_decay, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, [p.detach() for p in self.model.net.parameters()], 1 - decay)
        self.step += 1
        return loss

    def ema_model(self) -> ScoreModel:
        """A copy of the ScoreModel carrying the EMA weights (what sampling uses by default)."""
        import copy

        m = copy.deepcopy(self.model).eval()
        for p, e in zip(m.net.parameters(), self.ema):
            p.data.copy_(e)
        return m

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
        self._acquire()
        losses, pending, stop, agreed = [], [], {}, {}
        halt = stop if self.world == 1 else agreed  # under DDP every rank stops at the same step
        bar = tqdm(total=total, initial=self.step, desc="train", disable=not self.progress, leave=False)
        t0, s0 = time.perf_counter(), self.step
        logf = open(os.path.join(self.out, LOG), "a") if self.rank == 0 else None
        handlers = self._catch_signals(stop)
        try:
            while self.step < total and (stop_after is None or len(losses) + len(pending) < stop_after):
                loss = self.train_step()
                pending.append(loss)
                if self.step % c.log_every == 0 or self.step == total or len(pending) >= 64:
                    vals = torch.stack(pending).float().cpu().tolist()  # one host sync per flush
                    losses.extend(vals)
                    pending = []
                    bad = next((v for v in vals if not math.isfinite(v)), None)
                    if bad is not None:
                        raise FloatingPointError(f"the loss became {bad} by step {self.step}; lower train.lr "
                                                 f"or raise train.grad_clip")
                    rate = (self.step - s0) / max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix(loss=f"{vals[-1]:.4f}", steps_per_s=f"{rate:.1f}")
                    if logf and self.step % c.log_every == 0:
                        logf.write(json.dumps(dict(step=self.step, loss=vals[-1], lr=self._lr(),
                                                   steps_per_s=rate)) + "\n")
                        logf.flush()
                    if self.world > 1:
                        self._agree_to_stop(stop, agreed)  # every rank flushes at the same steps
                bar.update(1)
                if halt:
                    break
                if c.ckpt_every and self.step % c.ckpt_every == 0:
                    self.save()
                if self.previews and c.preview_every and self.step % c.preview_every == 0:
                    self.preview()
            if pending:
                losses.extend(torch.stack(pending).float().cpu().tolist())
                pending = []
            self.save()
            if halt:
                raise TrainingInterrupted(f"{halt['signal']} at step {self.step}: the checkpoint "
                                          f"{os.path.join(self.out, CKPT)} holds steps 1-{self.step}; continue "
                                          f"with --resume")
            if self.previews and self.step >= total and not c.preview_every:
                if self.progress:  # it takes seconds: say what is happening and how to skip it
                    tqdm.write(f"end of training: sampling a preview (EMA weights, heun {PREVIEW_STEPS} steps) into "
                               f"{os.path.join(self.out, 'previews')} (previews=False / --no-preview skips it)",
                               file=sys.stderr)
                self.preview()
        finally:
            for sig, old in handlers.items():
                signal.signal(sig, old)
            if pending:
                losses.extend(torch.stack(pending).float().cpu().tolist())
            bar.close()
            if logf:
                logf.close()
            self.close()
        return losses

    @staticmethod
    def _catch_signals(stop: dict) -> dict:
        """SIGINT/SIGTERM set stop['signal']; a second one raises KeyboardInterrupt at once."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum, frame):
            if stop:
                raise KeyboardInterrupt
            stop["signal"] = signal.Signals(signum).name

        return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _agree_to_stop(self, stop: dict, agreed: dict) -> None:
        import torch.distributed as dist

        flag = torch.tensor([1.0 if stop else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item():
            agreed["signal"] = stop.get("signal", "a signal on another rank")

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
