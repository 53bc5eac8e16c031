"""Hand-edited or corrupted run-folder files stop every command that reads them with one line
naming the file and the field (pluralign.runfolder.artifacts), and no JSON pluralign writes
holds a bare NaN token."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest


def _edit_json(path, change):
    obj = json.loads(path.read_text())
    path.write_text(change(obj) if callable(change) else change)


def _set(key, value):
    def change(obj):
        if value is KeyError:
            obj.pop(key)
        else:
            obj[key] = value
        return json.dumps(obj)
    return change


EM_JSON = {
    "n_types 3 for 2 policies": (_set("n_types", 3), "n_types"),
    "n_types 'two'": (_set("n_types", "two"), "n_types"),
    "n_types a list": (_set("n_types", [2]), "n_types"),
    "no backend": (_set("backend", KeyError), "backend"),
    "an unknown backend option": (lambda o: json.dumps(
        {**o, "backend_options": {**o["backend_options"], "bogus": 1}}), "backend_options"),
    "priors NaN": (lambda o: json.dumps({**o, "priors": [math.nan, 0.5]}), "priors"),
    "priors outside [0, 1]": (_set("priors", [-0.5, 1.5]), "priors"),
    "a list": ("[1, 2]", None),
    "invalid JSON": ('{"n_types": 2', None),
    "policies leading out": (_set("policies", "../elsewhere"), "policies"),
}
POSTERIORS = {
    "NaN": (lambda rows: [rows[0], [rows[1][0], "nan", "nan"], *rows[2:]], "type_0"),
    "negative": (lambda rows: [rows[0], [rows[1][0], "-0.5", "1.5"], *rows[2:]], "type_0"),
    "empty": (lambda rows: [], None),
    "ragged": (lambda rows: [rows[0], rows[1][:2], *rows[2:]], "cells"),
    "text": (lambda rows: [rows[0], [rows[1][0], "high", "low"], *rows[2:]], "type_0"),
    "an extra column": (lambda rows: [[*rows[0], "type_2"], *[[*r, "0"] for r in rows[1:]]],
                        "type_2"),
}
READ_EM = ("aggregate", "evaluate", "report", "assign", "suggest", "generate")
READ_POSTERIORS = ("aggregate", "evaluate", "assign", "suggest", "generate")


def _command(name, run, pop):
    return {"aggregate": ["aggregate", "--run", run, "--n-boot", "0"],
            "evaluate": ["evaluate", "--run", run, "--n-boot", "0"],
            "report": ["report", "--run", run],
            "assign": ["assign", "--run", run, "--data", pop],
            "suggest": ["suggest", "--run", run, "--annotator", "x", "--candidates", pop],
            "generate": ["generate", "--run", run, "--prompt", "hi", "--type", "0"]}[name]


def _stops(cli, args, file, field):
    rc, out, err = cli(*args)
    assert rc == 2, (args, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert file in lines[0] and (field is None or f"'{field}'" in lines[0] or field in lines[0]), \
        lines[0]


@pytest.mark.parametrize("case", EM_JSON)
def test_a_corrupted_em_json_stops_every_command_naming_the_field(made, tmp_path, cli, case):
    pop, clean = made
    run = tmp_path / "run"
    shutil.copytree(clean, run)
    change, field = EM_JSON[case]
    _edit_json(run / "em.json", change)
    for command in READ_EM:
        _stops(cli, _command(command, run, pop), "em.json", field)


@pytest.mark.parametrize("case", POSTERIORS)
def test_a_corrupted_posteriors_file_stops_every_command_naming_the_field(made, tmp_path, cli,
                                                                          case):
    import csv
    pop, clean = made
    run = tmp_path / "run"
    shutil.copytree(clean, run)
    with open(run / "posteriors.csv", newline="") as f:
        rows = list(csv.reader(f))
    change, field = POSTERIORS[case]
    with open(run / "posteriors.csv", "w", newline="") as f:
        csv.writer(f).writerows(change(rows))
    for command in READ_POSTERIORS:
        _stops(cli, _command(command, run, pop), "posteriors.csv", field)


def test_corrupted_aggregate_evaluation_and_manifests_stop_naming_the_file(made, tmp_path, cli):
    pop, clean = made
    run = tmp_path / "run"
    shutil.copytree(clean, run)
    (run / "aggregate.json").write_text("[1]")
    for command in ("evaluate", "report"):
        _stops(cli, _command(command, run, pop), "aggregate.json", None)
    _stops(cli, ["generate", "--run", run, "--prompt", "hi", "--policy", "mmra"],
           "aggregate.json", None)
    shutil.copy(clean / "aggregate.json", run / "aggregate.json")
    _edit_json(run / "aggregate.json", lambda o: json.dumps({**o, "weights": [0.5, math.inf]}))
    _stops(cli, _command("report", run, pop), "aggregate.json", "weights")
    shutil.copy(clean / "aggregate.json", run / "aggregate.json")
    (run / "evaluation.json").write_text('{"x": 1}')
    _stops(cli, _command("report", run, pop), "evaluation.json", "policies")

    data = tmp_path / "data"
    shutil.copytree(pop, data)
    for text in ("[]", "{not json"):
        (data / "manifest.json").write_text(text)
        _stops(cli, ["em", "--data", data, "--out", tmp_path / "new", "--types", "2"],
               "manifest.json", None)
        _stops(cli, ["aggregate", "--run", run, "--data", data, "--n-boot", "0"],
               "manifest.json", None)


def test_a_corrupted_stage_manifest_stops_the_pipeline(tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("run: {out: x}\nsimulate: {types: 2, annotators: 12, per_annotator: 4}\n"
                      "em: {n_types: 2, n_init: 1}\naggregate: {n_boot: 0}\n"
                      "evaluate: {n_boot: 0}\n")
    assert cli("run", recipe)[0] == 0
    for text in ("[]", "{broken"):
        (tmp_path / "x" / "manifests" / "em.json").write_text(text)
        _stops(cli, ["run", recipe], "manifests/em.json", None)


def test_json_written_is_strict_without_nan_tokens(tmp_path):
    from pluralign.core.io import write_json
    write_json(tmp_path / "x.json", {"a": math.nan, "b": [1.0, math.inf], "c": np.float64("nan"),
                                     "d": np.array([1.0, np.nan]), "e": -math.inf})
    text = (tmp_path / "x.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": None, "b": [1.0, None], "c": None, "d": [1.0, None],
                                "e": None}
