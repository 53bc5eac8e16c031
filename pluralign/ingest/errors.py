"""Where a row came from, and the error that names file, line or row, field and problem."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Location:
    """A place in an input: `file`, and `unit` ("line" or "row") number `number` (1-based)."""

    file: str
    unit: str
    number: int

    def __str__(self) -> str:
        return f"{self.file}, {self.unit} {self.number}"


class IngestError(Exception):
    """Bad input. The CLI prints the message and exits with status 2."""

    exit_code = 2

    def __init__(self, message: str, location: Location | str | None = None,
                 field: str | None = None, reason: str = "invalid_input"):
        where = f"{location}: " if location else ""
        what = f"field '{field}': " if field else ""
        super().__init__(f"{where}{what}{message}")
        self.location = location
        self.field = field
        self.reason = reason
        self.detail = message
