"""The graph cache a run trains on: its ``data.source`` resolved to a cache folder, converted
there on first use (with its validation, test and replay sources), and on a resume checked to
be built from the same data as the checkpoint's."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable
from pathlib import Path

from fastchgnet.data.frame import Frame
from fastchgnet.train.config import DataConfig
from fastchgnet.train.loading import quickstart_path
from fastchgnet.train.replay import replay_sample


def resolve_cache(
    config: DataConfig,
    out_dir: Path,
    cutoffs: tuple[float, float],
    is_main: bool,
    resume: bool = False,
) -> Path:
    """The graph cache folder of ``config.source``, converting frames into it on first use.

    Only the main rank converts; the caller makes the other ranks wait (barrier) before they
    open the cache. ``cutoffs`` (atom, bond) in Å must match the model's.

    A cache given as ``source`` is used as it is (``prebuilt_cache``). Frames are converted
    into ``cache_dir`` (default ``<out_dir>/cache``) unless it holds them already: built from
    the same source files, label settings and cutoffs (``data.origin``, recorded in the
    cache) and at least ``max_structures`` of them. A cache that does not match is rebuilt
    when it is the run's own (inside ``out_dir``), saying why in one line, and refused
    (``CacheError``, one line naming the difference) when it lies elsewhere: it is not the
    run's to delete. A missing source is an error even when a cache exists. On a ``resume``
    data other than the checkpoint's run trained on is refused (``check_same_data``); a cache
    deleted or out of date is rebuilt from the same files as on a first run.
    """
    source = quickstart_path() if config.source == "quickstart" else Path(config.source)
    if (source / "manifest.json").is_file():
        if resume and is_main:
            from fastchgnet.data.origin import cache_origin

            check_same_data(out_dir, cache_origin(source) or {}, {"data.source": source})
        return prebuilt_cache(source, config)
    cache = Path(config.cache_dir) if config.cache_dir else out_dir / "cache"
    if is_main:
        convert_sources(config, source, cache, out_dir, cutoffs, resume)
    return cache


def prebuilt_cache(cache: Path, config: DataConfig) -> Path:
    """``cache`` (a finished cache given as ``data.source``) after checking that ``config``
    asks nothing it cannot give: no frames to add (val, test or replay sources) and no more
    structures than it holds (``max_structures``); else ``CacheError`` in one line."""
    import json

    from fastchgnet.data.cache import CacheError
    from fastchgnet.data.origin import covers

    extra = {"val_source": config.val_source, "test_source": config.test_source}
    extra["replay_source"] = config.replay_source
    for key, value in extra.items():
        if value:
            raise CacheError(
                f"data.{key}={value!r} cannot be combined with a prebuilt cache as data.source "
                f"({cache}): give the training frames as data.source instead, or a cache built "
                "with them (data.explicit_split=true for one with split tags)"
            )
    short = covers(json.loads((cache / "manifest.json").read_text()), config.max_structures, cache)
    if short:
        raise CacheError(f"{short}: give the frames as data.source, or another cache")
    return cache


def check_same_data(out_dir: Path, origin: dict, sources: dict[str, object]) -> bool:
    """On a resume, CacheError (one line) where the data read now (``origin``, as a cache
    records it: each source file's size and checksum or mtime) is not what the newest
    checkpoint in ``out_dir`` trained on (``stored_data_origin``), naming the source, what
    changed and the ways out: its batches and position would not carry over. ``sources``:
    ``data.<key>`` -> path, for the message. Returns whether the checkpoint keeps a record."""
    from fastchgnet.data.origin import data_change
    from fastchgnet.train.checkpoint import stored_data_origin

    recorded = stored_data_origin(out_dir / "checkpoints")
    if recorded is None:
        return False
    change = data_change(recorded, origin)
    if change:
        named = [f"{key}={path}" for key, path in sources.items() if path and f"{key}." in change]
        what = f"the data changed since the checkpoint ({', '.join(named) or 'data'}: {change})"
        raise data_changed(what, out_dir)
    return True


def data_changed(what: str, out_dir: Path) -> Exception:
    """The CacheError of a resume whose data changed since the checkpoint in ``out_dir``
    (``what``: that, and how), naming the ways out."""
    from fastchgnet.data.cache import CacheError

    return CacheError(
        f"--resume: {what}, whose batches would not carry over; restore the data, or start a "
        f"new run (--overwrite, or a new run.out_dir with model.init={out_dir} to start from "
        "its weights)"
    )


def convert_sources(
    config: DataConfig,
    source: Path,
    cache: Path,
    out_dir: Path,
    cutoffs: tuple[float, float],
    resume: bool = False,
) -> None:
    """Convert ``config``'s frame sources into ``cache`` unless it holds them already (see
    ``resolve_cache``); decompressed copies of gzipped sources go under ``out_dir``.

    With a replay source, ``max_structures`` limits the source to its first that many frames
    (a skipped one is not replaced) and the replay share joins on top (``replay_sample``)."""
    from fastchgnet.data.cache import FORMAT_VERSION, CacheError, remove_tree
    from fastchgnet.data.convert import convert
    from fastchgnet.data.origin import cache_mismatch
    from fastchgnet.data.sources import read_frames
    from fastchgnet.data.split import tag_split

    paths = {"source": source, "val_source": config.val_source, "test_source": config.test_source}
    if config.replay_source:  # with a share > 0 (DataConfig)
        paths["replay_source"] = config.replay_source
    with contextlib.ExitStack() as readers:  # a missing source fails here, cache or not
        parts = {
            key: readers.enter_context(
                read_frames(Path(path), config.energy_key, config.labels, scratch=out_dir)
            )
            for key, path in paths.items()
            if path
        }
        origin: dict[str, object] = {f"data.{key}": part.origin for key, part in parts.items()}
        limit = config.max_structures
        if "replay_source" in parts:
            origin["data.replay_fraction"] = config.replay_fraction
            if limit:  # the source's cap, taken here: convert's would count replay frames
                origin["data.max_structures"], limit = limit, 0
        settings = {"format": FORMAT_VERSION, "atom_cutoff": float(cutoffs[0])}
        settings["bond_cutoff"] = float(cutoffs[1])
        # the checkpoint's record first: a cache rebuilt meanwhile matches the new data
        named = {f"data.{key}": path for key, path in paths.items()}
        recorded = resume and check_same_data(out_dir, origin, named)
        mismatch = cache_mismatch(cache, settings, origin, limit)
        if not mismatch and (cache / "manifest.json").is_file():
            return
        if mismatch and resume and not recorded:  # a checkpoint written before its record
            raise data_changed(f"{mismatch}: the data changed since the checkpoint", out_dir)
        if mismatch and not cache.resolve().is_relative_to(out_dir.resolve()):
            raise CacheError(
                f"{mismatch}; data.cache_dir is not this run's to rebuild: delete it, name "
                "another folder, or give it as data.source to use it as it is"
            )
        if mismatch:
            print(f"data: {mismatch}: rebuilding it", flush=True)
            remove_tree(cache)
        frames: Iterable[Frame] = parts["source"]
        if config.val_source or config.test_source:  # one cache, frames tagged by split
            splits = [("train", "source"), ("val", "val_source"), ("test", "test_source")]
            frames = itertools.chain.from_iterable(
                tag_split(parts[key], name) for name, key in splits if key in parts
            )
        if "replay_source" in parts:
            own = itertools.islice(frames, config.max_structures or None)
            replayed = replay_sample(parts["replay_source"], config.replay_fraction)
            frames = itertools.chain(own, replayed)
        convert(
            frames,
            cache,
            *cutoffs,
            workers=config.convert_workers,
            progress=True,
            origin=origin,
            max_structures=limit,
        )
