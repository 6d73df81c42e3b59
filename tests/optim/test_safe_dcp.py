"""SafeFileSystemReader: a DCP checkpoint folder loads without running code from it (issue 21:
the README's DCP recipe read a crafted .metadata with plain pickle)."""

from __future__ import annotations

import os
import pickle
import warnings

import pytest
import torch

dcp = pytest.importorskip("torch.distributed.checkpoint")
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict  # noqa: E402

from torch.distributed.checkpoint.api import CheckpointException  # noqa: E402

from nexus_optim import Nexus  # noqa: E402
from nexus_optim.optim.safe_dcp import DCPMetadataError, SafeFileSystemReader, load_metadata  # noqa: E402


@pytest.fixture(autouse=True)
def _single_process_warning():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _setup(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU(), torch.nn.Linear(8, 4))
    opt = Nexus(model.parameters(), lr=1e-2, inner_lr=0.05, inner_steps=3, weight_decay=0.1)
    return model, opt


def _train(model, opt, n, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        model(torch.randn(5, 8, generator=g)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_round_trip_equals_uninterrupted_training(tmp_path):
    ref_model, ref_opt = _setup()
    _train(ref_model, ref_opt, 5, seed=1)  # mid-window: 1 outer step + 2 inner steps
    msd, osd = get_state_dict(ref_model, ref_opt)
    dcp.save({"model": msd, "optim": osd, "extra": {"note": "x", "n": 3}}, checkpoint_id=str(tmp_path / "ck"))

    model, opt = _setup(seed=7)  # different weights: everything must come from the checkpoint
    msd, osd = get_state_dict(model, opt)
    state = {"model": msd, "optim": osd, "extra": {"note": "", "n": 0}}
    dcp.load(state, storage_reader=SafeFileSystemReader(str(tmp_path / "ck")))
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    assert state["extra"] == {"note": "x", "n": 3}  # non-tensor (BYTE_IO) entries load too
    assert opt.inner_step == ref_opt.inner_step and opt.outer_steps == ref_opt.outer_steps
    _train(ref_model, ref_opt, 4, seed=2)
    _train(model, opt, 4, seed=2)
    for a, b in zip(ref_model.parameters(), model.parameters()):
        assert torch.equal(a, b)
    assert load_metadata(tmp_path / "ck").state_dict_metadata.keys() == \
        load_metadata(tmp_path / "ck" / ".metadata").state_dict_metadata.keys()


def test_crafted_metadata_is_refused_and_runs_nothing(tmp_path):
    model, opt = _setup()
    msd, _ = get_state_dict(model, opt)
    ck = tmp_path / "ck"
    dcp.save({"model": msd}, checkpoint_id=str(ck))
    marker = tmp_path / "MARKER"
    (ck / ".metadata").write_bytes(pickle.dumps(_RunsCode(marker)))
    state = {"model": get_state_dict(model, opt)[0]}
    with pytest.raises(CheckpointException) as e:  # DCP gathers the ranks' errors into one
        dcp.load(state, storage_reader=SafeFileSystemReader(str(ck)))
    assert f"{ck / '.metadata'}: refusing to load: the pickle references posix.system" in str(e.value)
    assert not marker.exists()
    with pytest.raises(DCPMetadataError) as e:
        load_metadata(ck)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{ck / '.metadata'}: refusing to load: the pickle "
                                                "references posix.system"), msg
    assert not marker.exists()
    # what the plain reader does with the same folder (why the safe one exists)
    with pytest.raises(BaseException):
        dcp.load(state, checkpoint_id=str(ck))
    assert marker.exists()


def test_crafted_non_tensor_entry_is_refused_and_runs_nothing(tmp_path):
    ck, marker = tmp_path / "ck", tmp_path / "MARKER"
    dcp.save({"w": torch.ones(3), "note": _RunsCode(marker)}, checkpoint_id=str(ck))
    assert not marker.exists()
    state = {"w": torch.zeros(3), "note": None}
    with pytest.raises(CheckpointException) as e:
        dcp.load(state, storage_reader=SafeFileSystemReader(str(ck)))
    assert f"{ck}: refusing to load entry 'note': it holds objects other than tensors" in str(e.value)
    assert not marker.exists()


def test_damaged_metadata_is_one_line(tmp_path):
    ck = tmp_path / "ck"
    dcp.save({"w": torch.ones(3)}, checkpoint_id=str(ck))
    data = (ck / ".metadata").read_bytes()
    (ck / ".metadata").write_bytes(data[: len(data) // 2])
    with pytest.raises(DCPMetadataError, match="not a readable DCP .metadata"):
        load_metadata(ck)
    (ck / ".metadata").write_bytes(pickle.dumps({"not": "metadata"}))
    with pytest.raises(DCPMetadataError, match="holds a dict, not DCP Metadata"):
        load_metadata(ck)
