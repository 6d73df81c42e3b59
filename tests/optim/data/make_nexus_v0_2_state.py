"""How tests/optim/data/nexus_v0_2_state.pt was made (the 0.2 format fixture, written by
main at 05c8e4e, before the loop-state redesign of issue 22):

    mkdir -p /tmp/old02
    git archive 05c8e4e src/nexus_optim/optim src/nexus_optim/__init__.py | tar -x -C /tmp/old02
    python tests/optim/data/make_nexus_v0_2_state.py tests/optim/data/nexus_v0_2_state.pt

One entry per case: the Nexus keyword arguments, a mid-loop model + optimizer state
dict, the weights the uninterrupted run reached at the end and its counters. The
micro-batches (``micro_batch`` below) are repeated in tests/optim/test_nexus_state.py.
"""
import copy
import sys

import torch

sys.path.insert(0, "/tmp/old02/src")
from nexus_optim import Nexus  # noqa: E402

CASES = {  # name -> (Nexus kwargs, micro-batches before the save, total, eval mode at save)
    "global_nan_clip": (dict(lr=1e-2, inner_lr=0.1, inner_steps=3, weight_decay=0.1,
                             max_grad_norm=1.0), 7, 15, False),
    "random": (dict(lr=1e-2, inner_lr=0.1, inner_steps=3, inner_norm="random", seed=3), 5, 12,
               False),
    "displacement_sgd_eval": (dict(lr=0.05, inner_lr=0.1, inner_steps=4,
                                   outer_grad="displacement", outer="SGD",
                                   momentum=0.9, inner_norm="per_tensor"), 6, 12, True),
}
NAN_AT = 2  # micro-batch with a NaN target: every gradient non-finite, skipped


def micro_batch(model, opt, i):
    g = torch.Generator().manual_seed(i)
    x, y = torch.randn(5, 3, generator=g), torch.randn(5, 2, generator=g)
    if i == NAN_AT:
        y[0, 0] = float("nan")
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    opt.zero_grad()


def model_and_opt(kwargs):
    """``kwargs`` as stored (``outer`` by its torch.optim name)."""
    kwargs = dict(kwargs)
    if "outer" in kwargs:
        kwargs["outer"] = getattr(torch.optim, kwargs["outer"])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    return model, Nexus(model.parameters(), **kwargs)


def main(path):
    import warnings

    warnings.simplefilter("ignore")
    out = {}
    for name, (kwargs, at, total, eval_mode) in CASES.items():
        model, opt = model_and_opt(kwargs)
        for i in range(at):
            micro_batch(model, opt, i)
        if eval_mode:
            opt.eval()
        saved = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict()})
        opt.train()
        for i in range(at, total):
            micro_batch(model, opt, i)
        saved["final"] = [p.detach().clone() for p in model.parameters()]
        saved["final_counters"] = [opt.outer_steps, opt.inner_step, opt.skipped_micro_batches]
        saved["at"], saved["total"], saved["kwargs"] = at, total, kwargs
        out[name] = saved
    out["about"] = ("nexus-optim 0.2 (main at 05c8e4e) state dicts: Linear(3,4)-Tanh-Linear(4,2), "
                    "torch.manual_seed(0); per case: model+opt saved mid inner loop after `at` "
                    "micro-batches (NaN target at micro-batch 2), final = weights after `total`")
    torch.save(out, path)


if __name__ == "__main__":
    main(sys.argv[1])
