"""Chunking of long series into sub-volumes of N slices along the slice (z) axis.

Seed 002 grouped long CT series into chunks of about 65 slices so that a 3D network
fits in memory. Each chunk is a valid :class:`Volume`: same spacing and direction, its
origin moved along the slice axis to the world position of its first slice, so chunk
voxel ``[k, y, x]`` is the same world point as source voxel ``[start + k, y, x]``.
:func:`join_chunks` is the inverse: it places chunks back on the source grid by their
world origin.

Chunks all have ``size`` slices (a series shorter than ``size`` gives one chunk, the whole
series): consecutive chunks start ``size - overlap`` slices apart, and the last chunk is
moved back to end at the last slice, so it may overlap its predecessor by more than
``overlap``. A short remainder chunk would be a poor training sample.

A dataset imported with ``--chunk`` records its chunks in dataset.json (``"chunks"``:
chunk case id -> ``{"case", "start", "stop"}``). :func:`stitch_chunk_files` uses that
record to turn per-chunk files (predictions named ``CASE_chunk000.nii.gz`` ..., or the
dataset's own ``labelsTr``) back into one file per scan, for per-scan evaluation
(``medseg dataset stitch``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.errors import ConfigError, GeometryError, InputError
from medseg.volume import Volume, VolumeGeometry

log = logging.getLogger(__name__)


def chunk_bounds(n_slices: int, size: int, overlap: int = 0) -> list[tuple[int, int]]:
    """``(start, stop)`` slice ranges (stop exclusive) covering ``n_slices`` slices."""
    if size < 1:
        raise ConfigError(f"chunk size must be at least 1 slice, found {size}")
    if not 0 <= overlap < size:
        raise ConfigError(f"chunk overlap must be in 0..{size - 1} for chunks of {size}, found {overlap}")
    if n_slices < 1:
        raise ConfigError(f"cannot chunk a series of {n_slices} slices")
    if n_slices <= size:
        return [(0, n_slices)]
    step = size - overlap
    starts = list(range(0, n_slices - size + 1, step))
    if starts[-1] + size < n_slices:
        starts.append(n_slices - size)
    return [(s, s + size) for s in starts]


def chunk_geometry(geometry: VolumeGeometry, start: int, stop: int) -> VolumeGeometry:
    """Grid of slices ``start:stop`` of ``geometry`` (origin = world centre of slice ``start``)."""
    if not 0 <= start < stop <= geometry.shape[0]:
        raise GeometryError(f"slice range {start}:{stop} is outside 0:{geometry.shape[0]}")
    origin = geometry.index_to_world([float(start), 0.0, 0.0])
    return VolumeGeometry((stop - start, *geometry.shape[1:]), geometry.spacing, origin, geometry.direction)


def chunk_volume(volume: Volume, size: int, overlap: int = 0) -> list[Volume]:
    """Split ``volume`` into sub-volumes of ``size`` slices (see the module docstring).

    A NIfTI input's two transforms, where they disagree (``meta[NIFTI_TRANSFORMS_KEY]``), are
    moved to each chunk's first slice, so that chunk files carry them and :func:`stitch_chunk_files`
    gives them back to the stitched scan."""
    from medseg.io.itk import NIFTI_TRANSFORMS_KEY, nifti_transforms_from_slice

    record = volume.meta.get(NIFTI_TRANSFORMS_KEY)
    if record and not VolumeGeometry.from_dict(record["grid"]).is_close(volume.geometry):
        record = None  # recorded for another grid: not this volume's transforms
    chunks = []
    for k, (start, stop) in enumerate(chunk_bounds(volume.shape[0], size, overlap)):
        geom = chunk_geometry(volume.geometry, start, stop)
        meta = dict(volume.meta, chunk=k, chunk_start=start, chunk_stop=stop)
        meta.pop(NIFTI_TRANSFORMS_KEY, None)
        if record:
            meta[NIFTI_TRANSFORMS_KEY] = nifti_transforms_from_slice(record, start, geom)
        chunks.append(Volume(volume.array[start:stop].copy(), geometry=geom, meta=meta))
    return chunks


def join_chunks(chunks: Sequence[Volume], reference: VolumeGeometry, fill: float = 0) -> Volume:
    """Inverse of :func:`chunk_volume`: place chunks back on the ``reference`` grid.

    Each chunk's position is found from its world origin, so chunks may come in any
    order. Where chunks overlap, a slice is taken from the chunk in which it lies farthest
    from a cut (a chunk end that is not an end of the scan): a prediction there had the
    most context on both sides. Ties go to the chunk that starts first, so the result does
    not depend on the order of ``chunks``. Slices no chunk covers get ``fill``. Raises
    :class:`GeometryError` when a chunk does not lie on whole slices of ``reference``.
    """
    if not chunks:
        raise GeometryError("join_chunks needs at least one chunk")
    n = reference.shape[0]
    placed: list[tuple[int, Volume]] = []
    for k, chunk in enumerate(chunks):
        g = chunk.geometry
        start_f = reference.world_to_index(np.asarray(g.origin))
        start = round(float(start_f[0]))
        inside = start >= 0 and start + g.shape[0] <= n
        on_grid = inside and np.allclose(start_f[1:], 0.0, atol=1e-3)
        if not on_grid or chunk_geometry(reference, start, start + g.shape[0]).differences(g):
            raise GeometryError(
                f"chunk {k} ({g}) does not lie on whole slices of the reference grid ({reference})"
            )
        placed.append((start, chunk))
    placed.sort(key=lambda item: item[0])
    out = np.full(reference.shape, fill, dtype=np.result_type(*(c.array.dtype for _, c in placed)))
    best = np.full(n, -1.0)  # depth of the slice in the chunk it was taken from
    z = np.arange(n, dtype=np.float64)
    for start, chunk in placed:
        stop = start + chunk.shape[0]
        zs = z[start:stop]
        from_start = zs - start if start > 0 else np.full_like(zs, np.inf)
        from_stop = stop - 1 - zs if stop < n else np.full_like(zs, np.inf)
        depth = np.minimum(from_start, from_stop)
        take = depth > best[start:stop]
        out[start:stop][take] = chunk.array[take]
        best[start:stop][take] = depth[take]
    return Volume(out, geometry=reference)


# ------------------------------------------------------------------------ stitching files
STITCH_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


@dataclass(frozen=True)
class ChunkRecord:
    """One chunk of a scan, as dataset.json records it."""

    chunk_id: str
    case: str
    start: int
    stop: int


def read_chunk_records(dataset: str | Path) -> dict[str, list[ChunkRecord]]:
    """The chunks of each scan of a dataset imported with ``--chunk``, in slice order.

    Raises :class:`InputError` when dataset.json records no chunks or a malformed one.
    """
    from medseg.data.dataset import CHUNKS_KEY, DATASET_JSON, read_descriptor

    root = Path(dataset)
    desc = read_descriptor(root)
    where = root / DATASET_JSON
    raw = desc.extra.get(CHUNKS_KEY)
    if not raw:
        raise InputError(
            where,
            "records no chunks",
            expected=f'a dataset imported with --chunk N (a "{CHUNKS_KEY}" entry)',
        )
    cases: dict[str, list[ChunkRecord]] = {}
    for chunk_id, entry in raw.items() if isinstance(raw, dict) else []:
        try:
            record = ChunkRecord(str(chunk_id), str(entry["case"]), int(entry["start"]), int(entry["stop"]))
        except (KeyError, TypeError, ValueError):
            raise InputError(
                where, f"chunk '{chunk_id}' is malformed", expected='{"case", "start", "stop"}'
            ) from None
        if not 0 <= record.start < record.stop:
            raise InputError(where, f"chunk '{chunk_id}' has slices {record.start}:{record.stop}")
        cases.setdefault(record.case, []).append(record)
    if not cases:
        raise InputError(where, f'"{CHUNKS_KEY}" is not a mapping of chunk ids')
    for records in cases.values():
        records.sort(key=lambda r: r.start)
    return cases


def _scan_grid(root: Path, records: Sequence[ChunkRecord], file_ending: str) -> VolumeGeometry:
    """The scan's grid: the header of its first chunk's image, extended to all its slices.

    The first chunk starts at slice 0, so its origin, spacing and direction are the scan's.
    """
    from medseg.data.dataset import image_file_name
    from medseg.io.itk import read_geometry

    first = records[0]
    if first.start != 0:
        raise InputError(root, f"scan '{first.case}' has no chunk starting at slice 0 in dataset.json")
    name = image_file_name(first.chunk_id, 0, file_ending)
    for subset in ("Tr", "Ts"):
        path = root / f"images{subset}" / name
        if path.is_file():
            g = read_geometry(path)
            n = max(r.stop for r in records)
            return VolumeGeometry((n, *g.shape[1:]), g.spacing, g.origin, g.direction)
    raise InputError(
        root / "imagesTr", f"no image of chunk '{first.chunk_id}'", expected=f"{name} (or in imagesTs)"
    )


def stitch_chunk_files(
    dataset: str | Path,
    folder: str | Path,
    out: str | Path,
    *,
    overwrite: bool = False,
) -> list[Path]:
    """Stitch per-chunk files of ``folder`` into one file per scan in ``out``, atomically.

    ``folder`` holds files named after chunk case ids (``CASE_chunk000.nii.gz``: what
    ``medseg predict`` writes for the dataset's images, or the dataset's ``labelsTr``);
    ``out`` gets ``CASE.nii.gz`` (same suffix) on the scan's grid: the first chunk's
    image header in ``dataset`` with all the scan's slices, so each output lies voxel for
    voxel on the scan that was chunked. Overlaps are resolved by :func:`join_chunks`. A
    scan with no file in ``folder`` is skipped (e.g. test scans in a labelsTr folder); one
    with some but not all of its chunks raises :class:`InputError` naming the missing ones,
    as does a file off its chunk's grid (:class:`GeometryError`).
    """
    from medseg.data.dataset import read_descriptor
    from medseg.io.atomic import atomic_dir
    from medseg.io.itk import read_itk, write_itk

    root, source, target = Path(dataset), Path(folder), Path(out)
    if not source.is_dir():
        raise InputError(
            source, "is not a folder", expected="a folder of per-chunk files (CASE_chunk000.nii.gz)"
        )
    src_r, dst_r = source.resolve(), target.resolve()
    if dst_r == src_r or dst_r in src_r.parents or src_r in dst_r.parents or dst_r in root.resolve().parents:
        raise ConfigError(f"{target}: the output folder must lie outside {source} and not hold the dataset")
    if dst_r == root.resolve():
        raise ConfigError(f"{target}: the output folder must not be the dataset folder")
    ending = read_descriptor(root).file_ending
    cases = read_chunk_records(root)
    known = {r.chunk_id for records in cases.values() for r in records}
    present = {
        f.name[: -len(sfx)]: sfx
        for f in sorted(source.iterdir())
        for sfx in STITCH_SUFFIXES
        if f.is_file() and f.name.endswith(sfx) and not f.name.startswith(".")
    }
    unknown = sorted(set(present) - known)
    if unknown:
        log.info("%s: %d files are not chunks of %s and were left out", source, len(unknown), root)
    jobs: list[tuple[str, list[tuple[ChunkRecord, Path]], str]] = []
    for case, records in sorted(cases.items()):
        found = [(r, source / f"{r.chunk_id}{present[r.chunk_id]}") for r in records if r.chunk_id in present]
        if not found:
            continue
        missing = [r.chunk_id for r in records if r.chunk_id not in present]
        if missing:
            raise InputError(
                source,
                f"scan '{case}' is incomplete",
                expected=f"all its {len(records)} chunks",
                found=f"no file for {', '.join(missing)}",
            )
        suffixes = {p.name[len(r.chunk_id) :] for r, p in found}
        if len(suffixes) > 1:
            raise InputError(
                source,
                f"the chunks of scan '{case}' have different formats",
                found=", ".join(sorted(suffixes)),
            )
        jobs.append((case, found, suffixes.pop()))
    if not jobs:
        raise InputError(
            source,
            "holds no chunk files of this dataset",
            expected=f"files such as {next(iter(sorted(known)))}.nii.gz",
        )
    written = []
    with atomic_dir(target, overwrite=overwrite) as tmp:
        for case, found, sfx in jobs:
            grid = _scan_grid(root, [r for r, _ in found], ending)
            chunks = []
            for record, path in found:
                chunk = read_itk(path)
                if chunk.shape[0] != record.stop - record.start:
                    raise InputError(
                        path,
                        "does not have its chunk's slices",
                        expected=f"{record.stop - record.start} slices ({record.start}:{record.stop} of '{case}')",
                        found=f"{chunk.shape[0]}",
                    )
                chunks.append(chunk)
            try:
                joined = join_chunks(chunks, grid)
            except GeometryError as exc:
                raise GeometryError(f"{source}: scan '{case}': {exc}") from None
            write_itk(_with_first_chunk_transforms(joined, chunks[0]), tmp / f"{case}{sfx}")
            written.append(target / f"{case}{sfx}")
    log.info("stitched %d scans from %s into %s", len(written), source, target)
    return written


def _with_first_chunk_transforms(joined: Volume, first: Volume) -> Volume:
    """``joined`` with the qform and sform of its first chunk's NIfTI (slice 0 of the scan),
    where they disagree and that chunk lies on the scan's grid: a NIfTI output then carries
    both, as every other NIfTI medseg writes on its input's grid does."""
    from medseg.io.itk import NIFTI_TRANSFORMS_KEY, nifti_transforms_from_slice

    record = first.meta.get(NIFTI_TRANSFORMS_KEY)
    own = chunk_geometry(joined.geometry, 0, first.shape[0])
    if (
        not record
        or not VolumeGeometry.from_dict(record["grid"]).is_close(own)
        or own.differences(first.geometry)
    ):
        return joined
    meta = {**joined.meta, NIFTI_TRANSFORMS_KEY: nifti_transforms_from_slice(record, 0, joined.geometry)}
    return Volume(joined.array, geometry=joined.geometry, meta=meta)
