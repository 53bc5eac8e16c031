"""pluralign: pluralistic alignment from per-annotator preferences (see DESIGN.md)."""

__version__ = "0.1.0"
