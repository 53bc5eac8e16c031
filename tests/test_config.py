"""The YAML loader: duplicate keys, aliases, element types and numbers as a user writes them."""

from __future__ import annotations

import pytest

from pluralign.settings.config import ConfigError, load_yaml
from pluralign.stages.pipeline import PipelineConfig

BASE = "run: {out: runs/x}\ningest: {inputs: [data/demo]}\n"


def _write(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_duplicate_keys_are_refused_with_file_line_and_key(tmp_path):
    path = _write(tmp_path, BASE + "run: {seed: 3}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml, line 3: duplicate key 'run'"):
        load_yaml(path)
    path = _write(tmp_path, "em:\n  n_types: 2\n  n_types: 3\n")
    with pytest.raises(ConfigError, match="line 3: duplicate key 'n_types'"):
        load_yaml(path)


def test_aliases_are_refused_before_they_expand(tmp_path):
    bomb = ("a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
            "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
            "aggregate: {type_weights: [*c, *c, *c, *c, *c, *c, *c, *c, *c]}\n")
    with pytest.raises(ConfigError, match=r"line 2: YAML aliases \(\*a\)"):
        load_yaml(_write(tmp_path, bomb))


def test_numbers_as_a_user_writes_them(tmp_path):
    data = load_yaml(_write(tmp_path, "linear: {l2: 1e-3, beta: 2E+1, tol: -5e-2}\n"))
    assert data["linear"] == {"l2": 0.001, "beta": 20.0, "tol": -0.05}


@pytest.mark.parametrize("weights, shown", [('["a", "b"]', "'a'"), ("[.nan, 1]", "nan"),
                                            ("[1, .inf]", "inf")])
def test_list_elements_are_checked_before_any_work(tmp_path, weights, shown):
    path = _write(tmp_path, BASE + f"aggregate: {{type_weights: {weights}}}\n")
    with pytest.raises(ConfigError, match="aggregate.type_weights' has the wrong type") as e:
        PipelineConfig.load(path)
    assert str(path) in str(e.value) and shown in str(e.value)
    ok = _write(tmp_path, BASE + "aggregate: {type_weights: [1, 2.5]}\n")
    assert PipelineConfig.load(ok).aggregate.type_weights == [1, 2.5]


def test_a_callable_parameter_takes_no_yaml_value(tmp_path):
    """em.backend is a name or (in Python) a callable: a YAML list is a type error naming the
    key and the YAML type, not a crash (found by tests/test_fuzz.py)."""
    path = _write(tmp_path, BASE + "em: {backend: []}\n")
    with pytest.raises(ConfigError, match=r"'em.backend' has the wrong type: expected str, got "
                                          r"list \[\]") as e:
        PipelineConfig.load(path)
    assert str(path) in str(e.value)
