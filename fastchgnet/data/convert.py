"""``convert``: frames -> graph cache (see ``cache.py`` for the layout), in parallel, resumable.

Shard ``k`` holds source frames ``k * shard_size`` to ``(k + 1) * shard_size``. A shard is built
in a ``.tmp-`` folder, each file fsynced, then renamed into place, so a shard folder exists only
once complete. A rerun with the same settings keeps every full shard whose files match its
shard.json checksums (reading past its frames without building graphs), deletes stale
``.tmp-shard-`` folders, and rebuilds the rest (the last, partial shard is always rebuilt); it
removes no name it does not write itself (``shards.converter_paths``). The same settings
include the frames' ``origin`` (``data.origin``: the source file and its label settings)
where known: a rerun from another source or with other labels is refused once a shard is
complete (a folder with none, e.g. after a wrong label key, takes the new settings). Frames
without an origin (``from_structures``, a reader's bare generator) are told by the fingerprint
of each shard's frames (``shards.FramesFingerprint``): a shard of other frames is refused. One
conversion at a time fills a folder (``folder_lock``); an unreadable shard.json is a shard to
rebuild, an unreadable settings.json a one-line error naming it.
With ``max_structures`` conversion stops reading the source once that many structures are kept.
settings.json is written just before the first shard is renamed into place (or at the end):
a conversion that fails before a shard is finished (a source with no readable frame) writes
nothing, and the folder it made is removed again.

Memory: the main process holds one material's frames (the reader streams) and one window of
``workers * 64`` frames in flight, never a whole shard; finished structures are appended to
the shard's part files, so memory does not grow with shard or source size.

Over 300 lines on purpose: the resumable, sharded, checksummed conversion and its
workers are one procedure.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fastchgnet.data.cache import (
    FORMAT_VERSION,
    LABELS,
    CacheError,
    read_json_record,
    remove_tree,
    shard_name,
)
from fastchgnet.data.coverage import coverage_report
from fastchgnet.data.folder_lock import folder_lock
from fastchgnet.data.frame import Frame, check_frame
from fastchgnet.data.graph import CrystalGraph, build_graph
from fastchgnet.data.interrupt import closing
from fastchgnet.data.origin import as_json, describe_change
from fastchgnet.data.shards import (
    SHARD,
    TMP_SHARD,
    FramesFingerprint,
    ShardWriter,
    converter_paths,
    shard_is_done,
)
from fastchgnet.data.unit_check import UNIT_RECORD, LabelTally, refuse_wrong_units
from fastchgnet.errors import StructureError
from fastchgnet.files import file_sha256, fsync_dir, write_json_atomic
from fastchgnet.signals import quiet_child, stop_signals

#: The file a conversion holds locked in its cache folder (``folder_lock``)
LOCK_FILE = ".convert.lock"
#: Frames handed to each worker per task.
TASK_FRAMES = 16


@dataclass(frozen=True)
class ConvertSummary:
    """What ``convert`` did: structures kept, frames skipped, shards built or kept, seconds."""

    n_structures: int
    n_skipped: int
    shards_built: int
    shards_kept: int
    seconds: float

    @property
    def structures_per_second(self) -> float:
        return self.n_structures / self.seconds if self.seconds > 0 else 0.0


def frame_graph(frame: Frame, atom_cutoff: float, bond_cutoff: float) -> CrystalGraph:
    """The crystal graph conversion stores for ``frame`` (cutoffs in Å), after every check
    conversion makes: ``check_frame``, ``build_graph``'s (isolated or overlapping atoms, ...)
    and periodic image indices that fit the cache's int16.

    Raises:
        StructureError: naming the frame and the problem (conversion skips and lists it).
    """
    check_frame(frame)
    graph = build_graph(frame.structure, atom_cutoff, bond_cutoff, name=frame.name)
    if np.abs(graph.bond_images).max(initial=0) > np.iinfo(np.int16).max:
        raise StructureError(frame.name, "periodic image index too large")
    return graph


def graph_record(frame: Frame, atom_cutoff: float, bond_cutoff: float) -> dict:
    """Arrays of one frame's graph and labels, or ``{"skip": reason}`` for a bad frame."""
    try:
        graph = frame_graph(frame, atom_cutoff, bond_cutoff)
    except StructureError as error:
        return {"skip": error.problem, "material_id": frame.material_id, "frame_id": frame.frame_id}
    n_atoms = graph.n_atoms
    labels = {name: getattr(frame, name) for name in LABELS}
    fill = {"energy_per_atom": (), "forces": (n_atoms, 3), "stress": (3, 3), "magmoms": (n_atoms,)}
    record = {
        "atomic_numbers": graph.atomic_numbers,
        "frac_coords": graph.frac_coords,
        "lattice": graph.lattice[None],
        "bond_atoms": graph.bond_atoms,
        "bond_images": graph.bond_images,
        "angle_edges": graph.angle_edges,
        "sizes": np.array([[n_atoms, graph.n_bonds, graph.n_angles]]),
        "short_bonds": np.array([graph.n_short_bonds]),
        "label_mask": np.array([[labels[name] is not None for name in LABELS]]),
        "material_ids": frame.material_id,
        "frame_ids": frame.frame_id,
    }
    for name in LABELS:
        value = labels[name]
        value = np.full(fill[name], np.nan) if value is None else np.asarray(value, np.float64)
        record[name] = value[None] if name in ("energy_per_atom", "stress") else value
    return record


def _records(task: tuple[list[Frame], float, float]) -> list[dict]:
    frames, atom_cutoff, bond_cutoff = task
    return [graph_record(frame, atom_cutoff, bond_cutoff) for frame in frames]


def _build_shard(
    frames: Iterator[Frame],
    tmp_dir: Path,
    final: Path,
    info: dict,
    pool: object,
    bar: tqdm,
    wanted: int | None,
    publish: Callable[[], None],
) -> int:
    """Build one shard from ``frames`` in ``tmp_dir``, call ``publish`` (it writes the
    cache's settings.json), rename the shard to ``final``; return the number of frames read
    (0: nothing written). With ``wanted``, reading stops once that many
    structures are kept. If reading or building fails, ``tmp_dir`` is
    removed and the error raised: the cache has no manifest, so nothing trusts it, and a
    rerun keeps the shards that were finished."""
    writer = ShardWriter(tmp_dir)
    try:
        return _fill_shard(frames, writer, final, info, pool, bar, wanted, publish)
    except BaseException:  # a source that breaks off mid-shard: no half-built shard is left
        writer.close()
        remove_tree(tmp_dir)
        raise


def _fill_shard(
    frames: Iterator[Frame],
    writer: ShardWriter,
    final: Path,
    info: dict,
    pool: object,
    bar: tqdm,
    wanted: int | None,
    publish: Callable[[], None],
) -> int:
    tmp_dir = writer.dir
    skipped, kept, n_frames = [], 0, 0
    fingerprint, tally = FramesFingerprint(), LabelTally()  # tally: unit_check's counts
    cutoffs = (info["atom_cutoff"], info["bond_cutoff"])
    window = TASK_FRAMES * max(1, getattr(pool, "_processes", 1)) * 4

    def size() -> int:  # a frame gives at most one structure: read no more than still wanted
        return window if wanted is None else min(window, wanted - kept)

    while part := list(itertools.islice(frames, size())):
        tasks = [(part[i : i + TASK_FRAMES], *cutoffs) for i in range(0, len(part), TASK_FRAMES)]
        results = pool.map(_records, tasks) if pool is not None else map(_records, tasks)
        for record in itertools.chain.from_iterable(results):
            if "skip" in record:
                ids = {key: record[key] for key in ("material_id", "frame_id")}
                skipped.append({**ids, "reason": record["skip"]})
            else:
                writer.add(record)
                kept += 1
        for frame in part:
            fingerprint.add(frame)
            tally.add(frame)
        n_frames += len(part)
        bar.update(len(part))
    if n_frames == 0:
        writer.close()
        remove_tree(tmp_dir)
        return 0
    writer.finish({**info, "n_frames": n_frames, "n_structures": kept, "skipped": skipped,
                   "frames_sha256": fingerprint.hexdigest(),
                   UNIT_RECORD: tally.record()})  # fmt: skip
    publish()
    os.rename(tmp_dir, final)
    fsync_dir(final.parent)
    return n_frames


def _read_past(frames: Iterator[Frame], shard: Path, size: int, check: bool) -> None:
    """Read past the ``size`` frames of the finished ``shard``. Where ``check`` (the source
    has no ``origin`` to tell it by), they must be the frames it was built from."""
    fingerprint, n_read = FramesFingerprint(), 0
    for frame in frames:
        if check:
            fingerprint.add(frame)
        n_read += 1
    if n_read != size:
        raise CacheError(
            f"{shard.parent}: the source now ends inside {shard.name}, which holds a full "
            "shard; convert into a new folder"
        )
    recorded = json.loads((shard / "shard.json").read_text()).get("frames_sha256")
    if check and recorded != fingerprint.hexdigest():
        raise CacheError(
            f"{shard} was built from other frames than these (another data set?); convert "
            "into another folder, or delete it"
        )


def convert(
    frames: Iterable[Frame],
    out_dir: str | Path,
    atom_cutoff: float = 6.0,
    bond_cutoff: float = 3.0,
    workers: int = 2,
    shard_size: int = 4096,
    *,
    progress: bool = True,
    origin: dict | None = None,
    max_structures: int = 0,
) -> ConvertSummary:
    """Build the graphs of ``frames`` into a sharded cache at ``out_dir`` (resumable).

    Args:
        frames: any iterable of ``Frame`` (a ``sources`` reader).
        out_dir: cache folder; created, or resumed when it holds a cache with the same settings.
        atom_cutoff, bond_cutoff: graph cutoffs, Å.
        workers: graph-building processes (``<= 1``: in this process).
        shard_size: source frames per shard.
        progress: show a tqdm bar and print the summary line.
        origin: what the frames were read from (``data.origin``), recorded in settings.json and
            manifest.json; default ``frames.origin`` where ``frames`` has one
            (``sources.read_frames``' ``SourceFrames``).
        max_structures: > 0: stop reading once that many structures are kept (the cache then
            holds at least the first ``max_structures`` structures of the source, and its
            manifest says so; 0 when the source ended first).

    ``frames`` are closed (``close()``, where they have one) when conversion ends or fails, so
    a reader's temporary files go at once; SIGTERM stops conversion as SystemExit(143) does
    (where no handler was set: ``signals.stop_signals``), so they go then too.

    Returns:
        A ``ConvertSummary``. Rejected frames are listed in ``out_dir/skipped.json``.

    Raises:
        ValueError: ``shard_size`` below 1, or from the source (a file that breaks off): the
            cache is then left without manifest.json (unfinished; finished shards are kept).
            With no shard finished, nothing is written: a folder this call made is removed,
            one that existed (a user's, a cache being extended) is left with what it held. A
            source whose labels point at a wrong unit (``unit_check``): its shards removed.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size {shard_size}: must be at least 1 source frame per shard")
    if max_structures < 0:
        raise ValueError(f"max_structures {max_structures}: must be 0 (all) or more")
    out = Path(out_dir)
    with closing(frames), stop_signals():
        if out.exists() and not out.is_dir():
            raise ValueError(f"{out}: is a file; a graph cache is a folder, name another")
        refusal = f"{out}: a conversion is going on there ({{holder}}); wait for it to end, " \
                  "or convert into another folder"  # fmt: skip
        with folder_lock(out, LOCK_FILE, refusal, keep_empty=False):  # made, failed: removed
            origin = getattr(frames, "origin", None) if origin is None else origin
            cutoffs = (atom_cutoff, bond_cutoff)
            return _convert(iter(frames), out, cutoffs, workers, shard_size, progress, origin,
                            max_structures)  # fmt: skip


def _convert(
    frames: Iterator[Frame],
    out: Path,
    cutoffs: tuple[float, float],
    workers: int,
    shard_size: int,
    progress: bool,
    origin: dict | None,
    max_structures: int,
) -> ConvertSummary:
    atom_cutoff, bond_cutoff = cutoffs
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        "format": FORMAT_VERSION,
        "atom_cutoff": float(atom_cutoff),
        "bond_cutoff": float(bond_cutoff),
        "shard_size": int(shard_size),
    }
    if origin is not None:
        settings["origin"] = as_json(origin)
    settings_path = out / "settings.json"
    finished = [p for p in converter_paths(out, SHARD) if (p / "shard.json").is_file()]
    redo = "delete it and rerun (shards built with the same settings are kept), or convert "
    redo += "into another folder"
    # none built: the folder takes the new settings, whatever an old settings.json holds
    old = finished and settings_path.exists()
    built = read_json_record(settings_path, redo) if old else settings
    if built != settings and finished:
        raise CacheError(
            f"{out} was built with settings other than asked ({describe_change(built, settings)})"
            "; use another folder or delete it"
        )

    published = False

    def publish() -> None:  # before the first shard is in place, after there is one to keep
        nonlocal published
        if not published:  # once: every later shard and the end find it written
            write_json_atomic(settings_path, settings)
            published = True

    if finished:
        publish()
    remove_tree(out / "manifest.json")
    for stale in converter_paths(out, TMP_SHARD):  # a killed conversion's (the lock is ours)
        remove_tree(stale)

    pool = multiprocessing.get_context("fork").Pool(workers, quiet_child) if workers > 1 else None
    shards, skipped, built, kept, held, tally = [], [], 0, 0, 0, LabelTally()
    stopped = False  # at max_structures, before the source's end
    bar = tqdm(desc=f"convert -> {out.name}", unit="frame", disable=not progress)
    try:
        for k in itertools.count():
            info = {**settings, "shard": k, "first_frame": k * shard_size}
            final = out / shard_name(k)
            stream = itertools.islice(frames, shard_size)
            if shard_is_done(final, {**info, "n_frames": shard_size}):
                _read_past(stream, final, shard_size, check=origin is None)
                kept += 1
                bar.update(shard_size)
            else:
                remove_tree(final)
                wanted = max_structures - held if max_structures > 0 else None
                tmp = out / f".tmp-{final.name}"
                if not _build_shard(stream, tmp, final, info, pool, bar, wanted, publish):
                    break
                built += 1
            meta = json.loads((final / "shard.json").read_text())
            hashes = {**meta["sha256"], "shard.json": file_sha256(final / "shard.json")}
            shards.append(
                {"name": final.name, "n_structures": meta["n_structures"], "sha256": hashes}
            )
            skipped.extend(meta["skipped"])
            tally.merge(meta.get(UNIT_RECORD))
            held += meta["n_structures"]
            stopped = 0 < max_structures <= held
            if meta["n_frames"] < shard_size or stopped:
                break
    except BaseException:
        if pool is not None:
            pool.terminate()  # a worker may be gone (signal): do not wait on its task
        raise
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    # stale shards beyond the source's end (a shorter source than last time) are removed
    names = {shard["name"] for shard in shards}
    for extra in converter_paths(out, SHARD):
        if extra.name not in names:
            remove_tree(extra)
    refuse_wrong_units(tally, origin, out)  # a wrong unit: ValueError, the shards removed
    publish()
    write_json_atomic(out / "skipped.json", skipped)
    n_structures = sum(s["n_structures"] for s in shards)
    limit = max_structures if stopped else 0  # 0: the cache holds the whole source
    manifest = {**settings, "n_structures": n_structures, "max_structures": limit}
    write_json_atomic(out / "manifest.json", {**manifest, "shards": shards})
    summary = ConvertSummary(n_structures, len(skipped), built, kept, time.perf_counter() - start)
    if progress:
        print(
            f"converted {n_structures} structures into {len(shards)} shards ({built} built, "
            f"{kept} kept) at {summary.structures_per_second:.0f} structures/s; skipped "
            f"{len(skipped)} frame(s), listed with reasons in {out / 'skipped.json'}"
        )
        print("\n".join(coverage_report(out)))
    return summary
