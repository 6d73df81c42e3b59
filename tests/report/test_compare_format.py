"""How numbers look in report.md (report/format.py), pinned on a small comparison whose
values are worked out by hand, and the mechanism table (geom/grad_sim over training)."""

from __future__ import annotations

import math

from nexus_optim.report import compare_runs
from nexus_optim.report.format import decimals, fmt_column, fmt_count, fmt_number, fmt_p, p_is
from nexus_optim.report.runs import load_run
from nexus_optim.report.groups import group_runs
from nexus_optim.report.tables import curve_table

from test_compare import make_run  # tests/report is on sys.path (prepend mode)

NEXUS = "nexus(global,trajectory,gamma=0.05)"
TOKENS = (115_000, 230_000, 345_000, 460_000)


def test_a_column_shares_its_decimals_at_four_significant_digits():
    assert fmt_column([2.489, 1.0247, 3.0]) == ["2.489", "1.025", "3.000"]
    assert fmt_column([0.0056, -0.0095, 0.0208], signed=True) == ["+0.00560", "-0.00950", "+0.02080"]
    assert fmt_column([12.5, 3.25]) == ["12.50", "3.25"]  # the decimals of the largest
    assert fmt_column([1234.6, 2.0]) == ["1235", "2"]
    assert fmt_column([0.09999999, 0.05]) == ["0.1000", "0.0500"]  # the scale after rounding
    assert fmt_column([9.99996]) == ["10.00"]
    assert fmt_column([3.14159e-5, 1e-6]) == ["3.142e-05", "1.000e-06"]
    assert fmt_column([2.5e7, 1.0]) == ["2.500e+07", "1.000e+00"]
    assert fmt_column([None, math.nan, 1.0]) == ["n/a", "n/a", "1.000"]
    assert fmt_column([0.0, -0.0]) == ["0.000", "-0.000"]
    assert decimals([]) == 3 and decimals([0.5]) == 4 and decimals([5e-4]) is None
    assert fmt_number(2.5) == "2.500" and fmt_number(459_912.4, "tokens") == "459,912"


def test_counts_are_integers_with_thousands_and_p_values_have_two_digits():
    assert fmt_column([459_912.4, 44_670.6239], "tokens") == ["459,912", "44,671"]
    assert fmt_column([-12_690.1172], "tokens", signed=True) == ["-12,690"]
    assert fmt_count(7, signed=True) == "+7" and fmt_count(None) == "n/a"
    assert [fmt_p(p) for p in (0.5, 1.0, 0.04499, 0.0999, 0.0012, 0.00099, math.nan)] == \
        ["0.50", "1.0", "0.045", "0.10", "0.0012", "< 0.001", "n/a"]
    assert p_is(0.2048) == "p = 0.20" and p_is(4e-5, "Holm-adjusted p") == "Holm-adjusted p < 0.001"


def _runs(tmp_path):
    """AdamW ends at val/id 2.5 (the target) on both seeds; Nexus crosses it halfway between
    the last two evals on seed 0 (402,500 tokens, OOD 5.05) and at the third eval on seed 1
    (345,000 tokens, OOD 5.1)."""
    return [make_run(tmp_path, "a0", "adamw", 0, tokens=TOKENS, grad_sim=(0.1, 0.2, 0.3, 0.4)),
            make_run(tmp_path, "a1", "adamw", 1, tokens=TOKENS, grad_sim=(0.1, 0.2, 0.3, 0.4)),
            make_run(tmp_path, "n0", "nexus", 0, ids=(5, 4, 3, 2), oods=(6, 5.5, 5.2, 4.9), tokens=TOKENS,
                     grad_sim=(0.1, 0.3, 0.5, 0.6)),
            make_run(tmp_path, "n1", "nexus", 1, ids=(5, 4, 2.5, 2), oods=(6, 5.5, 5.1, 4.9), tokens=TOKENS,
                     grad_sim=(0.1, 0.3, 0.5, 0.8))]


def test_the_report_tables_pin_their_format(tmp_path):
    compare_runs(_runs(tmp_path), tmp_path / "rep", plots=False)
    md = (tmp_path / "rep" / "report.md").read_text()
    lines = md.splitlines()
    # summary: tokens at matched loss, mean 373,750, sd |402,500 - 345,000| / sqrt(2) = 40,659;
    # the OOD row at the scale of 5.075 (3 decimals) for every cell of the row
    assert "| tokens | 460,000 ± 0 (n=2) | 373,750 ± 40,659 (n=2) |" in lines
    assert "| val/ood | 5.000 ± 0.000 (n=2) | 5.075 ± 0.035 (n=2) |" in lines
    # paired differences: tokens -57,500 and -115,000 -> -86,250, t = -3 with 1 df (p = 0.2048),
    # CI -86,250 -+ t(0.975, 1) * 28,750; OOD +0.05 and +0.1 -> +0.075 [0.075 -+ 12.706 * 0.025]
    assert ("| tokens (lower is better) | -86,250 | [-451,553, +279,053] | -3.00 | 0.20 | – | 2 pairs "
            "| exploratory | not significant |") in lines
    assert ("| val/ood (lower is better) | +0.0750 | [-0.2427, +0.3927] | 3.00 | 0.20 | 0.20 | 2 pairs "
            "| primary | not significant |") in lines
    # the primary table: one set of decimals for difference, CI, sd, MDE and the paper's effect
    assert any(l.startswith(f"| {NEXUS} | paired | +0.0750 | [-0.2427, +0.3927] | 0.20 | 0.20 | 2 | 0.0354 | ")
               and l.endswith(" | 0.0120 |") for l in lines)
    assert f"| {NEXUS} | 1 | `{tmp_path / 'n1'}` | 460,000 | 2.000 | 345,000 |" in lines
    assert "All metrics at 460,000 tokens" in md and "target 2.500 (" in md
    # the findings' sentences use the same rules
    assert (f"- tokens to reach the matched loss: {NEXUS} − adamw = -86,250 (mean of 2 per-seed differences), "
            "95% CI [-451,553, +279,053], paired t = -3.00, p = 0.20 (exploratory, unadjusted)") in md
    assert "e+0" not in md and ".0000 ±" not in md.split("## At matched")[1].split("\n| val/ood")[0]


def test_the_mechanism_table_is_the_group_mean_over_seeds_at_each_eval(tmp_path):
    compare_runs(_runs(tmp_path), tmp_path / "rep", plots=False)
    md = (tmp_path / "rep" / "report.md").read_text()
    table = md.split("## Mechanism: gradient cosine between the train sources")[1].split("\n## ")[0]
    rows = [l for l in table.splitlines() if l.startswith("| ")]
    assert rows == [f"| step | tokens | adamw | {NEXUS} |",
                    "| 10 | 115,000 | 0.1000 | 0.1000 |", "| 20 | 230,000 | 0.2000 | 0.3000 |",
                    "| 30 | 345,000 | 0.3000 | 0.5000 |", "| 40 | 460,000 | 0.4000 | 0.7000 |",
                    # per run mean over its evals, then over seeds: (0.375 + 0.425) / 2
                    "| mean over training | | 0.2500 | 0.4000 |"]


def test_the_mechanism_section_says_when_nothing_was_logged(tmp_path):
    dirs = [make_run(tmp_path, f"{o}{s}", o, s) for o in ("adamw", "nexus") for s in (0, 1)]
    rep = compare_runs(dirs, tmp_path / "rep", plots=False)
    assert rep["grad_sim"] is None
    assert "Not logged (`train.grad_sim_batches` = 0)" in (tmp_path / "rep" / "report.md").read_text()


def test_curve_table_keeps_at_most_max_rows_evenly_spaced_with_both_ends(tmp_path):
    n = 11
    run = make_run(tmp_path, "a0", "adamw", 0, ids=tuple(5 - 0.1 * i for i in range(n)),
                   oods=(6.0,) * n, tokens=tuple(100 * (i + 1) for i in range(n)),
                   grad_sim=tuple(0.01 * i for i in range(n)))
    table = curve_table(group_runs([load_run(run)]), "geom/grad_sim", max_rows=4)
    assert [r["step"] for r in table["rows"]] == [10, 40, 80, 110]  # evals 0, 3.33 -> 3, 6.67 -> 7, 10
    assert table["rows"][-1]["groups"]["adamw"] == 0.1
    assert abs(table["over_training"]["adamw"] - 0.05) < 1e-12
    assert curve_table(group_runs([load_run(run)]), "geom/none") is None
