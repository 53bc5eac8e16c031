"""The report as one HTML page (report.html) from its Markdown parts, and the optional check that
a headless Chromium renders it."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Any

from pluralign.stages.report_content import (
    DEFINITIONS,
    FIGURES,
    TITLES,
    captions,
    config_rows,
    confusion_tables,
    findings,
    policy_header,
    policy_rows,
    served_rows,
    served_title,
    warning_rows,
)
from pluralign.stages.report_distributional import distributional_table
from pluralign.stages.report_predictive import predictive_tables

# -- checking the page in a browser ---------------------------------------------------------
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync")


def _html_table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def page(story: dict[str, Any], em: dict[str, Any], agg: dict[str, Any], ev: dict[str, Any],
         pngs: dict[str, bytes]) -> str:
    """report.html: one file, every image inline, readable without anything else."""
    esc = html.escape
    caps = captions(em, ev)
    items = "".join(f"<li>{esc(f)}</li>" for f in findings(story))
    defs = "".join(f"<dt>{esc(t)}</dt><dd>{esc(d)}</dd>" for t, d in DEFINITIONS)
    table = served_rows(agg)
    served = _html_table(*table) if table else ""
    confusion = "".join(f"<h3>Discovered types vs {esc(title)}</h3>{_html_table(h, r)}"
                        for title, h, r in confusion_tables(ev)) or \
        "<p>No label column (true_type, group) in the evaluation data.</p>"
    predictive = "".join(f"<h3>{esc(title)}</h3>{_html_table(h, r)}"
                         for title, h, r in predictive_tables(ev)) or \
        "<p>Not measured: set evaluate.predictive_orders &gt; 0.</p>"
    table_d = distributional_table(ev)
    distributional = f"<p>{esc(table_d[0])}</p>{_html_table(*table_d[1:])}" if table_d else \
        "<p>Not measured: no labelled groups with answer distributions.</p>"
    figs = "".join(
        f'<figure><img alt="{esc(TITLES[n])}" src="data:image/png;base64,'
        f'{base64.b64encode(pngs[n]).decode()}"><figcaption>{esc(caps[n])}</figcaption>'
        "</figure>" for n in FIGURES)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>pluralign fairness audit</title>
<style>
body {{ font-family: sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.85em; margin-bottom: 1em; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
table.left td, table.left th {{ text-align: left; }}
.box {{ background: #f6f8fa; border: 1px solid #d0d7de; padding: 0.5em 1em; font-size: 0.9em; }}
.warn {{ background: #fff8e1; border-color: #e0b000; }}
dt {{ font-weight: bold; }} dd {{ margin: 0 0 0.4em 1em; }}
figure {{ display: inline-block; margin: 0.5em; width: 46%; vertical-align: top; }}
img {{ max-width: 100%; }} figcaption {{ font-size: 0.85em; color: #444; }}
</style></head><body>
<h1>pluralign fairness audit</h1>
<h2>Findings</h2><ul>{items}</ul>
<h2>Warnings and identifiability</h2>
<div class="box warn">{_html_table(["check", "message"], warning_rows(story), "left")}</div>
<h2>Definitions</h2><div class="box"><dl>{defs}</dl></div>
<h2>Every policy against every type</h2>
{_html_table(policy_header(ev), policy_rows(ev))}
<h2>As served</h2><p>{esc(served_title(agg))}</p>{served}
<h2>Discovered types against the known labels</h2>{confusion}
<h2>Predictive personalization</h2>{predictive}
<h2>Distributional alignment</h2>{distributional}
<h2>Run configuration</h2>{_html_table(["setting", "value"], config_rows(em, agg, ev), "left")}
<h2>Figures</h2>{figs}
</body></html>
"""


def find_chromium() -> str | None:
    """A Chromium or Chrome executable on PATH, or None."""
    import shutil
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def browser_check(report_html: str | Path, screenshot: str | Path | None = None,
                  chromium: str | None = None, timeout: float = 120) -> tuple[int, int]:
    """Open the page in headless Chromium and count (images loaded, images): a copy of the page
    gets a script that writes the count into its title, which --dump-dom prints. Optionally
    saves a full-page screenshot of the unmodified report."""
    import subprocess
    import tempfile
    exe = chromium or find_chromium()
    if exe is None:
        raise FileNotFoundError("no Chromium found (install chromium to check the report)")
    report_html = Path(report_html)
    probe = ("<script>window.addEventListener('load', () => { const i = [...document.images];"
             " document.title = 'IMAGES ' + i.filter(x => x.complete && x.naturalWidth > 0)"
             ".length + '/' + i.length; });</script></body>")
    with tempfile.TemporaryDirectory() as tmp:
        page_copy = Path(tmp) / "probe.html"
        page_copy.write_text(report_html.read_text().replace("</body>", probe))
        flags = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={tmp}/profile",
                 "--virtual-time-budget=10000"]
        dom = subprocess.run([*flags, "--dump-dom", page_copy.as_uri()], capture_output=True,
                             text=True, timeout=timeout).stdout
        if screenshot is not None:
            shot = Path(screenshot).resolve()
            subprocess.run([*flags, "--window-size=1100,3400", f"--screenshot={shot}",
                            report_html.resolve().as_uri()], capture_output=True,
                           timeout=timeout, check=True)
    found = re.search(r"IMAGES (\d+)/(\d+)", dom)
    if not found:
        raise RuntimeError(f"Chromium did not report on {report_html}: {dom[:300]!r}")
    return int(found.group(1)), int(found.group(2))
