"""`pluralign report`: the fairness audit of a finished run folder (report.json, report.md,
report.html and report_files/), from em.json, aggregate.json and evaluation.json as checked on
load; the content lives in report_content, the figures in report_figures, the page in
report_html."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pluralign.core.io import write_json, write_text, write_with
from pluralign.runfolder.artifacts import aggregate_info, em_info, evaluation_info
from pluralign.runfolder.folder import run_folder
from pluralign.runfolder.lineage import check_made_from
from pluralign.stages.report_content import FIGURES, findings, markdown, summary
from pluralign.stages.report_figures import figures
from pluralign.stages.report_html import page


def load_parts(run: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """em.json, aggregate.json, evaluation.json of a run; names the missing step if any."""
    parts = []
    for name, step in (("em.json", "em"), ("aggregate.json", "aggregate"),
                       ("evaluation.json", "evaluate")):
        path = run / name
        if not path.is_file():
            how = f"pluralign em --data DATA --out {run}" if step == "em" else \
                f"pluralign {step} --run {run}"
            raise FileNotFoundError(f"{path} is missing: run `{how}` first")
        if name == "em.json":
            parts.append(em_info(path))
        else:
            parts.append(aggregate_info(path, parts[0]["n_types"]) if step == "aggregate"
                         else evaluation_info(path))
            check_made_from(run, name, parts[-1])
    return parts[0], parts[1], parts[2]


def write_report(run: Path, overwrite: bool = False) -> list[Path]:
    """Write report.json, report.md (figures in report_files/) and report.html into `run`."""
    with run_folder(run, "report", overwrite, create=False):
        return _write_report(Path(run))


def _write_report(run: Path) -> list[Path]:
    em, agg, ev = load_parts(run)
    story = summary(em, agg, ev)
    pngs = figures(em, agg, ev)
    files = run / "report_files"
    files.mkdir(exist_ok=True)
    for name, data in pngs.items():
        write_with(files / f"{name}.png", lambda tmp, data=data: tmp.write_bytes(data))
    write_json(run / "report.json", {"findings": findings(story), **story,
                                     "figures": {n: f"report_files/{n}.png" for n in FIGURES}})
    write_text(run / "report.md", markdown(story, em, agg, ev,
                                           {n: f"report_files/{n}.png" for n in FIGURES}))
    write_text(run / "report.html", page(story, em, agg, ev, pngs))
    return [run / "report.html", run / "report.md", run / "report.json"]
