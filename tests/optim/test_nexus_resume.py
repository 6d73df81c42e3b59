"""Save mid inner loop, load in a NEW process, continue: bitwise equal (test 5)."""

import json
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    from nexus_optim import Nexus
    torch.set_num_threads(1)

    def run(mode, outer_grad, dtype, phase, path, n):
        dtype = getattr(torch, dtype)
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 2)).to(dtype)
        opt = Nexus(model.parameters(), lr=1e-2, inner_lr=0.05, inner_steps=4, inner_norm=mode,
                    outer_grad=outer_grad, max_grad_norm=1.0, seed=7, weight_decay=0.1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1 + t))
        start = 0
        if phase == "resume":
            ckpt = torch.load(path, weights_only=False)
            model.load_state_dict(ckpt["model"]); opt.load_state_dict(ckpt["opt"])
            sched.load_state_dict(ckpt["sched"]); start = ckpt["i"]
        for i in range(start, n):
            g = torch.Generator().manual_seed(100 + i)
            x, y = torch.randn(8, 6, generator=g).to(dtype), torch.randn(8, 2, generator=g).to(dtype)
            torch.nn.functional.mse_loss(model(x).float(), y.float()).backward()
            opt.step(); opt.zero_grad()
            if opt.last_step_was_outer:
                sched.step()
        if phase == "save":
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                        "sched": sched.state_dict(), "i": n}, path)
        anchors = [str(s["nexus_anchor"].dtype) for s in opt.state.values()]
        return {"w": [p.detach().float().flatten().tolist() for p in model.parameters()],
                "anchors": anchors, "inner_step": opt.inner_step,
                "outer_steps": opt.outer_steps}

    phase, n, configs = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    print(json.dumps([run(*c, phase, f"ckpt{i}.pt", n) for i, c in enumerate(configs)]))
    """
)


CONFIGS = [("global", "trajectory", "float32"), ("random", "trajectory", "float32"),
           ("per_tensor", "displacement", "float32"), ("none", "displacement", "float32"),
           ("global", "trajectory", "bfloat16")]


def _run(tmp_path, phase, n):
    """One fresh interpreter per phase, running every configuration."""
    out = subprocess.run([sys.executable, "-c", SCRIPT, phase, str(n), json.dumps(CONFIGS)],
                         check=True, capture_output=True, text=True, cwd=tmp_path)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_resume_in_fresh_process_is_bitwise(tmp_path):
    total, cut = 22, 10  # cut = 2 outer steps + 2 inner steps: mid inner loop
    full = _run(tmp_path, "full", total)
    saved = _run(tmp_path, "save", cut)
    resumed = _run(tmp_path, "resume", total)
    for config, f, s, r in zip(CONFIGS, full, saved, resumed):
        assert s["inner_step"] == 2, config
        assert r["w"] == f["w"], config  # bitwise (exact float equality)
        assert r["outer_steps"] == f["outer_steps"] == 5, config
        assert set(r["anchors"]) == {"torch.float32"}, config
