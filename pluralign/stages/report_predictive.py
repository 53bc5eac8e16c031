"""The report's tables of the predictive personalization curves (DESIGN §10): log-loss of each
predictor of a user's remaining judgements after n of theirs, with its 95% interval, for unseen
users, seen users and the questions curve (evaluation.json's personalization.predictive)."""

from __future__ import annotations

from typing import Any

#: The curves, in the order the report shows them: (key in evaluation.json, title).
CURVES = (("curve", "users evaluated"), ("seen_curve", "seen users (training annotations known)"),
          ("queries", "questions asked by `suggest` against random ones"))
#: Predictors in the order the tables list them (others follow).
ORDER = ("pooled", "argmax", "posterior", "user_weights", "scratch", "oracle",
         "random_queries", "suggested_queries")


def predictive_tables(ev: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) per measured curve: n, users, then each predictor's log-loss
    with its interval; empty when the experiment did not run."""
    found = (ev.get("personalization") or {}).get("predictive") or {}
    out = []
    for key, title in CURVES:
        curve = found.get(key) or []
        if not curve:
            continue
        seen = {name for point in curve for name in point["predictors"]}
        names = [n for n in ORDER if n in seen] + sorted(seen - set(ORDER))
        rows = [[str(p["annotations"]), str(p["users"]),
                 *[_cell(p["predictors"].get(name)) for name in names]] for p in curve]
        who = f" ({found['users']})" if key == "curve" and found.get("users") else ""
        out.append((f"{title}{who}: log-loss after n revealed, lower is better",
                    ["n", "users", *[n.replace("_", " ") for n in names]], rows))
    return out


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    low_high = row.get("log_loss_interval")
    shown = f"{row['log_loss']:.3f}"
    return f"{shown} [{low_high[0]:.3f}, {low_high[1]:.3f}]" if low_high else shown
