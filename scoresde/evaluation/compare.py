"""Run a grid of (solver, steps) on one model with the same starting noise and score the
samples: the engine behind `scoresde compare` and experiments/solver_benchmark.py.

compare() is the whole report as a CompareResult (the runs, the plan, the exact-sample band,
the best run per nfe budget, warnings), which writes itself to a folder; run_compare() gives
the bare rows and samples."""
from __future__ import annotations

import math
import os
import platform
import shlex
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch

from scoresde.evaluation.metrics import (ImageReference, class_metrics, mode_metrics, path_error, quality,
                                        sliced_w2, spread_warning, sw2_with_floor)
from scoresde.evaluation.resolve import ResolvedModel

# Below this many samples of vector data the metrics' own sampling noise (eight mode weights from a
# dozen samples each, a sliced-W2 floor ~ n^-1/2) is as large as the differences between solvers.
# (Image metrics are printed with their floors at the same n, which shows their noise.)
MIN_METRIC_SAMPLES = 100
ADAPTIVE_PROBE = 128  # samples used to measure an adaptive solver's nfe before the full run
FLOOR_DRAWS = 8  # independent exact samples that give the perfect-sampler band
# Everything timed before the plan line runs on at most this many samples and is scaled up, so a
# huge --n is announced (and refused, if it cannot fit) in seconds: one score evaluation is
# linear in n, the metrics sort, so n log n.
PROBE_N, METRIC_PROBE_N = 65536, 4096
# A fixed-step replay runs the solver's Python loop: 100 000 steps took 16-60 s per solver on a
# loaded CPU.  Above this many steps nfe is extrapolated from replays at 64, 96 and 128 steps
# (every fixed-step solver's nfe is a·K + b, to within an evaluation or two for torchsde, whose own
# step rounding adds one now and then; the three points check it).
REPLAY_STEPS = 1000


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _reference_split(model: ResolvedModel, n: int, seed: int):
    """Disjoint size-n slices of the model's reference data (a fixed permutation per seed)."""
    perm = torch.randperm(model.data.shape[0], generator=torch.Generator().manual_seed(seed), device="cpu")
    return [model.data[perm[j * n:(j + 1) * n]] for j in range(model.data.shape[0] // n)]


def image_reference(model: ResolvedModel, n: int, seed: int = 0, feature_net=None) -> ImageReference | None:
    """For a model of images (C, H, W) with reference data: two disjoint random samples of n
    reference images, scored against once (see metrics.ImageReference); else None."""
    if model.oracle is not None or model.data is None or len(model.shape) != 3:
        return None
    have = model.data.shape[0]
    if have < 2 * n:
        what = model.reference_name or "the reference data"
        raise ValueError(f"scoring {n} images needs 2 × {n} reference images, {what} has {have}; "
                         f"use --n {have // 2} or fewer")
    perm = torch.randperm(have, generator=torch.Generator().manual_seed(seed))
    return ImageReference(model.data[perm[:n]], model.data[perm[n:2 * n]], feature_net, seed=seed)


def score_samples(x: torch.Tensor, model: ResolvedModel, seed: int = 0, reference: ImageReference | None = None
                  ) -> dict:
    """Quality of samples against the model's ground truth (oracle metrics, image metrics
    against `reference`, or sliced W2 to data); {} when there is none.  (Below
    MIN_METRIC_SAMPLES samples the numbers are mostly noise: the CLI does not show them.)"""
    if reference is not None:
        return reference.score(x)
    if model.label is not None:  # samples of one class (guided): scored against p_0(x | class)
        return class_quality(x, model, seed)
    if model.oracle is not None:
        return quality(x, model.oracle, seed=seed)
    if model.data is not None and model.data.shape[0] >= 2 * x.shape[0]:
        ref, ref2 = _reference_split(model, x.shape[0], seed)[:2]
        return sw2_with_floor(x, ref, ref2, seed)
    return {}


def class_quality(x: torch.Tensor, model: ResolvedModel, seed: int = 0) -> dict:
    """Samples of class model.label: with a labelled oracle, quality() against that class's own
    mixture p_0(x | c) plus class_acc and diversity (metrics.class_metrics); without one, {} (the
    reference data carry no labels to compare one class with)."""
    oracle = model.oracle
    if oracle is None or oracle.classes is None:
        return {}
    extra = class_metrics(x, oracle, model.label)
    return {"class_acc": extra["class_acc"], "diversity": extra["diversity"], **quality(x, model.truth, seed=seed)}


def perfect_sampler_band(model: ResolvedModel, n: int, seed: int = 0, draws: int = FLOOR_DRAWS) -> dict | None:
    """What an exact sampler scores on the ranking metric at this n: the metric of `draws`
    independent exact samples (oracle: mode_w2 of fresh mixture draws; data-only: sliced W2 of
    other data slices to the same reference, with the same projections as score_samples).
    Returns {metric, mean, lo, hi, draws} with lo/hi the smallest and largest draw, or None."""
    vals, metric = [], None
    if n < MIN_METRIC_SAMPLES:
        return None
    if model.oracle is not None:
        metric = "mode_w2"
        g = torch.Generator().manual_seed(seed + 7919)
        truth = model.truth  # for a guided model, its class's mixture
        vals = [mode_metrics(truth.sample(n, generator=g, dtype=torch.float64), truth)["mode_w2"]
                for _ in range(draws)]
    elif model.data is not None and len(model.shape) != 3 and model.data.shape[0] >= 3 * n:  # images: own metrics
        metric = "sw2"
        ref, *others = _reference_split(model, n, seed)
        vals = [sliced_w2(y, ref, generator=torch.Generator().manual_seed(seed + 1)) for y in others[:draws]]
    if not vals:
        return None
    return {"metric": metric, "mean": statistics.fmean(vals), "lo": min(vals), "hi": max(vals), "draws": len(vals)}


def is_explicit(grid) -> bool:
    """A grid file or sequence of times, which brings its own steps (not a named grid)."""
    import solvers

    return grid is not None and not (isinstance(grid, str) and grid in solvers.GRID_NAMES)


def is_adaptive(solver: str, options: dict | None = None) -> bool:
    """True when the solver picks its own steps (as its SolverSpec declares: pf_ode with an adaptive method)."""
    import solvers

    return solvers.traits(solver, options).adaptive


@dataclass
class Run:
    """One planned run: steps None for an adaptive solver; nfe is the predicted count (exact for
    fixed-step solvers, measured on ADAPTIVE_PROBE samples for adaptive ones)."""
    solver: str
    steps: int | None
    nfe: int
    measured: bool = False  # nfe from a probe run (approximate) rather than an exact replay
    overhead_s: float = 0.0  # the replay's wall time: the solver's own per-step cost, without the model
    extrapolated: bool = False  # steps > REPLAY_STEPS: nfe and overhead scaled from shorter replays


@dataclass
class Plan:
    runs: list[Run]
    skipped: list[Run] = field(default_factory=list)
    sec_per_eval: float = float("nan")  # one score evaluation on the full batch
    n: int = 0
    metric_s: float = 0.0  # scoring one run's samples
    title: str = ""  # the line naming model, SDE, n and seed that heads the table and the figures
    threads: str = ""  # where the score is evaluated: 'cuda', or 'cpu, N threads'
    band_s: float = 0.0  # the perfect-sampler band, computed after the runs
    memory: "MemoryNeed | None" = None

    @property
    def total_nfe(self) -> int:
        return sum(r.nfe for r in self.runs)

    @property
    def eval_s(self) -> float:
        """Score-evaluation time of the whole plan: Σ nfe × seconds per evaluation."""
        return self.total_nfe * self.sec_per_eval

    @property
    def overhead_s(self) -> float:
        """The solvers' own time (loops, noise, arithmetic), from the replays."""
        return sum(r.overhead_s for r in self.runs)

    @property
    def estimate_s(self) -> float:
        return self.eval_s + self.overhead_s + self.metric_s * len(self.runs) + self.band_s


class _Stop(Exception):
    pass


def _stop_after_first_step(info):  # the solver and its grid were accepted: that is all a check needs
    raise _Stop


def _affine_nfe(run_k: Callable[[int], Run], k: int) -> Run:
    """Run(nfe, overhead) for k steps from replays at 64, 96 and 128 steps, when nfe is affine in
    the steps there (overhead scaled per step); else the full replay."""
    a, b, c = run_k(64), run_k(96), run_k(128)
    slope = (c.nfe - a.nfe) / 64
    if b.nfe - a.nfe != slope * 32 or slope != int(slope):
        return run_k(k)
    return Run(c.solver, k, int(c.nfe + slope * (k - 128)), overhead_s=c.overhead_s * k / 128, extrapolated=True)


# -- memory -------------------------------------------------------------------------------------
# Bytes per sample, measured with ru_maxrss on oracle:gmm8 (D = 2, K = 8 modes, float32): a solve
# (state and the mixture score) 450-770, the metrics of one run 2 800-3 600 (float64 projections
# sorted 32 at a time, the whitened offsets, a reference sample), a band draw 1 500.
SOLVE_COPIES = 16  # copies of one sample the solver's state holds (x, score, noise, history, temporaries)
ORACLE_SCORE_COPIES = 10  # (K, D) temporaries per sample in the mixture score
METRIC_BYTES = lambda D: 8 * (14 * 32 + 16 * D)  # noqa: E731  (float64)


@dataclass
class MemoryNeed:
    """The estimated peak of a compare, in bytes: x_T, every run's samples (kept for the figures),
    and the larger of one solve and one run's metrics; `available` what this machine has free
    (None: unknown)."""
    n: int
    runs: int
    samples: int
    solve: int
    metrics: int
    available: int | None

    @property
    def total(self) -> int:
        return self.samples + max(self.solve, self.metrics)

    @property
    def largest_n(self) -> int:
        return int(self.n * self.available / self.total) if self.available else self.n

    def fits(self) -> bool:
        return self.available is None or self.total <= self.available

    def why_not(self, option: str = "n =") -> str:
        largest = self.largest_n // 1000 * 1000 or self.largest_n
        return (f"{option} {self.n} with {self.runs} runs needs about {_gb(self.total)} of memory (samples kept "
                f"{_gb(self.samples)}, one run's metrics {_gb(self.metrics)}, one solve {_gb(self.solve)}); "
                f"{_gb(self.available)} is available: use {option} {largest} or fewer, or fewer solvers × steps")


def _gb(b) -> str:
    return f"{b / 2 ** 30:.3g} GB" if b >= 2 ** 30 else f"{b / 2 ** 20:.3g} MB"


def available_memory() -> int | None:
    """Bytes of memory this process may still use: Linux's MemAvailable (free plus reclaimable
    cache), else POSIX free pages (SC_AVPHYS_PAGES, which leaves the cache out), capped by a cgroup
    v2 limit (a container); None when none can be read."""
    have = None
    try:
        with open("/proc/meminfo") as f:
            have = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        try:
            have = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit.isdigit():  # 'max': no limit
            with open("/sys/fs/cgroup/memory.current") as f:
                room = int(limit) - int(f.read())
            have = room if have is None else min(have, room)
    except (OSError, ValueError):
        pass
    return have


def memory_need(model: ResolvedModel, n: int, runs: int, dtype, device, batch_size: int | None = None
                ) -> MemoryNeed:
    """What a compare of `runs` runs on n samples needs at its peak (see MemoryNeed).  A network's
    activations are not counted (they are bounded by batch_size); on CUDA the solve is checked
    against the device's free memory and the rest against the host's."""
    D = math.prod(model.shape)
    item = torch.empty((), dtype=dtype).element_size()
    k = getattr(getattr(model, "oracle", None), "means", None)
    score = min(n, batch_size or n) * D * item * ORACLE_SCORE_COPIES * (k.shape[0] if k is not None else 0)
    solve = n * D * item * SOLVE_COPIES + score
    samples = n * D * item + runs * n * D * 4
    metrics = n * METRIC_BYTES(D)
    if torch.device(device).type == "cuda":
        need = MemoryNeed(n, runs, samples, 0, metrics, available_memory())
        if need.fits():  # the solve is on the device: check it there
            free, _ = torch.cuda.mem_get_info(torch.device(device))
            need = MemoryNeed(n, runs, 0, solve, 0, free)
        return need
    return MemoryNeed(n, runs, samples, solve, metrics, available_memory())


def scaled(seconds: float, probe: int, n: int, sort: bool = False) -> float:
    """A time measured on `probe` samples, for n (linear, or n log n for what sorts)."""
    if n <= probe:
        return seconds
    return seconds * n / probe * (math.log(n) / math.log(probe) if sort else 1.0)


def plan_runs(model: ResolvedModel, solver_names: Iterable[str], steps_list: Iterable[int], x_T: torch.Tensor,
              grid: str | None = None, options: dict | None = None) -> list[Run]:
    """Every (solver, steps) pair in order, with the score evaluations it will use.

    An explicit grid (file or sequence) replaces steps_list.  A fixed-step solver's nfe depends
    only on its grid, so it is replayed on one sample with a stand-in score (−x/(m² + σ²), the
    score of N(0, I) data; −x alone diverged on VE, whose prior has σ = 50): the count is exact,
    no network is called, and the replay's wall time is the solver's own overhead.  An adaptive
    solve is run with the model itself on the first ADAPTIVE_PROBE samples of x_T.  Both also warm
    up the solver code, so first-call costs do not land in a run's wall time."""
    import solvers

    options = options or {}
    explicit = is_explicit(grid)
    runs = []

    def stand_in(x, t):  # the exact score of N(0, I) data under this SDE: −x/(m² + σ²), stable on any grid
        m, s = model.sde.marginal(t)
        return -x / (m * m + s * s).view(-1, *([1] * (x.ndim - 1)))
    for name in solver_names:
        opts = options.get(name, {})
        g = torch.Generator(device=x_T.device).manual_seed(0)
        if is_adaptive(name, opts):  # the probe's time, with its cheaper small-batch calls, stands for the overhead
            t0 = time.perf_counter()
            res = solvers.sample(model.score_fn, model.sde, x_T=x_T[:ADAPTIVE_PROBE], solver=name,
                                 steps=None if explicit else 1, grid=grid, generator=g, **opts)
            runs.append(Run(name, None, res.nfe, measured=True, overhead_s=time.perf_counter() - t0))
            continue
        def replay(k, callback=None):
            t0 = time.perf_counter()
            res = solvers.sample(stand_in, model.sde, x_T=x_T[:1], solver=name, steps=k, grid=grid,
                                 generator=torch.Generator(device=x_T.device).manual_seed(0), check_finite=False,
                                 callback=callback, **opts)
            return Run(name, res.t_grid.numel() - 1, res.nfe, overhead_s=time.perf_counter() - t0)

        for k in [None] if explicit else steps_list:
            if k is not None and k > REPLAY_STEPS:
                try:  # the solver's own checks of a k-step grid, at the cost of one step
                    replay(k, _stop_after_first_step)
                except _Stop:
                    pass
                runs.append(_affine_nfe(replay, k))
            else:
                runs.append(replay(k))
    return runs


def seconds_per_eval(score_fn: Callable, x: torch.Tensor, t: float = 0.5, repeats: int = 3,
                     batch_size: int | None = None) -> float:
    """Median wall time of one score evaluation on the batch x at time t (in chunks of
    batch_size, as the runs evaluate it), after an untimed call."""
    tt = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
    chunks = list(zip(x.split(batch_size or x.shape[0]), tt.split(batch_size or x.shape[0])))
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            _sync(x.device)
            t0 = time.perf_counter()
            for xc, tc in chunks:
                score_fn(xc, tc)
            _sync(x.device)
            if i:
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


def fastest_thread_count(score_fn: Callable, x: torch.Tensor, batch_size: int | None = None) -> tuple[int, float]:
    """Set torch's CPU thread count to whichever of its current value and 1 evaluates the score
    faster on x; returns (threads, seconds per evaluation).  On a shared, oversubscribed CPU the
    intra-op threads wait for each other and a small network can run 10–40× slower on 2 threads
    than on 1; on an idle machine the default usually wins and is kept."""
    default = torch.get_num_threads()
    t_default = seconds_per_eval(score_fn, x, repeats=1, batch_size=batch_size)  # a 10x gap shows in one call
    if default == 1:
        return 1, t_default
    torch.set_num_threads(1)
    t_one = seconds_per_eval(score_fn, x, repeats=1, batch_size=batch_size)
    if t_one < t_default:
        return 1, t_one
    torch.set_num_threads(default)
    return default, t_default


@dataclass
class Row:
    """One finished run: steps None for an adaptive solver; metrics from score_samples ({} when
    there is no ground truth, or too few samples to say anything)."""
    solver: str
    grid: str  # 'adaptive' for an adaptive run
    schedule: str
    steps: int | None
    nfe: int
    wall_s: float
    metrics: dict = field(default_factory=dict)
    spread_warning: str | None = None  # the oracle's check of the samples' spread (metrics.spread_warning)

    def record(self) -> dict:
        """The run as the columns of results.csv and results.json: solver, grid, schedule, steps
        ('' for an adaptive run, as the CSV has always had it), nfe, wall_s, then the metrics."""
        return {"solver": self.solver, "grid": self.grid, "schedule": self.schedule,
                "steps": "" if self.steps is None else self.steps, "nfe": self.nfe, "wall_s": self.wall_s,
                **self.metrics}


def run_compare(model: ResolvedModel, solver_names: Iterable[str], steps_list: Iterable[int], n: int = 4000,
                seed: int = 0, grid: str | None = None, device="cpu", dtype=torch.float32,
                progress: bool = True, options: dict | None = None, feature_net=None,
                batch_size: int | None = None, cuda_graph: bool = False, max_nfe: int | None = None,
                on_plan: Callable[[Plan], None] | None = None):
    """Returns (rows, samples): one dict per run (Row.record()) and {(solver, steps): x on CPU}.
    The arguments are compare()'s, which see."""
    rows, samples, _ = _execute(model, solver_names, steps_list, n=n, seed=seed, grid=grid, device=device,
                                dtype=dtype, progress=progress, options=options, feature_net=feature_net,
                                batch_size=batch_size, cuda_graph=cuda_graph, max_nfe=max_nfe, on_plan=on_plan)
    return [r.record() for r in rows], samples


def _execute(model: ResolvedModel, solver_names: Iterable[str], steps_list: Iterable[int], n: int, seed: int,
             grid, device, dtype, progress: bool, options: dict | None, feature_net, batch_size: int | None,
             cuda_graph: bool, max_nfe: int | None, on_plan: Callable[[Plan], None] | None,
             title: str = "", threads: str = "") -> tuple[list[Row], dict, Plan]:
    """Plan, announce (on_plan) and run every (solver, steps) pair; returns (rows, samples, plan).
    The arguments are compare()'s (feature_net a module).  The progress bar counts score
    evaluations, so its ETA weighs every run by its nfe."""
    from tqdm.auto import tqdm

    import solvers

    solver_names, steps_list = list(solver_names), sorted(set(int(s) for s in steps_list))
    options = options or {}
    reference = image_reference(model, n, seed, feature_net)
    if feature_net is not None and reference is None:
        raise ValueError("a feature network scores images; this model has no image reference data")
    explicit = is_explicit(grid)
    runs = len(solver_names) * (1 if explicit else len(steps_list))
    memory = memory_need(model, n, runs, dtype, device, batch_size)
    if not memory.fits():  # before x_T is drawn: say so instead of swapping for an hour
        raise MemoryBudgetError(memory)
    g = torch.Generator(device=device).manual_seed(seed)
    x_T = model.sde.prior_sample((n, *model.shape), generator=g, dtype=dtype, device=device)
    score_fn = solvers.graphed(model.score_fn, device) if cuda_graph else model.score_fn
    planned = plan_runs(model, solver_names, steps_list, x_T, grid, options)
    over = [r for r in planned if max_nfe is not None and r.nfe > max_nfe]
    # also the network's warm-up on the full batch, so no run pays first-call costs (with cuda_graph,
    # also the capture at the runs' batch shapes); above PROBE_N a first run pays them instead
    probe = min(n, PROBE_N)
    plan = Plan([r for r in planned if r not in over], over,
                scaled(seconds_per_eval(score_fn, x_T[:probe], 0.5 * model.sde.T, batch_size=batch_size), probe, n),
                n, title=title, threads=threads, memory=memory)
    probe = n if reference is not None else min(n, METRIC_PROBE_N)  # image metrics compare like-sized sets
    t0 = time.perf_counter()
    score_samples(x_T[:probe].detach().float().cpu(), model, seed=seed, reference=reference)  # what scoring costs
    plan.metric_s = scaled(time.perf_counter() - t0, probe, n, sort=True)
    if n >= MIN_METRIC_SAMPLES:
        t0 = time.perf_counter()
        perfect_sampler_band(model, probe, seed, draws=1)
        plan.band_s = scaled(time.perf_counter() - t0, probe, n, sort=True) * FLOOR_DRAWS
    if on_plan is not None:
        on_plan(plan)
    rows, samples = [], {}
    bar = tqdm(total=plan.total_nfe, unit="nfe", desc="compare", disable=not progress, leave=False, smoothing=0)
    try:
        for run in plan.runs:
            name, steps = run.solver, run.steps
            bar.set_postfix_str(f"{name} {steps or 'adaptive'}")
            counted, expected = [0], [run.nfe]

            def tick(info):
                if info["nfe"] > expected[0]:  # an adaptive run needs more than its probe: grow the total first
                    bar.total += info["nfe"] - expected[0]
                    expected[0] = info["nfe"]
                bar.update(info["nfe"] - counted[0])
                counted[0] = info["nfe"]

            _sync(device)
            t0 = time.perf_counter()
            res = solvers.sample(score_fn, model.sde, x_T=x_T, solver=name, steps=None if explicit else steps or 1,
                                 grid=grid, generator=torch.Generator(device=device).manual_seed(seed), callback=tick,
                                 batch_size=batch_size, **options.get(name, {}))
            _sync(device)
            wall = time.perf_counter() - t0
            bar.total += res.nfe - expected[0]  # an adaptive run that needed fewer than its probe
            bar.update(res.nfe - counted[0])
            bar.refresh()  # show the finished run (and a corrected total) even between tqdm's update intervals
            x = res.x.detach().float().cpu()
            samples[(name, steps)] = x
            rows.append(Row(name, "adaptive" if steps is None else res.grid, res.schedule, steps, res.nfe, wall,
                            score_samples(x, model, seed=seed, reference=reference),
                            _spread_check(x, model, name, steps, float(res.t_grid[-1]))))
    except KeyboardInterrupt:
        raise CompareInterrupted(rows, len(plan.runs)) from None
    finally:
        bar.close()
    return rows, samples, plan


def _spread_check(x: torch.Tensor, model: ResolvedModel, solver: str, steps: int | None, t: float) -> str | None:
    if model.oracle is None or x.shape[0] < MIN_METRIC_SAMPLES:  # below that the spread itself is noise
        return None
    return spread_warning(x, model.oracle, model.sde, t, f"{solver} {steps or 'adaptive'} steps")


class MemoryBudgetError(ValueError):
    """A compare that would not fit in memory (.need: the MemoryNeed), refused before any work."""

    def __init__(self, need: MemoryNeed):
        super().__init__(need.why_not())
        self.need = need


class CompareInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) during the runs: .rows holds the runs that finished, of .planned."""

    def __init__(self, rows: list, planned: int):
        super().__init__(f"after {len(rows)} of {planned} runs")
        self.rows, self.planned = rows, planned


def _record(row) -> dict:
    return row.record() if isinstance(row, Row) else row


def ranking_key(row) -> float:
    """Lower is better: the within-mode W2 (spread and shape, in mode stds) plus the off-mode
    fraction when an oracle is known, else sliced W2 to data.  Plain sliced W2 at a few thousand
    samples is dominated by the sampling noise of the mode weights and cannot separate good
    solvers; the per-mode std ratio alone misses shape errors.  row: a Row or its record."""
    row = _record(row)
    if "mode_w2" in row:
        return row["mode_w2"] + row["off_mode"]
    return row.get("sw2", float("inf"))


def best_at_nfe(rows: list, budget: float, tie: float = 0.0):
    """The best row among runs using at most `budget` score evaluations (Rows or records, returned
    as given); None when no run fits.  By ranking_key; where runs carry path_err (a model without
    an oracle, see add_path_errors), those within `tie` of the best ranking_key (the spread of exact
    samples on that metric: the distribution metric cannot tell them apart) are ranked by path_err,
    and with no distribution metric at all every run with a path_err is."""
    cands = [r for r in rows if _record(r)["nfe"] <= budget]
    if not cands:
        return None
    if not any("sw2" in _record(r) or "mode_w2" in _record(r) for r in cands):
        cands = [r for r in cands if "path_err" in _record(r)]
        return min(cands, key=lambda r: _record(r)["path_err"]) if cands else None
    best = min(cands, key=ranking_key)
    close = [r for r in cands if "path_err" in _record(r) and ranking_key(r) <= ranking_key(best) + tie]
    return min(close, key=lambda r: _record(r)["path_err"]) if close else best


def ranked_by(row, rows: list, budget: float) -> str:
    """What best_at_nfe ranked this winner by: 'mode_w2 + off_mode', 'sw2' or 'path_err'."""
    rec = _record(row)
    if "path_err" in rec and (not ("sw2" in rec or "mode_w2" in rec)
                              or row is not min((r for r in rows if _record(r)["nfe"] <= budget), key=ranking_key)):
        return "path_err"
    return "mode_w2 + off_mode" if "mode_w2" in rec else "sw2"


def add_path_errors(rows: list, samples: dict, model: ResolvedModel, options: dict) -> bool:
    """For a model without an oracle: every deterministic run's pathwise error against the
    probability-flow ODE run (pf_ode) from the same x_T, the model's own converged flow,

        path_err = ( (1/n) Σ_i ‖x_i − x_ref,i‖² / D )^½,

    added to its metrics.  Stochastic runs follow other paths and get none.  Returns whether
    there was a reference."""
    import solvers

    ref = samples.get(("pf_ode", None))
    if model.oracle is not None or ref is None:
        return False
    for r in rows:
        if r.solver == "pf_ode" or solvers.traits(r.solver, options.get(r.solver, {})).stochastic:
            continue
        r.metrics["path_err"] = path_error(samples[(r.solver, r.steps)], ref)
    return True


# When even the best run is this far off, no solver setting in the grid is close to the data.
# off_mode: exact samples fall > 5 mode stds from every mode with probability e^(-12.5) ≈ 4e-6
#   (2-D); a 10 000-step ring model has 1–3 % off-mode at 10–20 nfe and 0.04 % converged, so
#   5 % is beyond what a usable model and solver produce.
# mode_w2: for Gaussians W2(N(0, 1), N(0, s²)) = |s − 1|, so 0.25 is a 25 % error in the spread
#   of the modes (or a shape error as large); converged solvers on that model score ≈ 0.09.
# sw2 (data-only models): sw2² ≈ floor² + bias², so sw2 > 2 × floor means a bias of √3 ≈ 1.7
#   times the sampling noise of the data itself.
FAR = {"off_mode": 0.05, "mode_w2": 0.25, "sw2_over_floor": 2.0}


def far_from_data(row: dict | None, band: dict | None = None) -> str | None:
    """Why this row's samples (a Row or its record) are far from the data (thresholds in FAR), or None."""
    if not row:
        return None
    row = _record(row)
    why = []
    if row.get("off_mode", 0) > FAR["off_mode"]:
        why.append(f"{100 * row['off_mode']:.1f} % of samples off every mode (> {100 * FAR['off_mode']:g} %)")
    if row.get("mode_w2", 0) > FAR["mode_w2"]:
        why.append(f"mode_w2 {row['mode_w2']:.3g} (> {FAR['mode_w2']:g}, a {100 * FAR['mode_w2']:g} % spread error)")
    if "mode_w2" not in row and "sw2" in row:
        floor = band["mean"] if band and band["metric"] == "sw2" else row.get("sw2_floor")
        if floor and row["sw2"] > FAR["sw2_over_floor"] * floor:
            why.append(f"sliced W2 {row['sw2']:.3g} (> {FAR['sw2_over_floor']:g} x the data-vs-data floor {floor:.3g})")
    return "; ".join(why) or None


BUDGETS = (5, 10, 20)  # the nfe budgets the report names a best run for


def oracle_caution(model: ResolvedModel) -> str | None:
    """The caution printed under the 'best at' lines of an oracle compare (None for a checkpoint):
    a grid or solver that wins on an exact score need not win on a trained network."""
    if not model.name.startswith("oracle:"):
        return None
    return ("caution: these winners are measured on an exact-score oracle; grids tuned on an oracle (grid=tuned) "
            "need not transfer to a trained network. `scoresde schedule` fits a grid to your own model; "
            "the few-step defaults (`scoresde solvers`) were chosen on a panel of trained and oracle models.")


def schedule_hint(model: ResolvedModel, best: dict) -> str | None:
    """The line printed under the 'best at' lines of a compare on a model without an oracle: how
    to fit the winner's grid to this model with `scoresde schedule` (None for an oracle, or when
    no deterministic run won a budget: only those have a pathwise error to fit)."""
    if model.name.startswith("oracle:"):
        return None
    import solvers

    for budget, row in sorted(best.items()):
        if row is not None and solvers.traits(row.solver).order is not None:
            spec = shlex.quote(model.name)
            return (f"next: `scoresde schedule --model {spec} --solver {row.solver} --nfe {budget} --out grid.json` "
                    f"fits {row.solver}'s grid to this model at {budget} nfe (use it with --grid grid.json); "
                    f"the defaults were chosen on a panel of other models (`scoresde solvers`).")
    return None


def versions() -> dict:
    """The package versions and machine a result was measured with (written beside it)."""
    import numpy
    import torchdiffeq
    import torchsde

    from scoresde import __version__

    return {"scoresde": __version__, "torch": torch.__version__, "torchdiffeq": torchdiffeq.__version__,
            "torchsde": torchsde.__version__, "numpy": numpy.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "processor": platform.processor() or platform.machine()}


@dataclass
class CompareResult:
    """The report of one compare(): rows (one Row per run, in plan order), samples
    {(solver, steps): x on CPU}, the plan (with the skipped runs and the measured costs), band
    (what exact samples score on the ranking metric at this n, see perfect_sampler_band; None
    when unknown), best {budget: the best Row using at most that many nfe, or None}, empty when
    the runs carry no metrics; warnings (sentences); settings (what was run, as results.json
    records it), the wall time of the whole comparison, and the model itself (for the figures)."""
    rows: list[Row]
    samples: dict
    plan: Plan
    band: dict | None
    best: dict
    warnings: list[str]
    settings: dict
    wall_s: float
    model: ResolvedModel = field(repr=False)

    @property
    def records(self) -> list[dict]:
        return [r.record() for r in self.rows]

    @property
    def has_metrics(self) -> bool:
        return any(r.metrics for r in self.rows)

    def write(self, folder: str, plots: bool = True, overwrite: bool = False) -> list[str]:
        """Write results.csv (one line per run), results.json (settings, versions, timings, band,
        skipped runs, rows) and, with plots, quality_vs_nfe.png and samples.png into `folder`,
        all at once: the files appear together when every one is written (an existing folder is
        replaced only with overwrite).  Returns the paths written."""
        from scoresde._io import atomic_dir, write_csv, write_json

        records, plan, model = self.records, self.plan, self.model
        with atomic_dir(folder, overwrite) as tmp:
            write_csv(os.path.join(tmp, "results.csv"), records)
            write_json(os.path.join(tmp, "results.json"),
                       dict(settings=self.settings, versions=versions(), wall_total_s=self.wall_s,
                            sec_per_eval=plan.sec_per_eval, estimated_s=plan.estimate_s, perfect_sampler=self.band,
                            skipped=[dict(solver=r.solver, steps=r.steps, nfe=r.nfe) for r in plan.skipped],
                            rows=records))
            written = ["results.csv", "results.json"]
            if plots:
                from scoresde.evaluation.plots import quality_vs_nfe, samples_panel

                quality_vs_nfe(records, os.path.join(tmp, "quality_vs_nfe.png"), title=plan.title, band=self.band)
                n = self.settings["n"]
                if model.oracle is not None:
                    ref = model.oracle.sample(n, generator=torch.Generator().manual_seed(self.settings["seed"]))
                elif model.data is not None:  # images: a few real ones beside the samples; vectors: n points
                    ref = model.data[:16] if len(model.shape) == 3 else model.data[:n]
                else:
                    ref = None
                samples_panel(self.samples, os.path.join(tmp, "samples.png"), reference=ref,
                              nfe={(r.solver, r.steps): r.nfe for r in self.rows}, title=plan.title)
                written += ["quality_vs_nfe.png", "samples.png"]
        return [os.path.join(folder, w) for w in written]


def compare(model: ResolvedModel, solver_names: Iterable[str], steps_list: Iterable[int], n: int = 4000,
            seed: int = 0, grid: str | None = None, device="cpu", dtype=torch.float32, progress: bool = True,
            options: dict | None = None, features=None, batch_size: int | None = None, cuda_graph: bool = False,
            max_nfe: int | None = None, threads: int | str | None = None, label: str | None = None,
            on_plan: Callable[[Plan], None] | None = None) -> CompareResult:
    """Every (solver, steps) pair from the same x_T, scored, with the report around it.

    Every run starts from the same x_T (drawn once from the prior with `seed`) and uses a
    generator seeded with `seed` for its noise, so differences are the solvers' own.
    options: {solver: {key: value}}.  An explicit grid (a .json file or a sequence of times)
    replaces steps_list.  Runs predicted to use more than max_nfe score evaluations are skipped.
    Image models are scored in pixel space against their reference data and, with features (a
    TorchScript file, or a module images → features), by the Fréchet distance of its features.
    batch_size bounds the network's batch (same samples); cuda_graph replays the network from CUDA
    graphs kept across the runs.  threads (CPU only): a count, 'auto' (whichever of torch's
    current count and 1 evaluates the score faster, see fastest_thread_count), or None (as set);
    the count is restored afterwards.  label names the model in the title (default model.name).
    Before the first run on_plan(Plan) receives the runs, the skipped ones and the measured costs.

    The report: below MIN_METRIC_SAMPLES samples of vector data the metrics would be noise and
    are dropped; best[b] = argmin ranking_key over runs with nfe ≤ b, b in BUDGETS; a warning when
    even the best run at any nfe is far from the data (far_from_data, against the band)."""
    from scoresde.evaluation.plots import run_title

    if threads is not None and threads != "auto" and (isinstance(threads, bool) or not isinstance(threads, int)
                                                      or threads < 1):
        raise ValueError(f"threads must be 'auto', a whole number >= 1 or None, got {threads!r}")
    solver_names, steps_list = list(solver_names), list(steps_list)  # recorded as given; the runs sort them
    options = options or {}
    feature_net = features
    if isinstance(features, str):
        from scoresde.evaluation.metrics import load_feature_net

        feature_net = load_feature_net(features)
    label = label or model.name
    title = run_title(label, model.sde.config(), n, seed, model.step)
    dev = torch.device(device)
    thread_note, threads_before = dev.type, torch.get_num_threads()
    if dev.type == "cpu" and threads is not None:
        if threads == "auto":
            probe = model.sde.prior_sample((min(n, PROBE_N), *model.shape),
                                           generator=torch.Generator().manual_seed(seed), dtype=dtype)
            fastest_thread_count(model.score_fn, probe, batch_size=batch_size)
        else:
            torch.set_num_threads(threads)
    if dev.type == "cpu":
        k = torch.get_num_threads()
        thread_note = f"cpu, {k} thread{'s' * (k > 1)}"
    t0 = time.perf_counter()
    try:
        rows, samples, plan = _execute(model, solver_names, steps_list, n=n, seed=seed, grid=grid, device=device,
                                       dtype=dtype, progress=progress, options=options, feature_net=feature_net,
                                       batch_size=batch_size, cuda_graph=cuda_graph, max_nfe=max_nfe,
                                       on_plan=on_plan, title=title, threads=thread_note)
    finally:  # the thread count is process-wide: leave it as found
        torch.set_num_threads(threads_before)
    wall = time.perf_counter() - t0
    if n < MIN_METRIC_SAMPLES and len(model.shape) != 3:  # the metrics would be noise: none shown or saved
        for r in rows:
            r.metrics = {}
    band = perfect_sampler_band(model, n, seed)
    best, warnings = {}, [r.spread_warning for r in rows if r.spread_warning]
    has_path = add_path_errors(rows, samples, model, options)
    tie = band["hi"] - band["lo"] if band else 0.0
    if any("sw2" in r.metrics for r in rows) or has_path:
        best = {b: best_at_nfe(rows, b, tie) for b in BUDGETS}
    if any("sw2" in r.metrics for r in rows):
        overall = best_at_nfe(rows, math.inf)
        why = far_from_data(overall, band)
        if why:
            warnings.append(f"even the best run ({overall.solver}, {overall.nfe} nfe) is far from the data: {why}. "
                            f"If the runs with the most steps are no better, the model, not the solver, is at "
                            f"fault (train longer, or check the loss).")
    settings = dict(model=label, sde=model.sde.config(), solvers=solver_names, steps=steps_list, grid=grid, n=n,
                    seed=seed, device=str(device), threads=thread_note, float64=dtype == torch.float64,
                    max_nfe=max_nfe, options={k: v for k, v in options.items() if v},
                    features=features if isinstance(features, str) or features is None else type(features).__name__,
                    batch_size=batch_size, cuda_graph=cuda_graph)
    return CompareResult(rows, samples, plan, band, best, warnings, settings, wall, model)
