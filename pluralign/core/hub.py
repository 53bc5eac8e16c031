"""Deciding, before any hub call, whether a name can only be a local path, and whether the hub
can be reached at all: a mistyped path must fail at once, not after a minute of offline retries
inside `datasets` or `transformers`."""

from __future__ import annotations

import os
import re
import socket
import sys
from functools import cache

#: What a hub repository id looks like: "name" or "owner/name" (letters, digits, - _ .).
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
HUB_HOST = ("huggingface.co", 443)
FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".pq", ".gz", ".ndjson",
                 ".gguf", ".safetensors", ".bin", ".txt", ".yaml", ".yml")


def only_local(spec: str) -> bool:
    """Whether `spec` can only mean a local path (so a missing one is simply missing): it is
    not shaped like a hub id (a leading / . ~, two slashes, a space...) or ends like a file."""
    name = spec.partition("@")[0]  # dataset@split
    return not HUB_ID.match(name) or name.lower().endswith(FILE_SUFFIXES)


@cache
def reachable(timeout: float = 1.5) -> bool:
    """Whether the hub answers a TCP connection within `timeout` seconds (asked once)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        socket.create_connection(HUB_HOST, timeout=timeout).close()
        return True
    except OSError:
        return False


def offline_unless_reachable() -> None:
    """Put the hub libraries in offline mode when the hub cannot be reached, so that a name not
    in the local cache fails at once instead of after retries. Set before they are imported
    where possible, and in their config when they already are."""
    if reachable():
        return
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    for module, attr in (("huggingface_hub.constants", "HF_HUB_OFFLINE"),
                         ("datasets.config", "HF_HUB_OFFLINE"),
                         ("datasets.config", "HF_DATASETS_OFFLINE")):
        if module in sys.modules and hasattr(sys.modules[module], attr):
            setattr(sys.modules[module], attr, True)
