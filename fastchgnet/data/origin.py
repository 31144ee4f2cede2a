"""What a graph cache was built from, so that a rerun with another source or other labels is
noticed instead of training on the old cache.

The record (``origin``) names each source file by its identity (``source_identity``) and the
reader settings that change the labels (MPtrj ``energy_key``; extxyz/ASE ``AseLabels``). It is
kept in the cache's settings.json (written before the first shard is finished, so a resumed
conversion is checked too) and manifest.json (written last), both by ``files.write_json_atomic``.

A file's identity is its resolved path, its size and either its content's sha256 (files up to
``HASH_LIMIT_BYTES``: read once, a fraction of a second) or its modification time in ns
(larger files, e.g. the multi-GB MPtrj JSON, which would take a minute to hash): a copy moved
elsewhere, a file rewritten or touched, is a different source. A folder (a VASP run) is named
by the sha256 of its files' relative paths, sizes and modification times.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from fastchgnet.files import file_sha256

#: files up to this size are identified by content (sha256), larger ones by modification time
HASH_LIMIT_BYTES = 64 << 20


def source_identity(path: str | Path) -> dict[str, Any]:
    """Resolved path, size in bytes and sha256 (files up to ``HASH_LIMIT_BYTES``) or
    ``mtime_ns`` (larger files); for a folder, file count and the sha256 of its listing."""
    path = Path(path).resolve()
    if path.is_dir():
        listing = hashlib.sha256()
        count = 0
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                stat = (Path(root) / name).stat()
                relative = (Path(root) / name).relative_to(path)
                listing.update(f"{relative}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
                count += 1
        return {"path": str(path), "files": count, "listing_sha256": listing.hexdigest()}
    stat = path.stat()
    identity: dict[str, Any] = {"path": str(path), "size": stat.st_size}
    if stat.st_size <= HASH_LIMIT_BYTES:
        identity["sha256"] = file_sha256(path)
    else:
        identity["mtime_ns"] = stat.st_mtime_ns
    return identity


def as_json(value: object) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), for comparing records."""
    return json.loads(json.dumps(value))


def _flat(value: object, prefix: str = "") -> dict[str, Any]:
    if not isinstance(value, dict):
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in value.items():
        flat.update(_flat(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def describe_change(
    recorded: object, wanted: object, limit: int = 3, where: str = "the cache"
) -> str:
    """One line naming up to ``limit`` keys where ``recorded`` (the record ``where`` holds)
    and ``wanted`` (this run's) differ: ``key: A in the cache, B now``; "" when they agree."""
    old, new = _flat(as_json(recorded)), _flat(as_json(wanted))
    keys = [k for k in dict.fromkeys([*old, *new]) if old.get(k) != new.get(k)]
    parts = [f"{k}: {old.get(k, '(none)')!r} in {where}, {new.get(k, '(none)')!r} now"
             for k in keys]  # fmt: skip
    more = f" (and {len(keys) - limit} more)" if len(keys) > limit else ""
    return "; ".join(parts[:limit]) + more


def data_change(recorded: dict[str, Any], origin: dict[str, Any]) -> str:
    """How the sources a run reads now (``origin``, as a cache records them) differ from
    ``recorded`` (what a checkpoint's run trained on), in one line (``describe_change``); the
    files' resolved paths aside (the same files moved are the same data); "" when alike."""

    def content(record: dict[str, Any], short: bool = False) -> dict[str, Any]:
        flat = _flat(as_json(record)).items()
        cut = 12 if short else None  # a checksum's first digits say it changed
        return {k: v[:cut] if k.endswith("sha256") else v for k, v in flat if k[-5:] != ".path"}

    if content(recorded) == content(origin):
        return ""
    return describe_change(content(recorded, True), content(origin, True), where="the checkpoint")


def cache_origin(cache: Path) -> dict[str, Any] | None:
    """The record of what the finished cache ``cache`` was built from (its manifest's
    ``origin``), or None where it keeps none (or cannot be read)."""
    try:
        return json.loads((cache / "manifest.json").read_text()).get("origin")
    except (OSError, ValueError, AttributeError):
        return None


def cache_mismatch(
    cache: Path, settings: dict[str, Any], origin: dict[str, Any], max_structures: int
) -> str:
    """Why the cache folder ``cache`` cannot serve a run that asks ``settings`` (the cutoffs),
    ``origin`` and the first ``max_structures`` structures (0: all); "" when it can (or holds
    nothing yet, or an unfinished conversion with the same settings, which ``convert``
    resumes). The reason is one line naming the difference."""
    manifest, started = cache / "manifest.json", cache / "settings.json"
    record_path = manifest if manifest.is_file() else started
    if not record_path.is_file():
        return "" if not manifest.exists() else f"{manifest} is not a file"
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError) as error:
        return f"{record_path} cannot be read ({error})"
    if "origin" not in record:
        return f"cache {cache} has no record of its source (made before records were kept)"
    built = {key: record.get(key) for key in settings}
    changes = [describe_change(built, settings), describe_change(record["origin"], origin)]
    change = "; ".join(c for c in changes if c)
    if change:
        return f"cache {cache} does not match the config ({change})"
    return covers(record, max_structures, cache) if record_path == manifest else ""


def covers(manifest: dict[str, Any], max_structures: int, cache: Path) -> str:
    """Why a finished cache (its ``manifest``) lacks the first ``max_structures`` structures
    of its source (0: all of them), in one line; "" when it holds them."""
    held = int(manifest.get("max_structures", 0))
    if held == 0 or 0 < max_structures <= held:
        return ""
    asked = "all" if max_structures == 0 else f"the first {max_structures}"
    return (
        f"cache {cache} holds only the first {held} structures of its source (built with "
        f"data.max_structures={held}); the config asks {asked}"
    )
