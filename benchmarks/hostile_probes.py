"""Hostile and careless use, probed class by class (issue 24): each probe runs the real CLI in a
subprocess and says whether pluralign held (kept the user's files, refused in one line, or
accepted correctly). Prints one line per class and a headline.

    python benchmarks/hostile_probes.py                 # the checkout's code
    python benchmarks/hostile_probes.py --code DIR      # another checkout (e.g. a git worktree)

`--out /` is probed only with --root-probe: on code that accepts it, it writes into `/`.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

PROBES: list[tuple[int, str, Callable[[Ctx], bool]]] = []


def probe(cls: int) -> Callable:
    def wrap(fn: Callable[[Ctx], bool]) -> Callable[[Ctx], bool]:
        PROBES.append((cls, fn.__name__, fn))
        return fn
    return wrap


class Ctx:
    """The code under test, a scratch folder, a population and a finished run to copy."""

    def __init__(self, code: Path, scratch: Path):
        self.code, self.tmp = code, scratch
        self.env = {**os.environ, "PYTHONPATH": str(code)}
        self.pop = scratch / "pop"
        self.cli("simulate", "--out", self.pop, "--types", "2", "--annotators", "12",
                 "--per-annotator", "6", "--seed", "0")
        self.run = scratch / "run0"
        self.cli("em", "--data", self.pop, "--out", self.run, "--types", "2")
        self.cli("aggregate", "--run", self.run, "--n-boot", "20")
        self.cli("evaluate", "--run", self.run, "--n-boot", "20")
        self.cli("report", "--run", self.run)
        self.n = 0
        self._flags: dict[str, bool] = {}

    def cli(self, *args: object, cwd: Path | None = None, env: dict | None = None,
            stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pluralign.cli", "-q", *map(str, args)],
                              cwd=cwd or self.tmp, env={**self.env, **(env or {})},
                              capture_output=True, text=True, input=stdin, timeout=600)

    def overwrite(self, command: str) -> list[str]:
        """["--overwrite"] where `command` has the flag (older code may not: passing it would
        stop at the unknown flag and look like a refusal)."""
        if command not in self._flags:
            self._flags[command] = "--overwrite" in self.cli(command, "--help").stdout
        return ["--overwrite"] if self._flags[command] else []

    def fresh(self, name: str) -> Path:
        self.n += 1
        path = self.tmp / f"{self.n:02d}-{name}"
        path.mkdir()
        return path

    def run_copy(self, where: Path) -> Path:
        # symlinks=True: a copy of a run keeps what it is; the lock file is not copied
        shutil.copytree(self.run, where / "run", ignore=shutil.ignore_patterns(".pluralign.lock"))
        return where / "run"


def clean_refusal(r: subprocess.CompletedProcess, *words: str) -> bool:
    """Exit 2, one line without a traceback, naming every word."""
    return r.returncode == 2 and "Traceback" not in r.stderr and \
        all(w.lower() in r.stderr.lower() for w in words)


def user_files(where: Path) -> dict[str, bytes]:
    (where / "merged").mkdir(parents=True, exist_ok=True)
    (where / "report_files").mkdir(exist_ok=True)
    files = {"report.md": b"my notes\n", "merged/mine.bin": b"\x00\x01",
             "report_files/a.png": b"PNG?", "evaluation.json": b"{}\n"}
    for rel, content in files.items():
        (where / rel).write_bytes(content)
    return files


def intact(where: Path, files: dict[str, bytes]) -> bool:
    return all((where / rel).is_file() and (where / rel).read_bytes() == c
               for rel, c in files.items())


def recipe(where: Path, out: str, extra: str = "") -> Path:
    path = where / "r.yaml"
    path.write_text(f"run: {{out: '{out}', seed: 0}}\n"
                    "simulate: {types: 2, annotators: 12, per_annotator: 4}\n"
                    "em: {n_types: 2, n_init: 1}\naggregate: {n_boot: 0}\n"
                    f"evaluate: {{n_boot: 0}}\n{extra}")
    return path


# -- 1: deletes files it never made -------------------------------------------------------------
@probe(1)
def em_into_cwd_keeps_the_users_files(c: Ctx) -> bool:
    d = c.fresh("cwd")
    files = user_files(d)
    c.cli("em", "--data", c.pop, "--out", ".", "--types", "2", cwd=d)
    return intact(d, files)


@probe(1)
def em_rerun_keeps_an_edited_report(c: Ctx) -> bool:
    run = c.run_copy(c.fresh("edited"))
    (run / "report.md").write_text("edited by hand\n")
    c.cli("em", "--data", c.pop, "--out", run, "--types", "2")
    return (run / "report.md").is_file() and (run / "report.md").read_text() == "edited by hand\n"


@probe(1)
def run_into_a_folder_of_the_users_keeps_it(c: Ctx) -> bool:
    d = c.fresh("runout")
    files = user_files(d / "work")
    c.cli("run", recipe(d, "work"), cwd=d)
    return intact(d / "work", files)


# -- 2: any folder accepted as a run folder -----------------------------------------------------
@probe(2)
def yaml_out_empty_is_refused(c: Ctx) -> bool:
    d = c.fresh("emptyout")
    r = c.cli("run", recipe(d, ""), cwd=d)
    return r.returncode == 2 and not (d / "em.json").exists() and not (d / "data").exists()


@probe(2)
def out_home_is_refused(c: Ctx) -> bool:
    home = c.fresh("home")
    (home / ".bashrc").write_text("# mine\n")
    r = c.cli("em", "--data", c.pop, "--out", home, "--types", "2", env={"HOME": str(home)})
    return r.returncode == 2 and not (home / "em.json").exists()


@probe(2)
def out_dot_with_foreign_files_is_refused(c: Ctx) -> bool:
    d = c.fresh("dot")
    (d / "thesis.tex").write_text("mine\n")
    r = c.cli("em", "--data", c.pop, "--out", ".", "--types", "2", cwd=d)
    return r.returncode == 2 and not (d / "em.json").exists()


@probe(2)
def out_project_checkout_is_refused(c: Ctx) -> bool:
    d = c.fresh("checkout")
    (d / ".git").mkdir()
    (d / "pyproject.toml").write_text("[project]\nname='x'\n")
    (d / "data").mkdir()
    r = c.cli("run", recipe(d, "x"), "--out", ".", cwd=d)
    return r.returncode == 2 and not (d / "em.json").exists() and not (d / "data" / "x").exists()


def out_root_is_refused(c: Ctx) -> bool:
    before = set(os.listdir("/"))
    r = c.cli("em", "--data", c.pop, "--out", "/", "--types", "2")
    return r.returncode == 2 and set(os.listdir("/")) == before


# -- 3: symlinks lead writes outside ------------------------------------------------------------
@probe(3)
def a_symlinked_lock_leaves_its_target_alone(c: Ctx) -> bool:
    d = c.fresh("lock")
    run = c.run_copy(d)
    outside = d / "outside.txt"
    outside.write_text("precious\n")
    (run / ".pluralign.lock").symlink_to(outside)
    c.cli("report", "--run", run)
    return outside.read_text() == "precious\n"


def _linked_folder(c: Ctx, name: str, mine: bool, *command: str) -> bool:
    """Replace run/NAME by a link to a folder outside (holding files of the same names when
    `mine`), run the command, and say whether the outside folder is as it was."""
    d = c.fresh(name)
    run = c.run_copy(d)
    outside = d / "outside"
    outside.mkdir()
    for p in (run / name).iterdir() if mine else ():
        (outside / p.name).write_bytes(b"mine")
    before = {p.name: p.read_bytes() for p in outside.iterdir()}
    shutil.rmtree(run / name)
    (run / name).symlink_to(outside)
    c.cli(*command, "--run", run)
    return {p.name: p.read_bytes() for p in outside.iterdir()} == before


@probe(3)
def a_symlinked_figures_folder_leaves_its_target_alone(c: Ctx) -> bool:
    return _linked_folder(c, "report_files", True, "report")


@probe(3)
def a_symlinked_policy_folder_leaves_its_target_alone(c: Ctx) -> bool:
    return _linked_folder(c, "fair", False, "aggregate", "--n-boot", "0")


@probe(3)
def a_symlinked_dataset_file_leaves_its_target_alone(c: Ctx) -> bool:
    d = c.fresh("dsl")
    ds = d / "ds"
    shutil.copytree(c.pop, ds)
    outside = d / "outside.parquet"
    outside.write_bytes(b"mine")
    (ds / "annotations.parquet").unlink()
    (ds / "annotations.parquet").symlink_to(outside)
    c.cli("simulate", "--out", ds, "--types", "2", "--annotators", "6", "--overwrite")
    return outside.read_bytes() == b"mine"


@probe(3)
def export_onto_a_symlink_leaves_its_target_alone(c: Ctx) -> bool:
    d = c.fresh("exl")
    outside = d / "outside.jsonl"
    outside.write_text("mine\n")
    (d / "link.jsonl").symlink_to(outside)
    c.cli("export", c.pop, "--out", d / "link.jsonl", *c.overwrite("export"))
    return outside.read_text() == "mine\n"


# -- 4: overwrite without asking ----------------------------------------------------------------
@probe(4)
def export_into_its_source_is_refused(c: Ctx) -> bool:
    d = c.fresh("exsrc")
    ds = d / "ds"
    shutil.copytree(c.pop, ds)
    before = (ds / "annotations.parquet").read_bytes()
    r = c.cli("export", ds, "--out", ds / "annotations.parquet")
    return r.returncode == 2 and (ds / "annotations.parquet").read_bytes() == before


@probe(4)
def export_over_a_file_is_refused(c: Ctx) -> bool:
    d = c.fresh("exfile")
    (d / "afile.txt").write_text("mine\n")
    r = c.cli("export", c.pop, "--out", d / "afile.txt")
    return r.returncode == 2 and (d / "afile.txt").read_text() == "mine\n"


@probe(4)
def assign_over_a_file_is_refused(c: Ctx) -> bool:
    d = c.fresh("asfile")
    (d / "keep.csv").write_text("mine\n")
    r = c.cli("assign", "--run", c.run, "--data", c.pop, "--out", d / "keep.csv")
    return r.returncode == 2 and (d / "keep.csv").read_text() == "mine\n"


@probe(4)
def assign_over_the_runs_posteriors_is_refused(c: Ctx) -> bool:
    run = c.run_copy(c.fresh("asrun"))
    before = (run / "posteriors.csv").read_bytes()
    r = c.cli("assign", "--run", run, "--data", c.pop, "--out", run / "posteriors.csv",
              *c.overwrite("assign"))
    return r.returncode == 2 and (run / "posteriors.csv").read_bytes() == before


# -- 5: injection in printed tables -------------------------------------------------------------
NASTY_IDS = ['=HYPERLINK("http://x","y")', "+cmd|' /C calc'!A0", "two\nlines", 'a,"b', "@SUM(1)"]


def _rows_with_ids(ids: list[str], true_type: str | None = None) -> str:
    rows = []
    for i, h in enumerate(ids):
        for j in range(3):
            row = {"annotator_id": h, "prompt": f"p{i}-{j}", "responses": ["a", "b", "c"],
                   "ranking": [0, 1, 2] if i % 2 else [2, 1, 0],
                   "features": [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]}
            if true_type is not None:
                row["true_type"] = true_type if i % 2 else "plain"
            rows.append(json.dumps(row))
    return "\n".join(rows) + "\n"


@probe(5)
def assign_prints_quoted_guarded_csv(c: Ctx) -> bool:
    d = c.fresh("inject")
    run = d / "run"
    (d / "new.jsonl").write_text(_rows_with_ids(NASTY_IDS + ["plain"]))
    c.cli("em", "--data", c.pop, "--out", run, "--types", "2")
    # the run was fitted on 8 features; new data of width 2 would be refused, so fit on these
    c.cli("ingest", d / "new.jsonl", "--out", d / "ds")
    c.cli("em", "--data", d / "ds", "--out", d / "run2", "--types", "2", "--force")
    r = c.cli("assign", "--run", d / "run2", "--data", d / "new.jsonl")
    rows = list(csv.reader(io.StringIO(r.stdout)))
    if r.returncode != 0 or len(rows) != len(NASTY_IDS) + 2:
        return False
    width = len(rows[0])
    return all(len(row) == width for row in rows) and \
        not any(row[0][:1] in "=+-@" for row in rows[1:])


@probe(5)
def report_md_escapes_image_syntax(c: Ctx) -> bool:
    d = c.fresh("mdimg")
    (d / "in.jsonl").write_text(_rows_with_ids([f"u{i}" for i in range(8)],
                                               "![img](http://evil.example/x.png)"))
    c.cli("ingest", d / "in.jsonl", "--out", d / "ds")
    run = d / "run"
    c.cli("em", "--data", d / "ds", "--out", run, "--types", "2", "--force")
    c.cli("aggregate", "--run", run, "--n-boot", "0")
    c.cli("evaluate", "--run", run, "--n-boot", "0")
    c.cli("report", "--run", run)
    md = (run / "report.md").read_text() if (run / "report.md").is_file() else ""
    return "evil.example" in md and "![img](http" not in md


# -- 6: crashes on input ------------------------------------------------------------------------
def _good_row(i: int = 0) -> dict:
    return {"annotator_id": f"a{i}", "prompt": f"p{i}", "responses": ["x", "y", "z"],
            "ranking": [0, 1, 2]}


@probe(6)
def deep_json_is_one_line(c: Ctx) -> bool:
    d = c.fresh("deep")
    deep = '{"annotator_id": "a", "prompt": ' + "[" * 100_000 + "]" * 100_000 + "}"
    (d / "in.jsonl").write_text(json.dumps(_good_row()) + "\n" + deep + "\n")
    fail = c.cli("ingest", d / "in.jsonl", "--out", d / "o1")
    skip = c.cli("ingest", d / "in.jsonl", "--out", d / "o2", "--on-error", "skip")
    return clean_refusal(fail, "in.jsonl", "line 2") and skip.returncode == 0 and \
        "Traceback" not in skip.stderr


@probe(6)
def a_long_csv_cell_is_read(c: Ctx) -> bool:
    d = c.fresh("longcell")
    with open(d / "in.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["annotator_id", "prompt", "chosen", "rejected"])
        w.writerow(["a", "p" * 200_000, "x", "y"])
        w.writerow(["b", "q", "x", "y"])
    return c.cli("ingest", d / "in.csv", "--out", d / "o").returncode == 0


@probe(6)
def a_bad_parquet_row_exits_2_every_time(c: Ctx) -> bool:
    import pyarrow as pa
    import pyarrow.parquet as pq
    d = c.fresh("pq")
    rows = [_good_row(i) for i in range(20)]
    rows[7]["ranking"] = [0, 0, 1]
    pq.write_table(pa.Table.from_pylist(rows), d / "in.parquet")
    codes = [c.cli("ingest", d / "in.parquet", "--out", d / f"o{i}").returncode
             for i in range(PARQUET_RUNS)]
    return codes.count(2) == len(codes)


PARQUET_RUNS = 100


# -- 7: silent wrong input ----------------------------------------------------------------------
@probe(7)
def a_duplicate_csv_column_is_an_error(c: Ctx) -> bool:
    d = c.fresh("dupcol")
    lines = ["annotator_id,prompt,chosen,rejected,annotator_id"]
    lines += [f"a{i},p{i},x,y,same" for i in range(10)]
    (d / "in.csv").write_text("\n".join(lines) + "\n")
    return clean_refusal(c.cli("ingest", d / "in.csv", "--out", d / "o"), "annotator_id")


@probe(7)
def a_duplicate_json_key_is_an_error(c: Ctx) -> bool:
    d = c.fresh("dupkey")
    (d / "in.jsonl").write_text('{"annotator_id": "a", "annotator_id": "b", "prompt": "p", '
                                '"responses": ["x","y","z"], "ranking": [0,1,2]}\n')
    return clean_refusal(c.cli("ingest", d / "in.jsonl", "--out", d / "o"), "annotator_id",
                         "line 1")


@probe(7)
def lookalike_ids_are_flagged(c: Ctx) -> bool:
    d = c.fresh("lookalike")
    rows = [_good_row(0), _good_row(1)]
    rows[0]["annotator_id"], rows[1]["annotator_id"] = "ｒｅｎｅｅ", "renee\u200b"
    (d / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = c.cli("ingest", d / "in.jsonl", "--out", d / "o")
    return r.returncode == 0 and "renee" in (r.stdout + r.stderr).replace("ｒｅｎｅｅ", "renee") \
        and ("zero-width" in r.stdout + r.stderr or "look alike" in r.stdout + r.stderr)


@probe(7)
def identical_responses_ranked_are_flagged(c: Ctx) -> bool:
    d = c.fresh("same")
    row = _good_row()
    row["responses"] = ["a", "a", "a"]
    (d / "in.jsonl").write_text(json.dumps(row) + "\n")
    r = c.cli("ingest", d / "in.jsonl", "--out", d / "o")
    return clean_refusal(r, "responses") or (r.returncode == 0 and "identical" in r.stdout)


@probe(7)
def a_gzip_bomb_is_refused(c: Ctx) -> bool:
    d = c.fresh("bomb")
    line = (json.dumps(_good_row()) + "\n").encode()
    with gzip.open(d / "in.jsonl.gz", "wb") as f:
        f.write(line)
        chunk = b" " * (1 << 20)
        for _ in range(300):
            f.write(chunk)
    r = c.cli("ingest", d / "in.jsonl.gz", "--out", d / "o")
    return clean_refusal(r, "in.jsonl.gz") and "--max-input-mb" in r.stderr


# -- 8: unclear errors --------------------------------------------------------------------------
@probe(8)
def another_feature_width_names_both(c: Ctx) -> bool:
    d = c.fresh("width")
    (d / "new.jsonl").write_text(_rows_with_ids(["x", "y"]))
    r = c.cli("assign", "--run", c.run, "--data", d / "new.jsonl")
    return clean_refusal(r, "2", "8") and "broadcast" not in r.stderr


@probe(8)
def nan_type_weights_are_refused(c: Ctx) -> bool:
    run = c.run_copy(c.fresh("tw"))
    return all(clean_refusal(c.cli("aggregate", "--run", run, "--type-weights", w),
                             "--type-weights") for w in ("nan,1", "inf,1", "-1,1"))


@probe(8)
def negative_n_boot_is_refused(c: Ctx) -> bool:
    run = c.run_copy(c.fresh("nboot"))
    return clean_refusal(c.cli("evaluate", "--run", run, "--n-boot", "-1"), "--n-boot")


@probe(8)
def a_huge_seed_is_refused(c: Ctx) -> bool:
    d = c.fresh("seed")
    path = recipe(d, "x").read_text().replace("seed: 0", "seed: 99999999999999999999999")
    (d / "r.yaml").write_text(path)
    return clean_refusal(c.cli("run", d / "r.yaml", cwd=d), "seed")


@probe(8)
def a_complex_yaml_key_is_refused(c: Ctx) -> bool:
    d = c.fresh("cplx")
    (d / "r.yaml").write_text("? [a, b]\n: 1\n")
    return clean_refusal(c.cli("run", d / "r.yaml", cwd=d), "r.yaml")


@probe(8)
def a_scalar_section_is_refused(c: Ctx) -> bool:
    d = c.fresh("scalar")
    (d / "r.yaml").write_text(recipe(d, "x").read_text() + "em: 0\n")
    text = (d / "r.yaml").read_text().replace("em: {n_types: 2, n_init: 1}\n", "")
    (d / "r.yaml").write_text(text)
    return clean_refusal(c.cli("run", d / "r.yaml", cwd=d), "em")


@probe(8)
def suggest_for_an_unknown_annotator_says_so(c: Ctx) -> bool:
    r = c.cli("suggest", "--run", c.run, "--annotator", "NOPE", "--candidates", c.pop)
    return clean_refusal(r, "NOPE") or (r.returncode == 0 and "'NOPE' is unknown" in r.stderr)


@probe(8)
def suggest_counts_are_checked(c: Ctx) -> bool:
    ids = [line.split(",")[0] for line in (c.run / "posteriors.csv").read_text().splitlines()[1:]]
    ann = ids[0]
    return all(clean_refusal(c.cli("suggest", "--run", c.run, "--annotator", ann,
                                   "--candidates", c.pop, *flag), flag[0])
               for flag in (("--top", "-5"), ("--ranking-length", "0"),
                            ("--ranking-length", "99")))


# -- 9: paths and re-runs -----------------------------------------------------------------------
@probe(9)
def tilde_is_expanded_everywhere(c: Ctx) -> bool:
    d = c.fresh("tilde")
    home = d / "home"
    home.mkdir()
    r = c.cli("run", recipe(d, "~/x"), cwd=d, env={"HOME": str(home)})
    return r.returncode == 0 and not (d / "~").exists() and (home / "x" / "report.html").is_file()


@probe(9)
def a_bad_argument_creates_nothing(c: Ctx) -> bool:
    d = c.fresh("nothing")
    r = c.cli("em", "--data", c.pop, "--out", d / "new", "--types", "two")
    return r.returncode == 2 and not (d / "new").exists()


@probe(9)
def a_rerun_of_an_unchanged_recipe_skips_every_stage(c: Ctx) -> bool:
    d = c.fresh("rerun")
    c.cli("run", recipe(d, "x"), cwd=d)
    r = c.cli("run", recipe(d, "x"), cwd=d)
    return r.returncode == 0 and r.stdout.count("up to date") == 6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--code", type=Path, default=Path(__file__).resolve().parents[1])
    ap.add_argument("--root-probe", action="store_true", help="also probe --out /")
    ap.add_argument("--only", default=None, help="run probes whose name contains this")
    args = ap.parse_args()
    probes = list(PROBES)
    if args.root_probe:
        probes.append((2, out_root_is_refused.__name__, out_root_is_refused))
    if args.only:
        probes = [p for p in probes if args.only in p[1]]
    with tempfile.TemporaryDirectory() as tmp:
        c = Ctx(args.code.resolve(), Path(tmp))
        held: dict[int, list[str]] = defaultdict(list)
        failed: dict[int, list[str]] = defaultdict(list)
        for cls, name, fn in sorted(probes, key=lambda p: p[0]):
            try:
                ok = fn(c)
            except Exception as e:  # a probe that cannot even run counts as not held
                print(f"  {name}: probe error {type(e).__name__}: {e}", file=sys.stderr)
                ok = False
            (held if ok else failed)[cls].append(name)
        total = 0
        for cls in sorted(set(held) | set(failed)):
            n = len(held[cls]) + len(failed[cls])
            total += len(held[cls])
            print(f"class {cls}: held {len(held[cls])} of {n}"
                  + (f"; not held: {', '.join(failed[cls])}" if failed[cls] else ""))
        print(f"held: {total} of {len(probes)}")


if __name__ == "__main__":
    main()
