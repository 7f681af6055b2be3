"""What the commands share: option decorators, parameter types, the CLIError they raise,
parsing of lists and -o options, model and device resolution, and text formatting."""
from __future__ import annotations

import math
import os

import click


SDE_CHOICES = ["vp", "vp-cosine", "subvp", "ve"]
DEFAULT_SOLVERS = "ddpm,ddim,euler_maruyama,pc,euler,heun,dpmpp_2m,dpmpp_3m,deis,pf_ode"
# The solver and grid names as plain text, so that a misspelt name is answered before torch is
# imported (well under a second, against 10-20 s on a busy machine); tests/test_cli_inputs.py
# checks that they equal solvers.available() and solvers.GRID_NAMES.
SOLVER_NAMES = ("ddpm", "ddim", "euler_maruyama", "torchsde", "pc", "pf_ode", "euler", "heun", "euler_t", "heun_t",
                "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "unipc", "deis", "ipndm")
GRID_NAMES = ("tuned", "uniform", "quadratic", "edm", "logsnr")


class CLIError(click.ClickException):
    exit_code = 2


SEED = click.IntRange(0, 2 ** 64 - 1)


class FiniteRange(click.FloatRange):
    """A FloatRange that also refuses nan and inf; every refusal names the value given and the
    allowed range as an interval, e.g. "-1.0 is outside (0, 1): give a finite number in (0, 1)"."""

    def allowed(self) -> str:
        lo = "-inf" if self.min is None else f"{self.min:g}"
        hi = "inf" if self.max is None else f"{self.max:g}"
        return f"{'(' if self.min_open or self.min is None else '['}{lo}, {hi}{')' if self.max_open or self.max is None else ']'}"

    def convert(self, value, param, ctx):
        try:
            v = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number; give a finite number in {self.allowed()}", param, ctx)
        if not math.isfinite(v):
            self.fail(f"{value} is not a finite number; give a finite number in {self.allowed()}", param, ctx)
        try:
            return super().convert(v, param, ctx)
        except click.BadParameter:
            self.fail(f"{value} is outside {self.allowed()}; give a finite number in {self.allowed()}", param, ctx)


def parse_list(value: str, name: str, cast=str, allowed=None, minimum=None) -> list:
    """A comma-separated option value as a list, each item cast, checked against `allowed` and
    `minimum`; a bad item is a CLIError naming --name, the item and what is allowed."""
    items = [v.strip() for v in str(value).split(",") if v.strip()]
    if not items:
        raise CLIError(f"--{name} is empty; give a comma-separated list")
    out = []
    for v in items:
        try:
            v = cast(v)
        except ValueError:
            raise CLIError(f"--{name}: {v!r} is not a valid {cast.__name__}") from None
        if allowed is not None and v not in allowed:
            raise CLIError(f"--{name}: unknown value {v!r}; choose from: {', '.join(allowed)}")
        if minimum is not None and v < minimum:
            raise CLIError(f"--{name}: {v} is below the minimum {minimum}")
        out.append(v)
    return out


def check_solver(name: str, option: str = "--solver") -> str:
    """A solver name, or a CLIError naming it and the solvers there are (no torch needed)."""
    if name not in SOLVER_NAMES:
        raise CLIError(f"{option}: unknown solver {name!r}; choose from: {', '.join(SOLVER_NAMES)}")
    return name


def check_model_path(model: str, option: str = "--model") -> None:
    """A checkpoint path that is a folder or missing is a CLIError naming `option` (and, for
    --model, the oracles to use instead); checked before torch is imported."""
    if model.startswith(("oracle:", "py:")):
        return
    if model.startswith("diffusers:"):
        import importlib.util

        if importlib.util.find_spec("diffusers") is None:
            raise CLIError(f"{option} {model!r} needs the diffusers package: pip install 'scoresde[diffusers]'")
        path = model.split(":", 1)[1]
        if not os.path.isdir(path) and (os.path.exists(path) or path.count("/") != 1):
            raise CLIError(f"{option} {model!r}: no such folder (give a folder written by save_pretrained, "
                           f"or a hub id owner/name)")
        return
    hint = "; or use oracle:gmm8, oracle:gmm8c4, oracle:gaussian, oracle:gaussianD" if option == "--model" else ""
    if os.path.isdir(model):
        inside = sorted(n for n in os.listdir(model) if n.endswith(".pt") and not n.startswith("."))
        which = os.path.join(model, "checkpoint.pt" if "checkpoint.pt" in inside else (inside or ["checkpoint.pt"])[0])
        found = (f"give a checkpoint file such as {which}" if inside else
                 f"it holds no .pt file; give a checkpoint file (a run folder's is {which})")
        raise CLIError(f"{option} {model!r} is a folder, not a checkpoint file: {found}{hint}")
    if not os.path.exists(model):
        raise CLIError(f"{option} {model!r}: no such checkpoint file{hint}")
    if os.path.isfile(model) and os.path.getsize(model) == 0:
        raise CLIError(f"{option} {model!r} is empty (0 bytes), not a checkpoint file: give a checkpoint "
                       f"written by `scoresde train` (OUT/checkpoint.pt){hint}")


def output_overwrite(path: str, overwrite: bool, option: str = "--out") -> bool:
    """Whether writing `path` may replace what is there: with --overwrite, or when it is an empty
    folder (nothing to lose, e.g. after `mkdir out`); anything else that exists is refused.  Call it
    after every input check, so a bad input is never hidden behind this error."""
    from scoresde._io import check_new_output

    if os.path.isdir(path) and not os.path.islink(path) and not os.listdir(path):
        return True
    check_new_output(path, overwrite, option)
    return overwrite


def to_device(name: str) -> "torch.device":  # noqa: F821
    """--device auto|cpu|cuda[:k] as a torch.device; a bad one is a CLIError naming --device."""
    from scoresde._checks import resolve_device

    try:
        return resolve_device(name)
    except ValueError as e:
        raise CLIError(f"--device: {e}") from None


def resolve(model: str, sde_name: str | None, device, option: str = "--model"):
    """A model spec (oracle:NAME or a checkpoint file) and an --sde name as a ResolvedModel; a
    folder or a missing file is a CLIError naming `option` and the oracles to use instead."""
    from scoresde.evaluation.resolve import resolve_model
    from scoresde.sde import make_sde

    check_model_path(model, option)
    sde = make_sde(sde_name) if sde_name else None
    return resolve_model(model, sde=sde, device=device)


def class_option(f):
    return click.option("--class", "class_", default=None, metavar="NAME|INDEX",
                        help="conditional models: sample this class (a name, or an index 0…C−1) "
                             "[default with --guidance: the first class]")(f)


def conditioned(resolved, class_, guidance, guidance_text: str | None = None):
    """`resolved` itself without --class and --guidance, else the guided model of that class at
    w (scoresde.guidance.guide); an unconditional model or an unknown class is a CLIError naming
    the option and what is allowed."""
    from scoresde.guidance import guide

    if class_ is None and guidance is None:
        return resolved
    if resolved.cond_score_fn is None:
        opt = f"--guidance {guidance_text or guidance}" if guidance is not None else f"--class {class_}"
        raise CLIError(f"{opt}: model {resolved.name} is unconditional (it has no classes); guidance needs a "
                       f"conditional model: oracle:gmm8c4, oracle:gmm8c8, or a checkpoint trained with "
                       f"model.conditional = true")
    try:
        return guide(resolved, 0 if class_ is None else class_, guidance or 0.0)
    except ValueError as e:
        raise CLIError(f"--class {class_}: {e}") from None


def data_source(source: str, option: str):
    """The Dataset a --data/--reference SOURCE names: a .npy/.npz file (FILE.npz:NAME picks an
    array) or a data set name; a bad one is a CLIError naming `option`."""
    from scoresde.training.data import make_dataset

    is_file = source.endswith((".npy", ".npz")) or ".npz:" in source
    try:
        return make_dataset("file", source, "all") if is_file else make_dataset(source)
    except ValueError as e:
        raise CLIError(f"{option}: {e}") from None


def versions() -> dict:
    """The package versions and machine, recorded beside every output file."""
    from scoresde.evaluation.compare import versions as measured_with

    return measured_with()


def _coerce(text: str, default, what: str):
    """A command-line string typed like the option's default in the solver's signature."""
    if isinstance(default, bool):
        low = text.strip().lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise CLIError(f"{what} takes true or false (default {default}), got {text!r}")
    for typ, name in ((int, "an integer"), (float, "a number")):
        if isinstance(default, typ):
            try:
                return typ(text)
            except ValueError:
                raise CLIError(f"{what} takes {name} (default {default!r}), got {text!r}") from None
    return text


def solver_option_values(pairs, solver_names: list[str]) -> dict:
    """-o KEY=VALUE (every listed solver that takes KEY) and -o SOLVER.KEY=VALUE (that solver)
    -> {solver: {key: value}}, typed from the defaults in each solver function's signature.
    Unknown keys get the Python API's own message (solvers.check_options)."""
    import solvers

    out = {s: {} for s in solver_names}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        target, dot, key = key.strip().rpartition(".")
        if not sep or not key:
            raise CLIError(f"-o {pair!r}: write KEY=VALUE or SOLVER.KEY=VALUE")
        if dot:
            if target not in solver_names:
                raise CLIError(f"-o {pair!r}: solver {target!r} is not being run (solvers: {', '.join(solver_names)})")
            takers = [target]
            solvers.check_options(target, {key: None})
        else:
            takers = [s for s in solver_names if key in solvers.solver_options(s)]
            if not takers and len(solver_names) == 1:
                solvers.check_options(solver_names[0], {key: None})
            if not takers:
                accepted = "; ".join(f"{s}: {', '.join(solvers.solver_options(s)) or 'none'}" for s in solver_names)
                raise CLIError(f"-o {pair!r}: no solver being run takes option {key!r} ({accepted})")
        for s in takers:
            out[s][key] = _coerce(text, solvers.solver_options(s)[key], f"-o {pair!r}: option {key!r} of {s!r}")
    return out


def option_flag(f):
    """-o/--option KEY=VALUE, repeatable: options of the solver function (see `scoresde solvers`)."""
    return click.option("-o", "--option", "option_pairs", multiple=True, metavar="KEY=VALUE",
                        help="a solver option, e.g. -o eta=0.5, -o variance=beta, -o pf_ode.rtol=1e-4 "
                             "(repeatable; `scoresde solvers` lists each solver's options)")(f)


def batch_options(f):
    """--batch-size and --cuda-graph, shared by the commands that sample."""
    f = click.option("--cuda-graph", is_flag=True,
                     help="replay the network from CUDA graphs (no per-step launch overhead; same samples)")(f)
    return click.option("--batch-size", type=click.IntRange(min=1), default=None,
                        help="evaluate the network on at most this many samples at a time (same samples as "
                             "one batch) [default: all n at once]")(f)


class GridParam(click.ParamType):
    """A named time grid, or a .json file of explicit times (as `scoresde schedule` writes)."""

    name = "tuned|uniform|quadratic|edm|logsnr|FILE.json"

    def convert(self, value, param, ctx):
        if value in GRID_NAMES:
            return value
        if str(value).endswith(".json"):
            if not os.path.isfile(value):
                self.fail(f"grid file {value!r} does not exist", param, ctx)
            import solvers

            try:
                solvers.load_grid(value)
            except ValueError as e:
                self.fail(str(e), param, ctx)
            return value
        self.fail(f"{value!r} is not one of {', '.join(map(repr, GRID_NAMES))} or a .json grid file "
                  f"(see `scoresde schedule`)", param, ctx)


def grid_steps(grid: str | None) -> int | None:
    """Steps implied by a grid file, else None."""
    if grid is None or grid in GRID_NAMES:
        return None
    import solvers

    return len(solvers.load_grid(grid)) - 1


def model_options(f):
    """--model and --sde, shared by the commands that sample."""
    f = click.option("--sde", "sde_name", type=click.Choice(SDE_CHOICES), default=None,
                     help="forward SDE for an oracle [default: vp]; a checkpoint brings its own")(f)
    return click.option("--model", default="oracle:gmm8", metavar="SPEC",
                        help="oracle:gmm8 | oracle:gaussian | oracle:gaussianD | a checkpoint file | "
                             "diffusers:PATH | py:module:function")(f)


def format_table(rows: list[dict], cols: list[str]) -> str:
    """Column-aligned text table (the first two columns left-aligned, the rest right-aligned);
    floats get 4 significant digits, or 3 decimals in e-notation from 10^4."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.3e}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(cols, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        lines.append("  ".join(v.rjust(w) if i > 1 else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths))))
    return "\n".join(lines)


def duration(s: float) -> str:
    """Seconds as a short estimate: <0.1 s, 2 significant digits below 10 s, whole seconds below
    2 min, then minutes."""
    return "<0.1 s" if s < 0.1 else f"{s:.2g} s" if s < 10 else f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"



def _check_threads(ctx, param, value):
    """--threads: 'auto' or a whole number >= 1, checked by click before any work."""
    if value == "auto":
        return value
    if str(value).isdigit() and int(value) >= 1:
        return int(value)
    raise click.BadParameter(f"{value!r}: give auto or a whole number >= 1", ctx, param)


def threads_option(f):
    """--threads auto|N, shared by every command that evaluates a network on the CPU."""
    return click.option("--threads", default="auto", metavar="auto|N", callback=_check_threads,
                        help="CPU threads; auto times one score evaluation on torch's default count and on 1 "
                             "and keeps the faster (on a busy shared CPU, 2 threads can be 10-40x slower "
                             "than 1)")(f)


class chosen_threads:
    """`with chosen_threads(threads, score_fn, x, device):` sets torch's CPU thread count for the
    block ('auto': see fastest_thread_count; N: that many), prints which it chose, and restores
    the count afterwards (it is process-wide, and tests run commands in one process).  On a GPU
    it does nothing.  `.note` is 'cuda' or 'cpu, N thread(s)'.

    `resumed` is the count a resumed training run was written with: 'auto' keeps it, because a
    CPU run's losses depend on the thread count in their last bits, and N != resumed warns."""

    def __init__(self, threads, score_fn, x, device, batch_size: int | None = None, quiet: bool = False,
                 resumed: int | None = None):
        self.threads, self.score_fn, self.x, self.batch_size, self.quiet = threads, score_fn, x, batch_size, quiet
        self.device, self.resumed = device, resumed
        self.note = str(getattr(device, "type", device))

    def __enter__(self):
        import torch

        from scoresde.evaluation.compare import fastest_thread_count

        self.before = torch.get_num_threads()
        if self.note != "cpu":
            return self
        if self.threads == "auto" and self.resumed is not None:
            torch.set_num_threads(self.resumed)
            k, why = self.resumed, "auto: the count the checkpoint was trained with, so the run continues bit for bit"
        elif self.threads == "auto":
            k, sec = fastest_thread_count(self.score_fn, self.x, batch_size=self.batch_size)
            why = (f"auto: {k} of {self.before} evaluates faster ({1e3 * sec:.3g} ms per evaluation)"
                   if self.before > 1 else "auto: torch's default is already 1")
        else:
            torch.set_num_threads(self.threads)
            k, why = self.threads, "--threads"
            if self.resumed not in (None, k):
                why += (f"; the checkpoint was trained with {self.resumed}, so the losses may differ from an "
                        f"uninterrupted run in their last bits")
        self.note = f"cpu, {k} thread{'s' * (k > 1)}"
        if not self.quiet:
            click.echo(f"threads: {k} ({why})", err=True)
        return self

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.before)
        return False
