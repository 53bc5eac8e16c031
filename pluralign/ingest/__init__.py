"""Per-annotator preference ingestion: many source layouts in, canonical annotations out."""

from pluralign.ingest.core import (
    IngestResult,
    ingest,
    ingest_with,
    parse_mapping,
    to_annotations,
    write,
)
from pluralign.ingest.errors import IngestError, Location
from pluralign.ingest.layouts import PRESETS
from pluralign.ingest.report import format_report

__all__ = ["PRESETS", "IngestError", "IngestResult", "Location", "format_report", "ingest",
           "ingest_with", "parse_mapping", "to_annotations", "write"]
