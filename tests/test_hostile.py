"""Issue 24's hostile and careless uses, one test per class (the class number in the name):
pluralign never deletes or overwrites what it did not make, never writes outside a run folder,
and meets bad input with one line naming the file, line and field."""

from __future__ import annotations

import csv
import gzip
import io
import json
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from conftest import ranked_row, write_jsonl

from pluralign.cli import main
from pluralign.core.data import load, save
from pluralign.ingest import ingest
from pluralign.ingest.errors import IngestError


def copy_run(made, where: Path) -> Path:
    shutil.copytree(made[1], where / "run")
    return where / "run"


def refused(cli, *args, words=()) -> str:
    rc, out, err = cli(*args)
    assert rc == 2, (out, err)
    assert "Traceback" not in err and all(w in err for w in words), err
    return err


def argparse_refuses(capsys, *args) -> str:
    """A flag refused by the parser itself: exit 2 before anything runs."""
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    assert e.value.code == 2
    return capsys.readouterr().err


# -- 1: it deletes files it never made ----------------------------------------------------------
def test_1_a_new_fit_removes_only_unchanged_files_pluralign_recorded(made, tmp_path, cli):
    pop, _ = made
    mine = tmp_path / "mine"
    (mine / "merged").mkdir(parents=True)
    (mine / "report_files").mkdir()
    user = {"report.md": b"my notes\n", "merged/mine.bin": b"\x00\x01",
            "report_files/a.png": b"PNG?", "evaluation.json": b"{}\n"}
    for rel, content in user.items():
        (mine / rel).write_bytes(content)
    refused(cli, "em", "--data", pop, "--out", mine, "--types", "2", words=["--overwrite"])
    rc, _, err = cli("em", "--data", pop, "--out", mine, "--types", "2", "--overwrite")
    assert rc == 0, err
    assert all((mine / rel).read_bytes() == c for rel, c in user.items())
    assert "kept" in err and "report.md" in err
    from pluralign.runfolder.folder import MARKER, recorded
    assert (mine / MARKER).is_file() and "em.json" in recorded(mine)

    run = copy_run(made, tmp_path)  # pluralign's own run: its unchanged files go
    (run / "report.md").write_text("edited by hand\n")
    rc, _, err = cli("em", "--data", pop, "--out", run, "--types", "2")
    assert rc == 0, err
    assert (run / "report.md").read_text() == "edited by hand\n"
    assert not (run / "report.html").exists() and not (run / "report_files").exists()
    assert not (run / "aggregate.json").exists() and "removed" in err


# -- 2: any folder accepted as a run folder -----------------------------------------------------
def test_2_the_root_home_working_folder_and_a_checkout_are_never_run_folders(
        made, tmp_path, cli, monkeypatch):
    pop, _ = made
    before = sorted(p.name for p in Path("/").iterdir())
    refused(cli, "em", "--data", pop, "--out", "/", "--types", "2", words=["filesystem root"])
    assert sorted(p.name for p in Path("/").iterdir()) == before

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    refused(cli, "em", "--data", pop, "--out", "~", "--types", "2", "--overwrite",
            words=["home folder"])

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "thesis.tex").write_text("mine\n")
    monkeypatch.chdir(cwd)
    refused(cli, "em", "--data", pop, "--out", ".", "--types", "2", "--overwrite",
            words=["working directory"])
    recipe = cwd / "r.yaml"
    recipe.write_text("run: {out: ''}\nsimulate: {types: 2}\n")
    refused(cli, "run", recipe, words=["empty"])
    assert sorted(p.name for p in cwd.iterdir()) == ["r.yaml", "thesis.tex"]

    checkout = tmp_path / "checkout"
    (checkout / ".git").mkdir(parents=True)
    (checkout / "data").mkdir()
    refused(cli, "em", "--data", pop, "--out", checkout, "--types", "2", "--overwrite",
            words=["project checkout"])
    refused(cli, "simulate", "--out", checkout, "--overwrite", words=["project checkout"])
    assert sorted(p.name for p in checkout.iterdir()) == [".git", "data"]


# -- 3: symlinks lead writes outside ------------------------------------------------------------
def test_3_no_write_follows_a_link_out_of_a_run_folder(made, tmp_path, cli):
    run = copy_run(made, tmp_path)
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"precious\n")
    (run / ".pluralign.lock").unlink(missing_ok=True)
    (run / ".pluralign.lock").symlink_to(outside)
    refused(cli, "report", "--run", run, words=[".pluralign.lock", "symbolic link"])
    assert outside.read_bytes() == b"precious\n"
    (run / ".pluralign.lock").unlink()

    pictures = tmp_path / "pictures"
    pictures.mkdir()
    (pictures / "regrets.png").write_bytes(b"mine")
    shutil.rmtree(run / "report_files")
    (run / "report_files").symlink_to(pictures)
    refused(cli, "report", "--run", run, words=["report_files", "symbolic link"])
    assert [p.name for p in pictures.iterdir()] == ["regrets.png"]
    assert (pictures / "regrets.png").read_bytes() == b"mine"
    (run / "report_files").unlink()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.rmtree(run / "fair")
    (run / "fair").symlink_to(elsewhere)
    refused(cli, "aggregate", "--run", run, "--n-boot", "0", words=["fair"])
    assert not any(elsewhere.iterdir())


def test_3_the_lock_and_dataset_files_replace_links_instead_of_following_them(made, tmp_path,
                                                                              cli):
    from pluralign.core.io import folder_lock
    inside = tmp_path / "f"
    inside.mkdir()
    target = tmp_path / "target.txt"
    target.write_text("keep\n")
    (inside / ".pluralign.lock").symlink_to(target)
    with folder_lock(inside, "test"):
        assert not (inside / ".pluralign.lock").is_symlink()
    assert target.read_text() == "keep\n"

    ds = tmp_path / "ds"
    shutil.copytree(made[0], ds)
    outside = tmp_path / "outside.parquet"
    outside.write_bytes(b"mine")
    (ds / "annotations.parquet").unlink()
    (ds / "annotations.parquet").symlink_to(outside)
    rc, _, err = cli("simulate", "--out", ds, "--types", "2", "--annotators", "6",
                     "--overwrite")
    assert rc == 0, err
    assert outside.read_bytes() == b"mine" and not (ds / "annotations.parquet").is_symlink()


# -- 4: overwrite without asking ----------------------------------------------------------------
def test_4_export_and_assign_never_overwrite_without_asking_nor_their_inputs(made, tmp_path,
                                                                            cli):
    pop = tmp_path / "pop"
    shutil.copytree(made[0], pop)
    source = (pop / "annotations.parquet").read_bytes()
    refused(cli, "export", pop, "--out", pop / "annotations.parquet", "--overwrite",
            words=["input"])
    refused(cli, "export", pop, "--out", pop / "new.jsonl", words=["input"])
    refused(cli, "ingest", pop, "--out", pop, "--overwrite", words=["input"])
    refused(cli, "ingest", pop / "annotations.parquet", "--out", tmp_path, "--overwrite",
            words=["holds this command's input"])
    refused(cli, "em", "--data", pop, "--out", pop, "--overwrite", words=["input"])
    assert (pop / "annotations.parquet").read_bytes() == source
    afile = tmp_path / "afile.txt"
    afile.write_text("mine\n")
    refused(cli, "export", pop, "--out", afile, words=["--overwrite"])
    assert afile.read_text() == "mine\n"
    rc, _, err = cli("export", pop, "--out", afile, "--overwrite")
    assert rc == 0 and len(afile.read_text().splitlines()) == len(load(pop))

    run = copy_run(made, tmp_path)
    keep = tmp_path / "keep.csv"
    keep.write_text("mine\n")
    refused(cli, "assign", "--run", run, "--data", pop, "--out", keep, words=["--overwrite"])
    assert keep.read_text() == "mine\n"
    posteriors = (run / "posteriors.csv").read_bytes()
    refused(cli, "assign", "--run", run, "--data", pop, "--out", run / "posteriors.csv",
            "--overwrite", words=["input"])
    assert (run / "posteriors.csv").read_bytes() == posteriors


# -- 5: injection in printed tables -------------------------------------------------------------
NASTY = ['=HYPERLINK("http://x","y")', "+cmd|' /C calc'!A0", "two\nlines", 'a,"b', "@SUM(1)",
         "-1", "'quoted"]


def test_5_assign_prints_csv_quoted_and_guarded(made, tmp_path, cli):
    pop, run = made
    data = load(pop)
    ids = sorted({a.annotator_id for a in data})
    rename = dict(zip(ids, NASTY, strict=False))
    for a in data.records:
        a.annotator_id = rename.get(a.annotator_id, a.annotator_id)
    save(data.records, tmp_path / "nasty")
    rc, out, err = cli("assign", "--run", run, "--data", tmp_path / "nasty")
    assert rc == 0, err
    rows = list(csv.reader(io.StringIO(out)))
    assert len(rows) == len(ids) + 1 and {len(r) for r in rows} == {len(rows[0])}
    assert not [r[0] for r in rows[1:] if r[0][:1] in "=+-@"]
    from pluralign.core.io import unguard_cell
    assert {unguard_cell(r[0]) for r in rows[1:]} >= set(NASTY)  # guarded, not altered


def test_5_report_md_escapes_link_and_image_syntax(made, tmp_path, cli):
    pop, _ = made
    data = load(pop)
    for a in data.records:
        if a.true_type == "type_1":
            a.true_type = "![img](http://evil.example/x.png)"
    save(data.records, tmp_path / "labelled")
    run = tmp_path / "run"
    for args in (["em", "--data", tmp_path / "labelled", "--out", run, "--types", "2"],
                 ["aggregate", "--run", run, "--n-boot", "0"],
                 ["evaluate", "--run", run, "--n-boot", "0"], ["report", "--run", run]):
        rc, _, err = cli(*args)
        assert rc == 0, err
    md = (run / "report.md").read_text()
    assert "evil.example" in md and "![img](" not in md and "](http" not in md


# -- 6: crashes on input ------------------------------------------------------------------------
def test_6_deep_json_and_long_csv_cells_are_handled(tmp_path, cli):
    deep = '{"annotator_id": "a", "prompt": ' + "[" * 100_000 + "]" * 100_000 + "}"
    good = json.dumps(ranked_row("w1"))
    (tmp_path / "deep.jsonl").write_text(good + "\n" + deep + "\n")
    refused(cli, "ingest", tmp_path / "deep.jsonl", "--out", tmp_path / "o1",
            words=["deep.jsonl, line 2", "nested too deeply"])
    rc, out, err = cli("ingest", tmp_path / "deep.jsonl", "--out", tmp_path / "o2",
                       "--on-error", "skip")
    assert rc == 0, err
    (reject,) = [json.loads(line) for line in (tmp_path / "o2" / "rejects.jsonl").open()]
    assert reject["reason"] == "too_deep" and reject["line"] == 2
    (tmp_path / "deep.json").write_text("[" + good + ", " + deep + "]")
    refused(cli, "ingest", tmp_path / "deep.json", "--out", tmp_path / "o3",
            words=["deep.json", "nested too deeply"])

    with open(tmp_path / "long.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["annotator_id", "prompt", "chosen", "rejected"])
        w.writerow(["a", "p" * 300_000, "x", "y"])
    rc, _, err = cli("ingest", tmp_path / "long.csv", "--out", tmp_path / "o4")
    assert rc == 0, err
    assert len(load(tmp_path / "o4")[0].prompt) == 300_000


def test_6_a_bad_parquet_row_exits_2_every_time(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    rows = [ranked_row(f"w{i}", prompt=f"p{i}") for i in range(20)]
    rows[7]["ranking"] = [0, 0, 1]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "bad.parquet")
    # The cause: pyarrow's pool threads still alive at exit. Reading starts none now.
    probe = ("import os, pyarrow.parquet\nfrom pluralign.ingest import ingest\n"
             "n = len(os.listdir('/proc/self/task'))\n"
             f"try:\n    ingest([{str(tmp_path / 'bad.parquet')!r}])\nexcept Exception:\n"
             "    pass\nprint(len(os.listdir('/proc/self/task')) - n)\n")
    if Path("/proc/self/task").is_dir():
        r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                           timeout=120)
        assert r.stdout.strip() == "0", (r.stdout, r.stderr)
    for i in range(PARQUET_RUNS):  # the abort came at exit, in 5 of 70 runs
        r = subprocess.run([sys.executable, "-m", "pluralign.cli", "ingest",
                            str(tmp_path / "bad.parquet"), "--out", str(tmp_path / f"o{i}")],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "row 8" in r.stderr and "ranking" in r.stderr, r.stderr


#: Subprocess runs here (each ~1 s; the thread count above is the deterministic check);
#: benchmarks/hostile_probes.py runs it 100 times.
PARQUET_RUNS = 3


# -- 7: silent wrong input ----------------------------------------------------------------------
def test_7_duplicate_columns_and_keys_are_errors_naming_them(tmp_path, cli):
    lines = ["annotator_id,prompt,chosen,rejected,annotator_id"]
    lines += [f"a{i},p{i},x,y,same" for i in range(10)]
    (tmp_path / "dup.csv").write_text("\n".join(lines) + "\n")
    refused(cli, "ingest", tmp_path / "dup.csv", "--out", tmp_path / "o1",
            words=["dup.csv, line 1", "annotator_id"])
    row = '{"annotator_id": "a", "annotator_id": "b", "prompt": "p", "responses": ["x", "y"], ' \
          '"ranking": [0, 1]}'
    (tmp_path / "dup.jsonl").write_text(json.dumps(ranked_row("w0")) + "\n" + row + "\n")
    refused(cli, "ingest", tmp_path / "dup.jsonl", "--out", tmp_path / "o2",
            words=["dup.jsonl, line 2", "annotator_id", "twice"])
    (tmp_path / "dup.json").write_text("[" + row + "]")
    refused(cli, "ingest", tmp_path / "dup.json", "--out", tmp_path / "o3",
            words=["dup.json, row 1", "annotator_id"])
    import pyarrow as pa
    import pyarrow.parquet as pq
    table = pa.table([["a"], ["p"], ["x"], ["y"], ["b"]],
                     names=["annotator_id", "prompt", "chosen", "rejected", "annotator_id"])
    pq.write_table(table, tmp_path / "dup.parquet")
    refused(cli, "ingest", tmp_path / "dup.parquet", "--out", tmp_path / "o4",
            words=["dup.parquet", "annotator_id"])


def test_7_lookalike_ids_and_identical_responses_are_flagged(tmp_path):
    f = write_jsonl(tmp_path / "x.jsonl", [
        ranked_row("ｒｅｎｅｅ", prompt="P1"), ranked_row("renee\u200b", prompt="P2"),
        ranked_row("bob", prompt="P3", responses=["same", "same", "other"])])
    report = ingest([str(f)]).report
    text = " ".join(report["warnings"])
    assert "look alike" in text and ascii("ｒｅｎｅｅ") in text and ascii("renee\u200b") in text
    assert "invisible" in text and "identical" in text and "x.jsonl, line 3" in text
    assert report["accepted"] == 3


def test_7_a_decompression_bomb_is_refused_before_it_fills_memory(tmp_path, cli):
    bomb = tmp_path / "bomb.jsonl.gz"
    with gzip.open(bomb, "wb") as f:
        f.write((json.dumps(ranked_row("w1")) + "\n").encode())
        f.write(b" " * (3 << 20))
    refused(cli, "ingest", bomb, "--out", tmp_path / "o1", "--max-input-mb", "2",
            words=["bomb.jsonl.gz", "larger than 2 MB once decompressed", "--max-input-mb"])
    rc, _, err = cli("ingest", bomb, "--out", tmp_path / "o2", "--max-input-mb", "0")
    assert rc == 0, err
    with pytest.raises(IngestError, match="larger than 1 MB"):
        ingest([str(bomb)], max_input_mb=1)
    with gzip.open(bomb, "wb") as f:  # under the size limit, but a thousandfold expansion
        f.write((json.dumps(ranked_row("w1")) + "\n").encode())
        f.write(b" " * (80 << 20))
    tracemalloc.start()
    try:
        refused(cli, "ingest", bomb, "--out", tmp_path / "o3", words=["100-fold", "bomb"])
        assert tracemalloc.get_traced_memory()[1] < 200 * 2**20
    finally:
        tracemalloc.stop()


# -- 8: unclear errors --------------------------------------------------------------------------
def test_8_flags_are_checked_as_their_yaml_keys_are(made, tmp_path, cli, capsys):
    pop, run = made
    refused(cli, "evaluate", "--run", run, "--n-boot", "-1",
            words=["--n-boot must be >= 0, got -1"])
    refused(cli, "aggregate", "--run", run, "--served-prompts", "1",
            words=["--served-prompts must be 0 (all) or >= 2, got 1"])
    refused(cli, "simulate", "--out", run.parent / "sim", "--types", "0",
            words=["--types must be >= 1, got 0"])
    assert not (run.parent / "sim").exists()
    assert "--seed must be an integer in [0, 2**63 - 1]" in argparse_refuses(
        capsys, "aggregate", "--run", run, "--seed", str(10**23))
    assert "--top must be >= 1" in argparse_refuses(
        capsys, "suggest", "--run", run, "--annotator", "x", "--candidates", pop, "--top", "-5")
    for weights in ("nan,1", "inf,1", "-1,1", "0,0"):
        refused(cli, "aggregate", "--run", run, f"--type-weights={weights}",
                words=["--type-weights"])
    recipe = tmp_path / "r.yaml"
    for text, words in (("run: {seed: 99999999999999999999999}\nsimulate: {}\n", ["seed"]),
                        ("run: {seed: -1}\nsimulate: {}\n", ["seed must be an integer"]),
                        ("aggregate: {n_boot: -1}\nsimulate: {}\n", ["n_boot must be >= 0"]),
                        ("? [a, b]\n: 1\n", ["r.yaml", "a key must be a name"]),
                        ("em: 0\nsimulate: {}\n", ["section 'em' must be a mapping"])):
        recipe.write_text(text)
        refused(cli, "run", recipe, words=words)


def test_8_wrong_feature_width_and_suggest_arguments_say_what_is_wrong(made, tmp_path, cli):
    pop, run = made
    rows = [ranked_row(f"w{i}", prompt=f"p{i}", features=[[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
            for i in range(4)]
    write_jsonl(tmp_path / "narrow.jsonl", rows)
    err = refused(cli, "assign", "--run", run, "--data", tmp_path / "narrow.jsonl",
                  words=["width 2", "width 8"])
    assert "broadcast" not in err
    for length in ("0", "99"):
        rc = None
        try:
            rc, _, err = cli("suggest", "--run", run, "--annotator", "x", "--candidates", pop,
                             "--ranking-length", length)
        except SystemExit as e:
            rc = e.code
        assert rc == 2
    rc, out, err = cli("suggest", "--run", run, "--annotator", "NOPE", "--candidates", pop)
    assert rc == 0 and "'NOPE' is unknown to the run" in err and "type priors" in out


# -- 9: paths and re-runs -----------------------------------------------------------------------
def test_9_tilde_is_expanded_everywhere_and_bad_arguments_create_nothing(made, tmp_path, cli,
                                                                         monkeypatch):
    pop, _ = made
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    rc, _, err = cli("em", "--data", pop, "--out", "~/x", "--types", "2")
    assert rc == 0, err
    assert (home / "x" / "em.json").is_file() and not (tmp_path / "~").exists()
    from pluralign.stages.pipeline import PipelineConfig
    (tmp_path / "r.yaml").write_text("run: {out: ~/y}\ningest: {inputs: [~/data], "
                                     "heldout_fraction: 0.25}\nevaluate: {data: ~/held}\n")
    cfg = PipelineConfig.load(tmp_path / "r.yaml")
    assert (cfg.run.out, cfg.ingest.inputs, cfg.evaluate.data) == (
        str(home / "y"), [str(home / "data")], str(home / "held"))

    refused(cli, "em", "--data", pop, "--out", tmp_path / "new", "--types", "0")
    assert not (tmp_path / "new").exists()


def test_9_a_stage_that_runs_again_says_why(tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "r.yaml"
    text = ("run: {out: x, seed: 0}\nsimulate: {types: 2, annotators: 12, per_annotator: 4}\n"
            "em: {n_types: 2, n_init: 1}\naggregate: {n_boot: 0}\nevaluate: {n_boot: 0}\n")
    recipe.write_text(text)
    assert cli("run", recipe)[0] == 0
    rc, out, _ = cli("run", recipe)
    assert rc == 0 and out.count("up to date, skipped") == 6
    recipe.write_text(text.replace("n_init: 1", "n_init: 2"))
    rc, out, _ = cli("run", recipe)
    assert rc == 0 and "[ingest] up to date" in out
    assert "[em] running again: settings changed (em.em.n_init: 1 -> 2)" in out
    assert "[report] running again: em ran again" in out
