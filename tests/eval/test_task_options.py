"""Eval task options and --limit are checked before anything is loaded: a typo names the
allowed keys, nan / negative / out-of-range values are one line (issue 21)."""

from __future__ import annotations

import pytest

from nexus_optim.cli import main
from nexus_optim.eval.tasks import OPTIONS, TaskContext, check_options, run_tasks


@pytest.mark.parametrize("args, message", [
    (["--task-option", "code.timeuot=3"],
     "--task-option code.timeuot: unknown option; allowed for code: max_new_tokens, timeout, workers"),
    (["--task-option", "code.timeout=nan"], "--task-option code.timeout: must be a finite number, got nan"),
    (["--task-option", "code.timeout=.inf"], "--task-option code.timeout: must be a finite number, got inf"),
    (["--task-option", "code.timeout=0"], "--task-option code.timeout: must be > 0.0 and <= 300.0, got 0"),
    (["--task-option", "code.timeout=1e9"], "--task-option code.timeout: must be > 0.0 and <= 300.0, got 1000000000.0"),
    (["--task-option", "code.workers=-1"], "--task-option code.workers: must be >= 1 and <= 64, got -1"),
    (["--task-option", "gsm.fewshot=many"], "--task-option gsm.fewshot: expected int, got 'many'"),
    (["--task-option", "gsm.fewshot=true"], "--task-option gsm.fewshot: expected int, got True"),
    (["--task-option", "arith.digits=100"], "--task-option arith.digits: must be >= 1 and <= 18, got 100"),
    (["--task-option", "mc.sources=prose"], "--task-option mc.sources: expected a list of source names, got 'prose'"),
    (["--task-option", "gms.fewshot=3"], "--task-option gms.*: unknown task 'gms'; known: gsm, arith, mc, code"),
    (["--task-option", "code.timeout={a: &a [*a]}"], "invalid YAML: recursive alias"),
    (["--limit", "-5"], "--limit: must be a positive integer (items per task) <= 1000000, got -5"),
    (["--limit", "1000000000000"], "--limit: must be a positive integer (items per task) <= 1000000, got 1000000000000"),
    (["--limit", "0"], "--limit: must be a positive integer (items per task) <= 1000000, got 0"),
])
def test_bad_task_options_and_limit_are_one_line_before_loading(args, message, tmp_path, capsys):
    missing = tmp_path / "no-such-run"  # never opened: the options are refused first
    assert main(["eval", str(missing), "--tasks", "code", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nexus eval: error: ") and message in err and "\n" not in err, err


def test_library_path_checks_too():
    ctx = TaskContext(model=None, tokenizer=None, options={"code": {"timeuot": 3}})
    with pytest.raises(ValueError, match="allowed for code: max_new_tokens, timeout, workers"):
        run_tasks(["code"], ctx)
    with pytest.raises(ValueError, match="--limit: must be a positive integer"):
        run_tasks(["code"], TaskContext(model=None, tokenizer=None), limit=-5)


def test_valid_options_pass_and_every_task_default_is_allowed():
    from nexus_optim.eval.tasks import arith, code, gsm, mc  # noqa: F401 - each run() reads OPTIONS' keys

    opts = {"code": {"timeout": "2.5", "workers": 1, "max_new_tokens": 64},
            "gsm": {"fewshot": 3, "language": "de"}, "arith": {"allow_negative": True, "ops": "+-"},
            "mc": {"sources": ["prose"], "n_choices": 2}}
    check_options(opts)
    assert opts["code"]["timeout"] == 2.5  # a YAML string read as a float
    import inspect

    def params(fn):
        return set(inspect.signature(fn).parameters)

    # every allowed key reaches the task: its run() defaults, or the builder it passes them to
    assert set(OPTIONS["code"]) | set(OPTIONS["gsm"]) <= {
        k for k in ("max_new_tokens", "timeout", "workers", "fewshot", "language")
        if f'"{k}"' in inspect.getsource(code.run) + inspect.getsource(gsm.run)}
    assert set(OPTIONS["arith"]) - {"max_new_tokens"} <= params(arith.build_items) | params(arith.arith_problems)
    assert set(OPTIONS["mc"]) <= params(mc.items_for_prepared)
