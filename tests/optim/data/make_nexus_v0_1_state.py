"""How tests/optim/data/nexus_v0_1_state.pt was made (the 0.1 format fixture):

    git archive 3183c1e src/nexus_optim/optim src/nexus_optim/__init__.py | tar -x -C /tmp/old
    python tests/optim/data/make_nexus_v0_1_state.py tests/optim/data/nexus_v0_1_state.pt
"""
import sys, torch
sys.path.insert(0, "/tmp/old/src")
from nexus_optim import Nexus
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
opt = Nexus(model.parameters(), lr=1e-2, inner_lr=0.1, inner_steps=3, weight_decay=0.1)
def step(i):
    g = torch.Generator().manual_seed(i)
    x, y = torch.randn(5, 3, generator=g), torch.randn(5, 2, generator=g)
    torch.nn.functional.mse_loss(model(x), y).backward(); opt.step(); opt.zero_grad()
for i in range(4): step(i)
import copy
saved = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict()})
for i in range(4, 10): step(i)
saved["final"] = [p.detach().clone() for p in model.parameters()]
saved["about"] = "nexus-optim 0.1 (commit 3183c1e) state dict: Linear(3,4)-Tanh-Linear(4,2), seed 0, K=3, inner_lr 0.1, lr 1e-2, wd 0.1, saved after 4 micro-batches (mid loop); final = weights after 10 micro-batches"
torch.save(saved, sys.argv[1])
