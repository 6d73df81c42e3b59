"""The pre-declared dose-response study (`nexus study --design dose`; issue 20, item 3):
its design (``DoseDesign``), its rules as text (``DOSE_RULES``, written into ``design.json``)
and as code (lr*, the cost/gain row, the large size's settings, transfer), and its cost.
``experiments/dose.py`` runs it; ``report/dose.py`` renders the gamma guide."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

# `nexus study --design dose` (issue 20, item 3), declared before any of its runs. The CPU
# study's gamma* = 0.03 did not engage the mechanism; this design asks, at two model sizes,
# whether any relative gamma r (``optim.inner_lr_scale=lr_sqrt_params``: gamma = r * lr *
# sqrt(#params), docs/algorithm.md "A scale-free gamma") raises between-source gradient
# similarity without costing in-distribution loss (a "window"), and whether that r transfers
# from the small size to the large one. Everything is read in bits/byte (ID) and cosine units
# (similarity); OOD numbers are recorded but no rule reads them.
DOSE_READINGS = ("trajectory", "displacement")
DOSE_SCHEDULES = ("fixed", "follow")  # follow: optim.inner_lr_follows_lr=true


# The training data: the train mixture split into its parts, one source each (more sources
# than K = 4 is fine: homogeneous micro-batches draw them stratified by weight), so that the
# between-source similarity has more than three sources to act on; the held-out sources of
# the default mixture as OOD (recorded, read by no rule).
DOSE_SOURCES = (
    *({"name": f"prose_{p}", "kind": "prose", "max_chars": 1_000_000, "options": {"parts": [p]}}
      for p in ("gcide_json", "kjv", "shakespeare", "fortunes_bsd")),
    {"name": "math", "kind": "math", "max_chars": 3_000_000},
    {"name": "code", "kind": "code", "max_chars": 4_000_000},
    {"name": "ood_logic", "kind": "metamath_logic", "role": "ood", "max_chars": 600_000},
    {"name": "ood_cpp", "kind": "cpp", "role": "ood", "max_chars": 600_000},
    {"name": "ood_gsm_multilingual", "kind": "gsm_multilingual", "role": "ood", "max_chars": 600_000},
)

@dataclass(frozen=True)
class DoseSize:
    """One model size: ``nano`` with ``overrides``; ``steps`` outer steps of K x micro-batch x
    seq_len tokens, at least ``min_tokens_per_param`` tokens per parameter."""

    label: str
    overrides: dict
    n_params: int  # at vocab_size (the tokens-per-parameter rule; each run records its own in meta.yaml)
    steps: int
    eval_every: int


@dataclass(frozen=True)
class DoseDesign:
    """The dose-response study (the block comment above; rules in ``DOSE_RULES``)."""

    name: str = "dose"
    preset: str = "nano"
    sizes: tuple = (
        DoseSize("s", {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 176}, 133_440, 652, 32),
        DoseSize("l", {"num_hidden_layers": 3}, 668_544, 3265, 163),
    )
    sources: tuple = DOSE_SOURCES
    data_dir: str = "data"
    vocab_size: int = 512
    seq_len: int = 128
    inner_steps: int = 4
    micro_batch_size: int = 8
    warmup_fraction: float = 0.05
    min_lr_ratio: float = 0.1
    min_tokens_per_param: float = 20.0
    eval_tokens: int = 16384
    grad_sim_batches: int = 2
    seeds: tuple = (0, 1)  # every setting at the small size
    large_seeds: tuple = (0,)
    large_lr_factors: tuple = (0.5, 1.0)  # the large size's AdamW: the small lr* times these (no extension)
    # AdamW: a grid that brackets its optimum (extended once by a factor 2 at an edge)
    adamw_lrs: tuple = (1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2)
    # Nexus: relative gammas r (CPU study: r 0.015 was inert, similarity rose from r ~ 0.5)
    relative_gammas: tuple = (0.03, 0.1, 0.3, 1.0, 3.0)
    readings: tuple = DOSE_READINGS
    schedules: tuple = DOSE_SCHEDULES
    # the window: ID cost and similarity gain against the size's best AdamW
    window_id_bpb: float = 0.02  # end bpb/id within this of AdamW(lr*)
    similarity_margin: float = 0.02  # mean geom/grad_sim over training above AdamW(lr*)'s by this
    random_max: int = 2  # random-direction control at up to this many engaging r
    # closeness: the CPU study's fixed protocol, with two fine-tune seeds (test-retest)
    closeness_steps: int = 100
    closeness_lr: float = 1e-3
    closeness_min_lr_ratio: float = 0.1
    closeness_seeds: tuple = (0, 1)
    closeness_points: int = 3
    closeness_eval_tokens: int = 8192
    device: str = "cpu"
    threads: int = 1
    # sizing (``dose_cost``; docs/results/study-throughput.md): one single-threaded process for
    # about budget_hours (spread over sessions: the study resumes). tokens/s per size = the CPU
    # study's logged 18,116 tokens/s (nano-2L, eager, 1 thread per run) x each size's speed
    # relative to nano-2L measured side by side (benchmarks/study_throughput.py --models cpu
    # dose-s dose-l: s 2.29-2.49x, l 0.65-0.85x; the lower ratio taken). post_overhead: the
    # evaluations (20 x 9 sources x eval_tokens forward, about 1/3 of a training token each,
    # + gradient cosines), the full validation sets and the closeness fine-tunes (6 sources x
    # 100 steps x 1,024 tokens + their evaluations; twice on the retest runs), as a fraction
    # of the run's training time: about 1.4 at s (2.7M training tokens), 0.3 at l (13.4M)
    budget_hours: float = 6.0
    tokens_per_s: tuple = (("s", 41_000.0), ("l", 11_500.0))
    post_overhead: tuple = (("s", 1.4), ("l", 0.3))
    confidence: float = 0.95

    def __post_init__(self):
        tokens = self.inner_steps * self.micro_batch_size * self.seq_len
        for s in self.sizes:
            if s.steps * tokens < self.min_tokens_per_param * s.n_params:
                raise ValueError(f"dose design: size {s.label!r} trains {s.steps * tokens:,} tokens, fewer than "
                                 f"{self.min_tokens_per_param:g} per parameter ({s.n_params:,})")
            if s.eval_every * 20 > s.steps:
                raise ValueError(f"dose design: size {s.label!r} eval_every must be <= 5% of steps")
        small, large = self.sizes[0], self.sizes[-1]
        if large.n_params < 4 * small.n_params:
            raise ValueError("dose design: the sizes must be at least 4x apart in parameters")

    @property
    def closeness_seed(self) -> int:
        """The fine-tune seed of every run's closeness (``closeness_seeds[1]``: the retest)."""
        return self.closeness_seeds[0]

    def size(self, label: str) -> DoseSize:
        for s in self.sizes:
            if s.label == label:
                return s
        raise ValueError(f"dose design: no size {label!r}")

    def tokens_per_run(self, label: str) -> int:
        return self.size(label).steps * self.inner_steps * self.micro_batch_size * self.seq_len

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(rules=dict(DOSE_RULES), cost=dose_cost(self))
        return d

    def base_overrides(self, label: str) -> list[str]:
        """``--set`` overrides shared by every run of size ``label``."""
        s = self.size(label)
        ov = ", ".join(f"{k}: {v}" for k, v in s.overrides.items())
        return [f"model.preset={self.preset}", f"model.overrides={{{ov}}}",
                f"data.sources={json.dumps(list(self.sources))}", f"data.data_dir={self.data_dir}",
                f"data.vocab_size={self.vocab_size}", f"model.seq_len={self.seq_len}",
                f"train.steps={s.steps}", f"optim.inner_steps={self.inner_steps}",
                f"train.micro_batch_size={self.micro_batch_size}",
                f"schedule.warmup_steps={max(1, round(self.warmup_fraction * s.steps))}",
                f"schedule.min_lr_ratio={self.min_lr_ratio}",
                f"train.eval_every={s.eval_every}", f"train.eval_tokens={self.eval_tokens}",
                f"train.grad_sim_batches={self.grad_sim_batches}", f"train.ckpt_every={max(1, s.steps // 4)}",
                "train.keep_checkpoints=1", "train.export_hf=false", "train.progress=false",
                f"train.threads={self.threads}", f"train.device={self.device}"]


DOSE_RULES = (
    ("lr*", "per size, the AdamW lr with the lowest mean end bpb/id over its seeds; if it is at an edge of "
            "the grid, the next lr beyond it (x2 or /2) is run once and the rule applied again"),
    ("cost", "a Nexus setting's mean end bpb/id minus AdamW(lr*)'s, same size, mean over the seeds both have"),
    ("gain", "mean over seeds of (the run's mean geom/grad_sim over training minus the same seed's "
             "AdamW(lr*) run's)"),
    ("engaged", "gain >= similarity_margin"),
    ("window", "engaged and cost <= window_id_bpb (bits/byte)"),
    ("controls", "random-direction control (trajectory reading's schedule) at the up to random_max smallest "
                 "engaging r; the paired mixed-micro-batch control (train.sampling=mixed-paired: the same "
                 "windows as the Nexus run, re-split so every micro-batch mixes sources) for Nexus and AdamW "
                 "at the small size's best window (largest gain), else at its cheapest engaging setting"),
    ("large", "AdamW at the small lr* times large_lr_factors (the lower end bpb/id is lr*, no extension; "
              "an edge is reported); Nexus at the small size's best window r and its "
              "grid neighbours, both readings, the window's schedule; no window: the cheapest engaging "
              "setting's r and neighbours"),
    ("transfer", "yes if the small size's best window r is a window at the large size (same rule against "
                 "the large AdamW(lr*)); the guide also reports the large size's own windows"),
    ("closeness", "the fixed protocol (AdamW, K = 1, cosine) with closeness_seeds[0] on every run and "
                  "closeness_seeds[1] on seed-0 runs of the small size: test-retest reliability = Pearson r "
                  "of cross_loss_gap across runs between the two fine-tune seeds"),
    ("spread", "std over the train sources of val/<source> where the run's val/id crosses AdamW(lr*)'s "
               "val/id at 80% of its training (per-source losses at matched mean)"),
    ("go/no-go", "a confirmatory paired comparison (>= 12 seeds, OOD bits/byte on full sets) only if a window "
                 "exists; else the result is that none exists over the grid, stated with what was tried"),
)


def dose_runs_planned(d: DoseDesign) -> dict[str, int]:
    """Runs per phase before any result (controls and the large size's Nexus runs at their
    declared maximum): the count the cost is sized on."""
    n_s, n_l = len(d.seeds), len(d.large_seeds)
    nexus = len(d.relative_gammas) * len(d.readings) * len(d.schedules)
    return {"s-adamw": (len(d.adamw_lrs) + 1) * n_s, "s-nexus": nexus * n_s,
            "s-controls": (d.random_max + 2) * n_s, "l-adamw": len(d.large_lr_factors) * n_l,
            "l-nexus": 3 * len(d.readings) * n_l}


def dose_cost(d: DoseDesign) -> dict:
    """The design's cost in hours of one single-threaded process: runs x tokens / measured
    tokens/s x (1 + post_overhead), per phase and in all."""
    tps, post = dict(d.tokens_per_s), dict(d.post_overhead)
    per_run = {s.label: d.tokens_per_run(s.label) / tps[s.label] * (1 + post[s.label]) / 3600 for s in d.sizes}
    runs = dose_runs_planned(d)
    hours = {ph: n * per_run[ph.split("-")[0]] for ph, n in runs.items()}
    return {"runs": runs, "hours_per_run": per_run, "hours": hours, "total_hours": sum(hours.values()),
            "budget_hours": d.budget_hours}


# ------------------------------------------------------------------ the dose rules as code
def dose_select_lr(means: dict[float, float | None]) -> tuple[float, str | None]:
    """lr* = the lr with the lowest mean end bpb/id (None: a run that diverged or has no final
    eval, never chosen); ``edge`` "low" / "high" when lr* is the grid's smallest / largest."""
    finite = {lr: m for lr, m in means.items() if m is not None and math.isfinite(m)}
    if not finite:
        raise RuntimeError("dose study: no AdamW run has an end bpb/id; cannot select lr*")
    lr = min(finite, key=finite.get)
    edge = "low" if lr == min(means) else "high" if lr == max(means) else None
    return lr, edge


def dose_row(runs: dict[int, dict], base: dict[int, dict], d: DoseDesign) -> dict:
    """One Nexus setting's row: ``cost`` (mean end bpb/id minus AdamW(lr*)'s, over the seeds both
    have), ``gain`` (mean over those seeds of the per-seed difference of mean grad_sim over
    training), ``engaged`` and ``window`` (``DOSE_RULES``). Missing read-outs leave a seed out."""
    seeds = [s for s in runs if s in base and runs[s].get("bpb_id") is not None
             and base[s].get("bpb_id") is not None]
    sims = [s for s in seeds if runs[s].get("grad_sim") is not None and base[s].get("grad_sim") is not None]
    cost = sum(runs[s]["bpb_id"] - base[s]["bpb_id"] for s in seeds) / len(seeds) if seeds else None
    gain = sum(runs[s]["grad_sim"] - base[s]["grad_sim"] for s in sims) / len(sims) if sims else None
    engaged = gain is not None and gain >= d.similarity_margin
    return {"cost": cost, "gain": gain, "n": len(seeds), "engaged": engaged,
            "window": engaged and cost is not None and cost <= d.window_id_bpb}


def large_settings(win: dict, d: DoseDesign) -> list[tuple]:
    """The large size's Nexus settings (``DOSE_RULES`` "large"): the small size's best window r
    (largest gain) and its grid neighbours, both readings, the window's schedule; with no window
    the cheapest engaging setting's; with neither, the largest r of the grid (fixed schedule)."""
    if win["windows"]:
        at = max(win["windows"], key=lambda x: x["gain"])
    elif win["engaged"]:
        at = min(win["engaged"], key=lambda x: x["cost"])
    else:
        at = {"r": d.relative_gammas[-1], "schedule": "fixed"}
    grid = list(d.relative_gammas)
    i = grid.index(at["r"])
    rs = grid[max(0, i - 1):i + 2]
    return [(r, rd, at["schedule"]) for r in rs for rd in d.readings]


def transfer(small: dict, large: dict) -> dict:
    """Does the small size's best window r transfer (``DOSE_RULES`` "transfer")?"""
    if not small["windows"]:
        return {"window_small": None, "transfers": None,
                "answer": "no window at the small size: nothing to transfer",
                "large_windows": [(x["r"], x["reading"], x["schedule"]) for x in large["windows"]]}
    best = max(small["windows"], key=lambda x: x["gain"])
    at_large = [x for x in large["rows"] if x["r"] == best["r"] and x["schedule"] == best["schedule"]
                and x["reading"] == best["reading"]]
    ok = bool(at_large) and at_large[0]["window"]
    return {"window_small": [best["r"], best["reading"], best["schedule"]], "transfers": ok,
            "at_large": at_large[0] if at_large else None,
            "large_windows": [(x["r"], x["reading"], x["schedule"]) for x in large["windows"]]}

