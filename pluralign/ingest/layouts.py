"""Which layout a file is: the presets by name, and detection from a file's columns."""

from __future__ import annotations

from pluralign.ingest.errors import IngestError
from pluralign.ingest.presets import Long, Pairwise, Preset, Ranked, Scored
from pluralign.ingest.ratings import Ratings

PRESETS: dict[str, Preset] = {p.name: p for p in (Pairwise(), Ranked(), Scored(), Long(),
                                                  Ratings())}


def get_preset(name: str) -> Preset:
    """The preset called `name`; IngestError listing the known ones otherwise."""
    if name not in PRESETS:
        raise IngestError(f"unknown preset '{name}'; known presets: auto, "
                          f"{', '.join(PRESETS)}", reason="unknown_preset")
    return PRESETS[name]


def detect(columns: set[str], source: str) -> Preset:
    """Pick the one preset whose columns are present; IngestError when none or several fit."""
    fits = [p for p in PRESETS.values() if p.matches(columns)]
    if len(fits) == 1:
        return fits[0]
    wanted = "; ".join(f"{p.name}: {' + '.join(sorted(p.signature[0]))}"
                       for p in PRESETS.values())
    if not fits:
        raise IngestError(f"cannot tell the layout from the columns {sorted(columns)}. "
                          f"Layouts and the columns that identify them: {wanted}. Rename "
                          "columns with --map CANONICAL=SOURCE or name one with --preset",
                          source, reason="unknown_layout")
    raise IngestError(f"ambiguous layout: the columns fit {', '.join(p.name for p in fits)}; "
                      "choose one with --preset", source, reason="ambiguous_layout")
