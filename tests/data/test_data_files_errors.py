"""`kind: files` sources: bad input is one line naming the file (and line) (issue 13, item 15)."""

from __future__ import annotations

import json
import os

import pytest

from nexus_optim.data import DataConfig, prepare_data
from nexus_optim.data.sources import BuildContext
from nexus_optim.data.sources.files import files


def _docs(paths, **options):
    return files(BuildContext(data_dir="unused", seed=0, paths=[str(p) for p in paths]), options, None)


def _one_line(excinfo, *parts):
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for p in parts:
        assert p in msg, msg


def test_bad_jsonl_line_names_file_and_line(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text(json.dumps({"text": "fine"}) + "\n" + '{"text": "cut\n')
    with pytest.raises(ValueError) as e:
        _docs([f])
    _one_line(e, f"{f}:2:", "invalid JSON")


def test_jsonl_row_without_the_field_names_file_and_line(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text(json.dumps({"text": "fine"}) + "\n\n" + json.dumps({"body": "x"}) + "\n")
    with pytest.raises(ValueError) as e:
        _docs([f])
    _one_line(e, f"{f}:3:", "string field 'text'")


def test_invalid_utf8_in_jsonl_names_file_and_line(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(ValueError) as e:
        _docs([f])
    _one_line(e, f"{f}:2:", "invalid UTF-8")


def test_wrong_parquet_column_names_file_and_columns(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    f = tmp_path / "x.parquet"
    pq.write_table(pa.table({"body": ["a", "b"], "n": [1, 2]}), f)
    with pytest.raises(ValueError) as e:
        _docs([f])
    _one_line(e, str(f), "no column 'text'", "columns: body, n")
    with pytest.raises(ValueError) as e:
        _docs([f], field="n")
    _one_line(e, str(f), "column 'n' has type int64, expected strings")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 not really")
    with pytest.raises(ValueError) as e:
        _docs([bad])
    _one_line(e, str(bad), "not a readable Parquet file")


def test_binary_file_is_refused(tmp_path):
    f = tmp_path / "blob.txt"
    f.write_bytes(os.urandom(4096) + b"\0")
    with pytest.raises(ValueError) as e:
        _docs([f])
    _one_line(e, str(f), "binary file")
    latin = tmp_path / "latin.txt"  # no NUL, but mostly not UTF-8
    latin.write_bytes(bytes(range(0x80, 0x100)) * 4)
    with pytest.raises(ValueError) as e:
        _docs([latin])
    _one_line(e, str(latin), "not UTF-8 text")


def test_invalid_utf8_in_text_warns_with_the_count(tmp_path):
    f = tmp_path / "t.txt"
    f.write_bytes(("hello world " * 50).encode() + b"\xff\xfe caf\xe9 " + ("more text " * 20).encode())
    with pytest.warns(UserWarning, match=rf"{f}: 3 invalid UTF-8 byte\(s\) replaced by U\+FFFD"):
        docs = _docs([f])
    assert "\ufffd" in "".join(docs)


def test_bad_file_is_named_through_prepare_data(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text("not json\n")
    cfg = DataConfig(data_dir=str(tmp_path / "c"), vocab_size=280,
                     sources=[{"name": "a", "kind": "files", "paths": [str(f)]}])
    with pytest.raises(ValueError) as e:
        prepare_data(cfg, progress=False, workers=1)
    _one_line(e, f"{f}:1:", "invalid JSON")


@pytest.mark.parametrize("options, message", [
    ({"chunk_chars": "big"}, "data.sources[0].options.chunk_chars: 'big' must be a positive integer"),
    ({"field": 3}, "data.sources[0].options.field: 3 must be"),
    ({"doc_per_file": "yes"}, "data.sources[0].options.doc_per_file: 'yes' must be true or false"),
])
def test_files_options_are_checked_at_config_time(tmp_path, options, message):
    f = tmp_path / "a.txt"
    f.write_text("text")
    with pytest.raises(ValueError) as e:
        DataConfig(data_dir=str(tmp_path), sources=[{"name": "a", "kind": "files", "paths": [str(f)],
                                                     "options": options}])
    _one_line(e, message)
