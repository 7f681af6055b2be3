"""What a trainer's checkpoint holds, gathered from it and put back: weights, EMA, optimizer,
every rank's generators and torch's global generator, so a resumed run is bit-exact."""
from __future__ import annotations

import torch

from scoresde.training.checkpoint import CheckpointError, load_checkpoint

# keys a resumed run may change: the length, and the switches that change speed, not the model
# (not where the data are drawn: a CPU generator's state does not continue on a CUDA one)
RESUMABLE = ("train.steps", "train.bf16", "train.compile", "train.compile_mode", "train.channels_last",
             "train.fused_optimizer", "train.cuda_graph")


def gather_state(tr) -> dict:
    """The checkpoint payload of Trainer `tr`; under DDP every rank must call it (it gathers
    each rank's generator states)."""
    import torch.distributed as dist

    rng = [tr.gen.get_state().cpu(), tr.data_gen.get_state()]
    rngs = [rng]
    if tr.world > 1:
        rngs = [None] * tr.world
        dist.all_gather_object(rngs, rng)
    return dict(config=tr.cfg.to_dict(), shape=list(tr.data.shape), step=tr.step,
                model={k: v.detach().cpu() for k, v in tr.model.net.state_dict().items()},
                ema=tr.ema.state_dict(), optimizer=tr.opt.state_dict(),
                rng=rngs, torch_rng=torch.get_rng_state(), **tr.reference,
                **({"class_names": list(tr.model.class_names)} if tr.model.class_names else {}),
                # a CPU run's losses depend on the thread count in their last bits (reduction order)
                **({"threads": torch.get_num_threads()} if tr.device.type == "cpu" else {}))


def restore_state(tr, path: str) -> None:
    """Load checkpoint `path` into Trainer `tr`, after checking it was written by the same
    config (but RESUMABLE keys), for the same sample shape and number of ranks."""
    from scoresde.training.config import from_dict

    ckpt = load_checkpoint(path)  # checksum, types, and weights against its own config
    mine = tr.cfg.to_dict()
    # read through from_dict: a key added since the checkpoint was written takes its default
    theirs = from_dict(ckpt["config"]).to_dict()
    if theirs != mine:
        diff = [f"{s}.{k}" for s in mine for k in mine[s] if theirs.get(s, {}).get(k) != mine[s][k]]
        if any(k not in RESUMABLE for k in diff):
            raise CheckpointError(f"{path} was written with a different config ({', '.join(diff)}); "
                                  f"resume with the same config (only {', '.join(RESUMABLE)} may change)")
    if tuple(ckpt["shape"]) != tuple(tr.data.shape):
        raise CheckpointError(f"{path} was written for samples of shape {tuple(ckpt['shape'])}; the data "
                              f"now have shape {tuple(tr.data.shape)}")
    if len(ckpt["rng"]) != tr.world:
        raise CheckpointError(f"{path} was written by {len(ckpt['rng'])} rank(s), this run has {tr.world}")
    tr.model.net.load_state_dict(ckpt["model"])
    tr.ema.load_state_dict(ckpt["ema"])
    tr.opt.load_state_dict(ckpt["optimizer"])
    for p, st in tr.opt.state.items():  # moments in the parameter's layout (the fused kernel needs it)
        for k, v in st.items():
            if torch.is_tensor(v) and v.shape == p.shape:
                st[k] = torch.empty_like(p).copy_(v)
    loss_state, data_state = ckpt["rng"][tr.rank]
    try:  # generator states are CPU byte tensors for CUDA generators too
        tr.gen.set_state(loss_state)
        tr.data_gen.set_state(data_state)
    except RuntimeError:
        raise CheckpointError(f"{path} holds generator states of another device type than {tr.device.type}; "
                              f"resume on the kind of device it was written on") from None
    torch.set_rng_state(ckpt["torch_rng"])
    tr.step = int(ckpt["step"])
    tr.resumed_threads = ckpt.get("threads")
