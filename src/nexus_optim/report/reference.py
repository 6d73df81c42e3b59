"""Count n-gram reference lines for a comparison ("where the models stand").

The compared runs share their data (``compare`` refuses different data), so one unigram and
one smoothed bigram (``eval/ngram.py``), fitted on the train splits of the first run's
recorded prepared data (``prepared.json`` -> ``train/artifacts.recorded_data``) and
evaluated on its val splits with the run's eval windows (``model.seq_len``,
``train.eval_tokens``), give the loss a model must beat to have learnt more than token
frequencies (unigram) or adjacent-token statistics (bigram). Nothing is built: when the
prepared data cannot be read (no ``prepared.json``, a moved or deleted cache) the lines are
skipped with a note.
"""

from __future__ import annotations

from nexus_optim.report.runs import Run, is_num
from nexus_optim.runtime import one_line

ORDERS = ("unigram", "bigram")


def _eval_settings(cfg: dict) -> tuple[int, int | None]:
    seq_len = (cfg.get("model") or {}).get("seq_len") or 128
    max_tokens = (cfg.get("train") or {}).get("eval_tokens", 16384)
    return int(seq_len), (int(max_tokens) if is_num(max_tokens) and max_tokens > 0 else None)


def ngram_lines(runs: list[Run], metric: str) -> dict:
    """``{"available": bool, "lines": {order: {"val/id", "val/ood", metric, "val/<source>"}},
    "seq_len", "max_tokens", "data_dir", "note"}`` (never raises for missing data)."""
    from nexus_optim.eval.ngram import ngram_reference
    from nexus_optim.train.artifacts import recorded_data

    run = runs[0]
    seq_len, max_tokens = _eval_settings(run.cfg)
    out: dict = {"available": False, "lines": {}, "seq_len": seq_len, "max_tokens": max_tokens}
    settings = {_eval_settings(r.cfg) for r in runs}
    if len(settings) > 1:
        out["settings_note"] = (f"the runs evaluate with different (seq_len, eval_tokens) {sorted(settings)}; "
                                f"the n-gram lines use those of {str(run.path)!r}")
    if not (run.path / "prepared.json").is_file():
        out["note"] = (f"n-gram reference lines skipped: {str(run.path)!r} records no prepared data "
                       f"(no prepared.json)")
        return out
    try:
        prepared = recorded_data(run.path)
        ref = ngram_reference(prepared, seq_len, max_tokens)
    except (ValueError, OSError, KeyError, TypeError) as e:
        msg = one_line(e)
        out["note"] = f"n-gram reference lines skipped: the run's prepared data cannot be read ({msg})"
        return out
    for order in ORDERS:
        prefix = f"ngram/{order}/val/"
        out["lines"][order] = {f"val/{k[len(prefix):]}": v for k, v in ref.items() if k.startswith(prefix)}
    out.update(available=True, data_dir=prepared.data_dir, discount=ref.get("ngram/discount"))
    return out


def standing(report: dict) -> dict[str, dict]:
    """label -> each group's mean at the matched point and at equal tokens minus the
    bigram line, for the in-distribution metric and val/ood (negative: below the bigram)."""
    ng = report.get("ngram") or {}
    bigram = (ng.get("lines") or {}).get("bigram") or {}
    out: dict[str, dict] = {}
    for section in ("matched", "equal_tokens"):
        summ = report[section]["summary"]
        for key in dict.fromkeys((report["metric"], "val/ood")):
            if key not in bigram:
                continue
            for label, s in (summ.get(key) or {}).items():
                if s.get("mean") is not None:
                    out.setdefault(label, {})[f"{section} {key}"] = s["mean"] - bigram[key]
    return out
