"""DataConfig validation: one-line ValueErrors that name the field."""

import pytest

from nexus_optim.data import DEFAULT_SOURCES, DataConfig, SourceConfig
from nexus_optim.data.sources import KINDS


def _one_line_error(match, fn, *a, **kw):
    with pytest.raises(ValueError, match=match) as e:
        fn(*a, **kw)
    assert "\n" not in str(e.value)
    return str(e.value)


def _cfg(tmp_path, **src):
    f = tmp_path / "a.txt"
    f.write_text("hello world\n\nsecond paragraph\n")
    base = {"name": "a", "kind": "files", "paths": [str(f)]}
    return dict(data_dir=str(tmp_path / "d"), sources=[base, {**base, "name": "b", **src}])


def test_default_mixture_is_valid():
    cfg = DataConfig()
    roles = [s.role for s in cfg.sources]
    assert roles.count("ood") >= 2 and {"prose", "math", "code"} <= {s.kind for s in cfg.sources}
    assert cfg.sources is not DEFAULT_SOURCES and cfg.sources[0] is not DEFAULT_SOURCES[0]


def test_bad_role_names_field_and_allowed_values(tmp_path):
    msg = _one_line_error("role", DataConfig, **_cfg(tmp_path, role="oo"))
    assert msg == "data.sources[1].role: 'oo' is not one of 'train', 'ood'"


def test_unknown_kind_lists_known_kinds(tmp_path):
    msg = _one_line_error(r"data\.sources\[1\]\.kind", DataConfig, **_cfg(tmp_path, kind="prosee"))
    for k in ("prose", "math", "code", "files"):
        assert repr(k) in msg
    assert set(KINDS) >= {"prose", "math", "code", "files", "metamath", "golang", "gsm_multilingual"}


def test_missing_file_is_named(tmp_path):
    missing = str(tmp_path / "nope" / "*.txt")
    msg = _one_line_error(r"data\.sources\[1\]\.paths\[0\]", DataConfig, **_cfg(tmp_path, paths=[missing]))
    assert missing in msg


@pytest.mark.parametrize("field,value,match", [
    ("weight", -1.0, r"data\.sources\[1\]\.weight"),
    ("max_chars", 0, r"data\.sources\[1\]\.max_chars"),
    ("name", "a", r"data\.sources\[1\]\.name: duplicate"),
    ("name", "has space", r"data\.sources\[1\]\.name"),
    ("options", {"bogus": 1}, r"data\.sources\[1\]\.options: unknown option 'bogus'"),
])
def test_source_field_errors(tmp_path, field, value, match):
    _one_line_error(match, DataConfig, **_cfg(tmp_path, **{field: value}))


@pytest.mark.parametrize("field,value", [("val_fraction", 0.0), ("val_fraction", 1.5), ("vocab_size", 10),
                                         ("seed", "x")])
def test_top_level_field_errors(tmp_path, field, value):
    kw = _cfg(tmp_path)
    kw[field] = value
    _one_line_error(rf"data\.{field}", DataConfig, **kw)


def test_composite_parts_are_checked():
    _one_line_error(r"data\.sources\[0\]\.options\.parts: 'nope' is not one of 'mathematics_dataset'",
                    DataConfig.from_dict, {"sources": [{"name": "m", "kind": "math", "options": {"parts": ["nope"]}}]})
    cfg = DataConfig.from_dict({"sources": [{"name": "m", "kind": "math", "options": {"gsm": {"per_template": 2}}}]})
    assert cfg.sources[0].options == {"gsm": {"per_template": 2}}


def test_from_dict_and_unknown_keys(tmp_path):
    d = _cfg(tmp_path)
    cfg = DataConfig.from_dict(d)
    assert isinstance(cfg.sources[0], SourceConfig) and cfg.sources[1].name == "b"
    _one_line_error(r"data: unknown key 'vocab'", DataConfig.from_dict, {**d, "vocab": 3})
    d["sources"][1]["wieght"] = 2
    _one_line_error(r"data\.sources\[1\]: unknown key 'wieght'", DataConfig.from_dict, d)


def test_validate_catches_later_mutation(tmp_path):
    cfg = DataConfig(**_cfg(tmp_path))
    cfg.sources[0].role = "test"
    _one_line_error(r"data\.sources\[0\]\.role", cfg.validate)


def test_needs_a_weighted_train_source(tmp_path):
    _one_line_error(r"data\.sources: at least one", DataConfig,
                    **{**_cfg(tmp_path, role="ood"), "sources": _cfg(tmp_path, role="ood")["sources"][1:]})
