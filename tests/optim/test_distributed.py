"""Data-parallel Nexus on CPU/gloo with 2 processes (docs/distributed.md).

Two launches of 2 worker processes of this file (gloo, FileStore rendezvous, so no
port to choose; ``torchrun --nproc_per_node 2 tests/optim/test_distributed.py main
DIR`` runs the same workers): the first runs every scenario and saves checkpoints,
the second (fresh processes, new model objects) resumes from them. Each rank writes its results to JSON; the
tests below assert on them. Single-process unit tests of the helpers come last.

Scenarios (K micro-batches of 4 samples per rank and outer step, fp32 MLP):
    sync      DDP, inner_sync="sync": ranks identical, == 1 process on the
              concatenated micro-batches; Nexus issues no collective itself.
    local     DDP + no_sync, inner_sync="local": ranks differ mid-loop, identical after
              each outer step, == an independent reference; 1 all_reduce per bucket
              per outer step (2 buckets with a tiny cap, 1 with the default 25 MB).
    local_nan rank 1's micro-batches all non-finite in local mode: no deadlock, the
              outer step uses rank 0's G.
    accum     Nexus local with inner_lr=0 == AdamW with DDP gradient accumulation
              (``backward_context(..., "accumulate")``).
    fsdp      FSDP2 ``fully_shard``, inner_sync="sync": == 1 process (global,
              per_tensor, random directions; with clipping); sharded norms == full.
    resume    per-rank mid-loop checkpoints (local, FSDP2) and a rank-0 boundary
              checkpoint (local) resumed in a fresh launch == uninterrupted.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

K = 3
STEPS = 3
LR = 1e-2
GAMMA = 0.05
WD = 0.01
TOL = 1e-6
# bucket cap that splits the MLP below into two buckets: [W1 (512 B), b1 (64 B)], [W2, b2]
TINY_CAP_MB = 600 / 2**20


# ============================================================== shared by both sides
def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))


def _batch(step: int, k: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(10_000 * step + 100 * k + rank)
    return torch.randn(4, 8, generator=g), torch.randn(4, 4, generator=g)


def _loss(model, batch) -> torch.Tensor:
    x, y = batch
    return torch.nn.functional.mse_loss(model(x), y)


def _cat(step: int, k: int, world: int):
    xs, ys = zip(*(_batch(step, k, r) for r in range(world)))
    return torch.cat(xs), torch.cat(ys)


def _params(model) -> list[torch.Tensor]:
    out = []
    for p in model.parameters():
        p = p.detach()
        out.append(p.full_tensor() if hasattr(p, "full_tensor") else p.clone())
    return out


def _maxdiff(a, b) -> float:
    return max(float((x.double() - y.double()).abs().max()) for x, y in zip(a, b))


# ================================================================== worker (torchrun)
def _nexus(params, **kw):
    from nexus_optim.optim import Nexus

    kw = {"lr": LR, "inner_lr": GAMMA, "inner_steps": K, "weight_decay": WD, **kw}
    return Nexus(params, **kw)


def _single_process(steps, world, **kw) -> list[torch.Tensor]:
    """One process, no distribution, micro-batch k = all ranks' micro-batches k."""
    ref = _model()
    opt = _nexus(ref.parameters(), inner_sync="none", **kw)
    for s in range(steps):
        for k in range(K):
            _loss(ref, _cat(s, k, world)).backward()
            opt.step()
            ref.zero_grad()
    return _params(ref)


def _local_reference(steps, ranks) -> list[torch.Tensor]:
    """Independent plain-torch Nexus-local: per-rank inner paths from the anchor,
    G = mean over ranks of the mean raw gradient along each path, AdamW from the anchor."""
    ref = _model()
    outer = torch.optim.AdamW(ref.parameters(), lr=LR, weight_decay=WD)
    ps = list(ref.parameters())
    for s in range(steps):
        anchor = [p.detach().clone() for p in ps]
        G = [torch.zeros_like(p) for p in ps]
        for r in ranks:
            with torch.no_grad():
                for p, a in zip(ps, anchor):
                    p.copy_(a)
            for k in range(K):
                grads = torch.autograd.grad(_loss(ref, _batch(s, k, r)), ps)
                for acc, g in zip(G, grads):
                    acc.add_(g, alpha=1.0 / (K * len(ranks)))
                norm = torch.sqrt(sum((g * g).sum() for g in grads))
                with torch.no_grad():
                    for p, g in zip(ps, grads):
                        p.sub_(GAMMA * g / (norm + 1e-12))
        with torch.no_grad():
            for p, a, g in zip(ps, anchor, G):
                p.copy_(a)
                p.grad = g
        outer.step()
        outer.zero_grad()
    return _params(ref)


class _CountAllReduce:
    """Counts torch.distributed.all_reduce calls (what Nexus's bucketed reduce uses)."""

    def __init__(self):
        import torch.distributed as dist

        self.dist, self.orig, self.calls = dist, dist.all_reduce, []

    def __enter__(self):
        def wrapped(tensor, *a, **k):
            self.calls.append(tensor.numel())
            return self.orig(tensor, *a, **k)

        self.dist.all_reduce = wrapped
        return self

    def __exit__(self, *exc):
        self.dist.all_reduce = self.orig


def _flat(model) -> torch.Tensor:
    return torch.cat([p.reshape(-1) for p in _params(model)])


def _scenario_sync(rank, world, res):
    from torch.nn.parallel import DistributedDataParallel as DDP

    from nexus_optim.optim import distributed as D

    for outer_grad in ("trajectory", "displacement"):
        ddp = DDP(_model())
        opt = _nexus(ddp.parameters(), outer_grad=outer_grad)  # "auto" -> "sync"
        assert opt.inner_sync == "sync", opt.inner_sync
        path, nexus_calls = [], 0
        with _CountAllReduce() as count:
            for s in range(STEPS):
                for k in range(K):
                    with D.backward_context(ddp, opt.inner_sync):
                        _loss(ddp, _batch(s, k, rank)).backward()
                    opt.step()
                    ddp.zero_grad()
                    path.append(_flat(ddp.module))  # every inner point
        nexus_calls = len(count.calls)
        res[f"sync_{outer_grad}"] = {
            "path": torch.stack(path),
            "nexus_all_reduces": nexus_calls,
            "outer_steps": opt.outer_steps,
            "reference": torch.cat(
                [p.reshape(-1) for p in _single_process(STEPS, world, outer_grad=outer_grad)]
            ) if rank == 0 else None,
        }  # fmt: skip


def _scenario_local(rank, world, res):
    from torch.nn.parallel import DistributedDataParallel as DDP

    from nexus_optim.optim import distributed as D

    for name, cap in (("local_tiny", TINY_CAP_MB), ("local_default", None)):
        ddp = DDP(_model(), **D.ddp_kwargs("local"))
        kw = {} if cap is None else {"bucket_cap_mb": cap}
        opt = _nexus(ddp.parameters(), inner_sync="local", **kw)
        per_outer, inner_calls, path, outer = [], 0, [], []
        with _CountAllReduce() as count:
            for s in range(STEPS):
                for k in range(K):
                    with D.backward_context(ddp, "local"):
                        _loss(ddp, _batch(s, k, rank)).backward()
                    opt.step()
                    ddp.zero_grad()
                    if opt.last_step_was_outer:
                        per_outer.append(list(count.calls))
                    else:
                        inner_calls += len(count.calls)
                    count.calls.clear()
                    path.append(_flat(ddp.module))
                    outer.append(opt.last_step_was_outer)
        res[name] = {
            "buckets_planned": len(opt._sync.plan(list(ddp.parameters()))),
            "per_outer_numels": per_outer,
            "inner_calls": inner_calls,
            "path": torch.stack(path),
            "is_outer": outer,
        }
    if rank == 0:
        ref = _local_reference(STEPS, range(world))
        res["local_reference"] = torch.cat([p.reshape(-1) for p in ref])


def _scenario_local_nan(rank, world, res):
    import warnings

    from torch.nn.parallel import DistributedDataParallel as DDP

    from nexus_optim.optim import distributed as D

    ddp = DDP(_model(), **D.ddp_kwargs("local"))
    opt = _nexus(ddp.parameters(), inner_sync="local")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for k in range(K):
            with D.backward_context(ddp, "local"):
                loss = _loss(ddp, _batch(0, k, rank))
                (loss * float("nan") if rank == 1 else loss).backward()
            opt.step()
            ddp.zero_grad()
    res["local_nan"] = {
        "outer_steps": opt.outer_steps,
        "skipped": opt.skipped_micro_batches,
        "final": _flat(ddp.module),
        "reference": torch.cat([p.reshape(-1) for p in _local_reference(1, [0])]),
    }


def _scenario_accumulate(rank, world, res):
    from torch.nn.parallel import DistributedDataParallel as DDP

    from nexus_optim.optim import distributed as D

    ddp = DDP(_model())
    adamw = torch.optim.AdamW(ddp.parameters(), lr=LR, weight_decay=WD)
    ddp2 = DDP(_model(), **D.ddp_kwargs("local"))
    opt = _nexus(ddp2.parameters(), inner_sync="local", inner_lr=0.0)
    for s in range(STEPS):
        for k in range(K):
            with D.backward_context(ddp, "accumulate", last_micro_batch=k == K - 1):
                (_loss(ddp, _batch(s, k, rank)) / K).backward()
            with D.backward_context(ddp2, "local"):
                _loss(ddp2, _batch(s, k, rank)).backward()
            opt.step()
            ddp2.zero_grad()
        adamw.step()
        adamw.zero_grad()
    res["accumulate"] = {"nexus_local_gamma0_vs_adamw": _maxdiff(_params(ddp), _params(ddp2))}


_MESH = []


def _fsdp_model():
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if not _MESH:  # a CPU mesh: the default would pick CUDA on a GPU machine
        _MESH.append(init_device_mesh("cpu", (dist.get_world_size(),)))
    m = _model()
    kw = {"mesh": _MESH[0], "reshard_after_forward": False}
    fully_shard(m[0], **kw)  # two FSDP param groups
    fully_shard(m, **kw)
    return m


def _scenario_fsdp(rank, world, res):
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError as e:  # pragma: no cover - old torch
        res["fsdp"] = {"unavailable": repr(e)}
        return
    from nexus_optim.optim import distributed as D

    out = {}
    # the norm over DTensor shards == the norm of the unsharded gradients
    m, full = _fsdp_model(), _model()
    _loss(m, _batch(0, 0, rank)).backward()
    _loss(full, _cat(0, 0, world)).backward()
    grads = [p.grad for p in m.parameters()]
    norms, total = D.grad_norms(grads)
    full_norms = [p.grad.norm() for p in full.parameters()]
    local_total = float(torch.sqrt(sum(g.to_local().pow(2).sum() for g in grads)))
    out["norms"] = {
        "per_tensor_diff": max(abs(float(a) - float(b)) for a, b in zip(norms, full_norms)),
        "total": total,
        "full_total": float(torch.sqrt(sum(n**2 for n in full_norms))),
        "local_shard_total": local_total,
        "is_dtensor": D.is_dtensor(grads[0]),
    }
    try:
        _nexus(m.parameters(), inner_sync="local")
        out["local_rejected"] = False
    except ValueError:
        out["local_rejected"] = True
    for inner_norm, outer_grad in (
        ("global", "trajectory"),
        ("per_tensor", "displacement"),
        ("random", "trajectory"),
        ("global", "displacement"),
    ):
        kw = {"inner_norm": inner_norm, "outer_grad": outer_grad, "max_grad_norm": 0.05}
        m = _fsdp_model()
        opt = _nexus(m.parameters(), inner_sync="sync", **kw)
        for s in range(2):
            for k in range(K):
                _loss(m, _batch(s, k, rank)).backward()
                opt.step()
                m.zero_grad()
        full = _params(m)  # full_tensor(): a collective, on every rank
        ref = _single_process(2, world, **kw) if rank == 0 else full
        out[f"{inner_norm}_{outer_grad}"] = _maxdiff(full, ref)
    res["fsdp"] = out


def _train_local(ddp, opt, rank, calls):
    from nexus_optim.optim import distributed as D

    for s, k in calls:
        with D.backward_context(ddp, "local"):
            _loss(ddp, _batch(s, k, rank)).backward()
        opt.step()
        ddp.zero_grad()


def _train_fsdp(m, opt, rank, calls):
    for s, k in calls:
        _loss(m, _batch(s, k, rank)).backward()
        opt.step()
        m.zero_grad()


MID = [(s, k) for s in range(2) for k in range(K)] + [(2, 0)]  # 2 outer steps + 1 inner
REST = [(2, k) for k in range(1, K)] + [(3, k) for k in range(K)]
BOUNDARY = [(s, k) for s in range(2) for k in range(K)]
AFTER_BOUNDARY = [(s, k) for s in range(2, 4) for k in range(K)]


def _scenario_resume_save(rank, world, res, out: Path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from nexus_optim.optim import distributed as D

    ddp = DDP(_model(), **D.ddp_kwargs("local"))
    opt = _nexus(ddp.parameters(), inner_sync="local", bucket_cap_mb=TINY_CAP_MB)
    _train_local(ddp, opt, rank, BOUNDARY)
    if rank == 0:  # at an outer boundary one rank's state is everyone's state
        torch.save({"model": ddp.module.state_dict(), "opt": opt.state_dict()}, out / "boundary.pt")
    _train_local(ddp, opt, rank, [(2, 0)])
    # mid-loop: anchors agree, trajectories do not: one file per rank
    torch.save(
        {"model": ddp.module.state_dict(), "opt": opt.state_dict()}, out / f"mid_rank{rank}.pt"
    )
    _train_local(ddp, opt, rank, REST)
    torch.save(_params(ddp.module), out / f"local_final_rank{rank}.pt")

    m = _fsdp_model()
    opt = _nexus(m.parameters(), inner_sync="sync")
    _train_fsdp(m, opt, rank, MID)
    torch.save({"model": m.state_dict(), "opt": opt.state_dict()}, out / f"fsdp_mid_rank{rank}.pt")
    _dcp_save(m, opt, out / "fsdp_dcp")
    _train_fsdp(m, opt, rank, REST)
    torch.save(_params(m), out / f"fsdp_final_rank{rank}.pt")
    dist.barrier()


def _dcp_save(model, opt, path: Path) -> None:
    """torchtitan's way: DCP state dicts of model and optimizer, one sharded checkpoint."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, opt)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(path))


def _dcp_load(model, opt, path: Path) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, opt)  # the template of a fresh optimizer
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])


def _scenario_resume_load(rank, world, res, out: Path):
    from torch.nn.parallel import DistributedDataParallel as DDP

    from nexus_optim.optim import distributed as D

    def fresh(path):
        model = _model()
        with torch.no_grad():  # different weights: the checkpoint must set them
            for p in model.parameters():
                p.add_(1.0)
        ck = torch.load(path, weights_only=False)
        ddp = DDP(model, **D.ddp_kwargs("local"))
        # after wrapping: DDP's constructor broadcasts rank 0's weights, which would
        # overwrite this rank's own inner point of a mid-loop "local" checkpoint
        ddp.module.load_state_dict(ck["model"])
        opt = _nexus(ddp.parameters(), inner_sync="local", bucket_cap_mb=TINY_CAP_MB)
        opt.load_state_dict(ck["opt"])
        return ddp, opt

    final = torch.load(out / f"local_final_rank{rank}.pt")
    ddp, opt = fresh(out / f"mid_rank{rank}.pt")
    _train_local(ddp, opt, rank, REST)
    res["resume_mid"] = _maxdiff(_params(ddp.module), final)
    ddp, opt = fresh(out / "boundary.pt")
    _train_local(ddp, opt, rank, AFTER_BOUNDARY)
    res["resume_boundary"] = _maxdiff(_params(ddp.module), final)
    res["resume_replica_diff"] = D.max_replica_difference(ddp.parameters())

    m = _fsdp_model()
    ck = torch.load(out / f"fsdp_mid_rank{rank}.pt", weights_only=False)
    m.load_state_dict(ck["model"])
    opt = _nexus(m.parameters(), inner_sync="sync")
    opt.load_state_dict(ck["opt"])
    anchor = next(iter(opt.state.values()))["nexus_anchor"]
    res["fsdp_anchor_is_dtensor"] = D.is_dtensor(anchor)
    _train_fsdp(m, opt, rank, REST)
    res["fsdp_resume_mid"] = _maxdiff(_params(m), torch.load(out / f"fsdp_final_rank{rank}.pt"))

    m = _fsdp_model()  # FSDP2 + torch.distributed.checkpoint (dcp.save / dcp.load)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)  # different weights: the checkpoint must set them
    opt = _nexus(m.parameters(), inner_sync="sync")
    _dcp_load(m, opt, out / "fsdp_dcp")
    res["dcp_inner_step"] = opt.inner_step
    res["dcp_anchor_is_dtensor"] = D.is_dtensor(next(iter(opt.state.values()))["nexus_anchor"])
    _train_fsdp(m, opt, rank, REST)
    res["fsdp_dcp_resume_mid"] = _maxdiff(_params(m), torch.load(out / f"fsdp_final_rank{rank}.pt"))


def _worker(phase: str, out: Path) -> None:
    import torch.distributed as dist

    if "NEXUS_TEST_STORE" in os.environ:  # launched by _launch below
        dist.init_process_group(
            "gloo",
            init_method="file://" + os.environ["NEXUS_TEST_STORE"],
            rank=int(os.environ["RANK"]),
            world_size=int(os.environ["WORLD_SIZE"]),
            timeout=datetime.timedelta(seconds=120),
        )
    else:  # torchrun --nproc_per_node 2 tests/optim/test_distributed.py PHASE DIR
        dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    res: dict = {}
    if phase == "main":
        _scenario_sync(rank, world, res)
        _scenario_local(rank, world, res)
        _scenario_local_nan(rank, world, res)
        _scenario_accumulate(rank, world, res)
        _scenario_fsdp(rank, world, res)
        _scenario_resume_save(rank, world, res, out)
    else:
        _scenario_resume_load(rank, world, res, out)
    torch.save(res, out / f"{phase}_rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


# ====================================================================== pytest side
def _launch(phase: str, out: Path) -> list[dict]:
    """Two worker processes of this file (what ``torchrun --nproc_per_node 2`` starts,
    minus the agent), rendezvous through a FileStore in ``out``: no port to pick."""
    store = out / f"store_{phase}"
    store.unlink(missing_ok=True)
    procs = []
    for rank in range(2):
        env = dict(
            os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", RANK=str(rank),
            LOCAL_RANK=str(rank), WORLD_SIZE="2", NEXUS_TEST_STORE=str(store),
            CUDA_VISIBLE_DEVICES="",  # CPU/gloo test, also on a GPU machine
        )  # fmt: skip
        with open(out / f"{phase}_rank{rank}.log", "w") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, __file__, phase, str(out)],
                    env=env, stdout=log, stderr=subprocess.STDOUT,
                )  # fmt: skip
            )
    deadline = time.monotonic() + 240
    while any(p.poll() is None for p in procs):  # one rank failing would hang the other
        if time.monotonic() > deadline or any(p.poll() not in (None, 0) for p in procs):
            for p in procs:
                if p.poll() is None:
                    p.kill()
            break
        time.sleep(0.05)
    if any(p.wait() != 0 for p in procs):
        logs = [(out / f"{phase}_rank{r}.log").read_text()[-6000:] for r in range(2)]
        pytest.fail(f"{phase} workers failed:\n" + "\n".join(logs))
    return [torch.load(out / f"{phase}_rank{r}.pt", weights_only=False) for r in range(2)]


def _gloo_ok() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_gloo_available()


needs_gloo = pytest.mark.skipif(not _gloo_ok(), reason="torch.distributed with gloo needed")


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("dist")


@pytest.fixture(scope="module")
def main_run(ckpt_dir) -> list[dict]:
    return _launch("main", ckpt_dir)


@pytest.fixture(scope="module")
def resume_run(main_run, ckpt_dir) -> list[dict]:
    return _launch("resume", ckpt_dir)


@needs_gloo
@pytest.mark.parametrize("outer_grad", ["trajectory", "displacement"])
def test_sync_mode_equals_single_process_on_concatenated_batches(main_run, outer_grad):
    r0, r1 = (res[f"sync_{outer_grad}"] for res in main_run)
    assert r0["outer_steps"] == r1["outer_steps"] == STEPS
    assert torch.equal(r0["path"], r1["path"])  # identical replicas at every inner point
    assert (r0["path"][-1] - r0["reference"]).abs().max() <= TOL
    assert r0["nexus_all_reduces"] == r1["nexus_all_reduces"] == 0  # DDP did it all


@needs_gloo
def test_local_mode_replicas_identical_after_each_outer_step(main_run):
    for name in ("local_tiny", "local_default"):
        r0, r1 = (res[name] for res in main_run)
        assert r0["is_outer"] == [(i + 1) % K == 0 for i in range(K * STEPS)]
        for i, outer in enumerate(r0["is_outer"]):
            if outer:  # identical after every outer step
                assert torch.equal(r0["path"][i], r1["path"][i]), i
            else:  # own inner paths, no communication
                assert not torch.allclose(r0["path"][i], r1["path"][i]), i
        assert (r0["path"][-1] - main_run[0]["local_reference"]).abs().max() <= TOL


@needs_gloo
def test_local_mode_one_all_reduce_per_bucket_per_outer_step(main_run):
    n_params = sum(p.numel() for p in _model().parameters())  # 212
    meta = 4 + 1  # one flag per parameter tensor, one per rank
    for res in main_run:
        tiny, default = res["local_tiny"], res["local_default"]
        assert tiny["inner_calls"] == default["inner_calls"] == 0
        assert tiny["buckets_planned"] == 2
        assert tiny["per_outer_numels"] == [[meta + 128 + 16, 64 + 4]] * STEPS
        assert default["buckets_planned"] == 1
        assert default["per_outer_numels"] == [[meta + n_params]] * STEPS


@needs_gloo
def test_local_mode_nonfinite_rank_does_not_deadlock(main_run):
    r0, r1 = (res["local_nan"] for res in main_run)
    assert r0["outer_steps"] == r1["outer_steps"] == 1
    assert (r0["skipped"], r1["skipped"]) == (0, K)
    assert torch.equal(r0["final"], r1["final"])
    assert (r0["final"] - r0["reference"]).abs().max() <= TOL  # G from rank 0 alone


@needs_gloo
def test_local_gamma0_equals_adamw_ddp_accumulation(main_run):
    for res in main_run:
        assert res["accumulate"]["nexus_local_gamma0_vs_adamw"] <= TOL


@needs_gloo
def test_fsdp2_sharded_norm_equals_unsharded_norm(main_run):
    for res in main_run:
        f = res["fsdp"]
        if "unavailable" in f:
            pytest.skip(f["unavailable"])
        n = f["norms"]
        assert n["is_dtensor"]
        assert n["per_tensor_diff"] <= 1e-6
        assert abs(n["total"] - n["full_total"]) <= 1e-6
        assert n["local_shard_total"] < n["total"] - 1e-3  # a shard's norm is not it
        assert f["local_rejected"]


@needs_gloo
@pytest.mark.parametrize(
    "case",
    ["global_trajectory", "per_tensor_displacement", "random_trajectory", "global_displacement"],
)
def test_fsdp2_sync_equals_single_process(main_run, case):
    for res in main_run:
        if "unavailable" in res["fsdp"]:
            pytest.skip(res["fsdp"]["unavailable"])
        assert res["fsdp"][case] <= TOL, res["fsdp"]


@needs_gloo
def test_resume_in_fresh_processes(resume_run):
    for res in resume_run:
        assert res["resume_mid"] <= 1e-7, res  # per-rank mid-loop checkpoint
        assert res["resume_boundary"] <= 1e-7, res  # rank 0's boundary checkpoint
        assert res["resume_replica_diff"] == 0.0
        assert res["fsdp_anchor_is_dtensor"]
        assert res["fsdp_resume_mid"] <= 1e-7, res
        # FSDP2 + dcp.save mid inner loop, dcp.load into fresh processes, continue
        assert res["dcp_inner_step"] == 1 and res["dcp_anchor_is_dtensor"], res
        assert res["fsdp_dcp_resume_mid"] == 0.0, res


# ----------------------------------------------------------- single-process helpers
def test_resolve_inner_sync_without_process_group():
    from nexus_optim.optim import distributed as D

    assert D.resolve_inner_sync("auto") == "none"
    assert D.resolve_inner_sync(None) == "none"
    assert D.resolve_inner_sync("none") == "none"
    assert D.resolve_inner_sync("sync") == "sync"
    with pytest.raises(ValueError, match="not initialized"):
        D.resolve_inner_sync("local")
    with pytest.raises(ValueError, match="not one of"):
        D.resolve_inner_sync("async")


def test_nexus_inner_sync_argument_single_process():
    from nexus_optim.optim import Nexus

    m = _model()
    assert Nexus(m.parameters()).inner_sync == "none"
    assert Nexus(m.parameters(), inner_sync=None).inner_sync == "none"
    with pytest.raises(ValueError, match="inner_sync"):
        Nexus(m.parameters(), inner_sync="local")
    with pytest.raises(ValueError, match="bucket_cap_mb"):
        Nexus(m.parameters(), bucket_cap_mb=0)
    # not forwarded to the outer optimizer
    assert "inner_sync" not in Nexus(m.parameters(), inner_sync="sync").outer.defaults


def test_bucket_plan():
    from nexus_optim.optim import distributed as D

    ts = [torch.zeros(128), torch.zeros(16), torch.zeros(64), torch.zeros(4)]
    assert D.bucket_plan(ts, 600) == [[0, 1], [2, 3]]
    assert D.bucket_plan(ts, 10**9) == [[0, 1, 2, 3]]
    assert D.bucket_plan(ts, 1) == [[0], [1], [2], [3]]  # larger than the cap: alone
    # fp64 tensors are reduced in fp64 (8 bytes) and never share a bucket with fp32
    mixed = [torch.zeros(10), torch.zeros(10, dtype=torch.float64), torch.zeros(10)]
    assert D.bucket_plan(mixed, 10**9) == [[0], [1], [2]]


def test_backward_context_modes():
    from nexus_optim.optim import distributed as D

    class FakeDDP(torch.nn.Module):
        entered = 0

        def no_sync(self):
            import contextlib

            @contextlib.contextmanager
            def cm():
                FakeDDP.entered += 1
                yield

            return cm()

    m = FakeDDP()
    for mode, last, skips in [
        ("sync", False, 0), ("none", False, 0), (None, False, 0), ("local", True, 1),
        ("accumulate", False, 1), ("accumulate", True, 0),
    ]:  # fmt: skip
        before = FakeDDP.entered
        with D.backward_context(m, mode, last_micro_batch=last):
            pass
        assert FakeDDP.entered - before == skips, (mode, last)
    with pytest.raises(ValueError):
        D.backward_context(m, "bogus")


def test_grad_norms_plain_tensors_match_functional():
    from nexus_optim.optim import distributed as D
    from nexus_optim.optim import functional

    ts = [torch.randn(3, 4), torch.randn(5)]
    norms, total = D.grad_norms(ts)
    assert all(torch.equal(a, b) for a, b in zip(norms, functional.tensor_norms(ts)))
    assert total == float(functional.global_norm(ts))
    assert D.to_local(ts) is ts


if __name__ == "__main__":
    _worker(sys.argv[1], Path(sys.argv[2]))
