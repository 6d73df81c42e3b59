"""Mutation check of the Nexus update: break the code on purpose, see a test fail.

Each mutation below is one wrong variant of the update rule. For each, the script
copies ``src/`` to a temporary directory, applies the mutation there (the working
tree is never touched), runs the optimizer's reference tests against the copy and
reports whether at least one test failed (it must: a mutation that survives means
the suite cannot tell the wrong variant from the right one).

    python scripts/mutation_check.py            # all mutations, ~30 s each
    python scripts/mutation_check.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NEXUS = "nexus_optim/optim/nexus.py"
FUNCTIONAL = "nexus_optim/optim/functional.py"
TESTS = ["tests/optim/test_nexus_exact.py", "tests/optim/test_nexus_reference.py",
         "tests/optim/test_nexus_equivalence.py", "tests/optim/test_nexus_api.py",
         "tests/optim/test_nexus_math.py"]

# name -> list of (file under src/, exact old text, replacement)
MUTATIONS: dict[str, list[tuple[str, str, str]]] = {
    "outer step at theta_K (no restore of the anchor before the outer step)": [
        (NEXUS, "        functional.restore_(self._local_params, self._anchors)\n"
                "        if self._sync.local:",
         "        if self._sync.local:"),
    ],
    "random direction normalized per parameter group": [
        (FUNCTIONAL, "        scales = [inverse_norm(unorm, finite, eps)] * len(dirs)",
         "        scales = [None] * len(dirs)\n"
         "        for a, b, _ in slices:\n"
         "            scales[a:b] = [inverse_norm(global_norm(dirs[a:b]), finite, eps)] * (b - a)"),
    ],
    "displacement divisor K instead of the number of finite micro-batches": [
        (NEXUS, "scale = -1.0 / (step * count) if step != 0 and count > 0 else 0.0",
         "scale = -1.0 / (step * self.inner_steps) if step != 0 and count > 0 else 0.0"),
    ],
    "inner move with the wrong sign": [
        (NEXUS, "        return gamma if group.get(\"maximize\", False) else -gamma",
         "        return -gamma if group.get(\"maximize\", False) else gamma"),
    ],
    "K-th move not discarded in trajectory mode": [
        (NEXUS, "        move = not (trajectory and last)", "        move = True"),
    ],
    "clip applied per micro-batch instead of on G": [
        (NEXUS, "        grads = [p.grad for p in plan.params]\n",
         "        grads = [p.grad for p in plan.params]\n"
         "        if self.max_grad_norm is not None:\n"
         "            torch.nn.utils.clip_grad_norm_(grads, self.max_grad_norm)\n"),
        (NEXUS, "        if self.max_grad_norm is not None:\n"
                "            torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm, foreach=True)\n",
         ""),
    ],
}


def run(name: str, edits: list[tuple[str, str, str]]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
        for rel, old, new in edits:
            path = src / rel
            text = path.read_text()
            if text.count(old) != 1:
                raise SystemExit(f"{name}: the text to mutate is not found exactly once in {rel}")
            path.write_text(text.replace(old, new))
        env = dict(os.environ, PYTHONPATH=str(src), PYTHONWARNINGS="ignore")
        t0 = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-rfE", "-p", "no:cacheprovider",
             "-k", "not compile", *TESTS], cwd=ROOT, env=env, capture_output=True, text=True)
        failed = [line.split(" ")[1] for line in proc.stdout.splitlines()
                  if line.startswith("FAILED ")]
        return {"mutation": name, "caught": proc.returncode != 0, "first_failure": failed[:1],
                "seconds": round(time.monotonic() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    baseline = run("none (baseline)", [])
    if baseline["caught"]:  # the unmutated copy must pass, or "caught" means nothing
        raise SystemExit(f"baseline fails: {baseline['first_failure']}")
    results = [run(name, edits) for name, edits in MUTATIONS.items()]
    for r in results:
        print(f"{'CAUGHT ' if r['caught'] else 'MISSED '} {r['mutation']}: "
              f"{r['first_failure'][0] if r['first_failure'] else '-'} ({r['seconds']} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    sys.exit(0 if all(r["caught"] for r in results) else 1)


if __name__ == "__main__":
    main()
