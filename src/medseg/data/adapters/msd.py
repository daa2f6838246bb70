"""Medical Segmentation Decathlon task folders -> the dataset format.

An MSD task (``Task05_Prostate``, ``Task04_Hippocampus`` ...) holds ``dataset.json``
(``"modality": {"0": "T2", "1": "ADC"}``, ``"labels": {"0": "background", ...}``),
``imagesTr/NAME.nii.gz`` (several channels stored as one 4D NIfTI), ``labelsTr/NAME.nii.gz``
and ``imagesTs/``. The 4D images are split into one file per channel (``NAME_0000``,
``NAME_0001``). MSD archives carry macOS ``._NAME.nii.gz`` resource forks: they are left out
and listed in the output's dataset.json. Folders without dataset.json (copies of just the
images) need ``labels`` and, for clarity, ``channel_names``.

Each MSD case is its own patient (the MSD publishes no patient ids); the case name, which
is the MSD's own numbering, is used as the group id.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from medseg.data.check import require_finite
from medseg.data.dataset import (
    DATASET_JSON,
    DatasetDescriptor,
    create_dataset,
    import_each,
    read_descriptor,
    source_files,
)
from medseg.errors import InputError
from medseg.io.itk import read_channels, read_itk
from medseg.volume import Volume

logger = logging.getLogger(__name__)

_ENDINGS = (".nii.gz", ".nii")


def _stem(path: Path) -> str:
    name = path.name
    for e in _ENDINGS:
        if name.lower().endswith(e):
            return name[: -len(e)]
    return path.stem


def _read_image(path: Path) -> list[Volume]:
    channels = read_channels(path)
    for channel in channels:
        require_finite(path, channel.array)  # the error names the file, not a channel of a case
    return channels


def _read_label(path: Path) -> Volume:
    label = read_itk(path)
    require_finite(path, label.array)
    return label


def _read_msd_json(source: Path) -> DatasetDescriptor | None:
    return read_descriptor(source) if (source / DATASET_JSON).is_file() else None


def import_msd(
    source: str | Path,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    labels: Mapping[str, int] | None = None,
    channel_names: Sequence[str] | None = None,
    cases: Sequence[str] | None = None,
    include_test: bool = True,
    chunk: int | None = None,
    chunk_overlap: int = 0,
    skip_invalid: bool = False,
    progress: bool = True,
) -> Path:
    """Convert an MSD task folder at ``source`` into a dataset at ``out_dir``.

    ``labels`` / ``channel_names`` override (or, without dataset.json, supply) the task's
    declarations. ``cases`` restricts the import to these case names (e.g. for a quick
    test). Raises :class:`InputError` naming the file for a missing label, an image
    without the declared channels, undeclared label values, a corrupt file or an
    empty folder; :class:`GeometryError` when image and label grids differ.
    """
    src = Path(source)
    if not src.is_dir():
        raise InputError(src, "is not a folder", expected="an MSD task folder with imagesTr/ and labelsTr/")
    desc = _read_msd_json(src)
    if labels is None:
        if desc is None:
            raise InputError(
                src / DATASET_JSON,
                "not found, so the labels are unknown",
                expected="labels given explicitly (--labels background=0,anterior=1,posterior=2)",
            )
        labels = desc.labels
    images_tr = src / "imagesTr"
    if not images_tr.is_dir():
        raise InputError(images_tr, "not found", expected="an MSD task folder with imagesTr/ and labelsTr/")
    if channel_names is None:
        if desc is not None:
            channel_names = desc.modalities
        else:
            first = next((f for f in sorted(images_tr.iterdir()) if not f.name.startswith(".")), None)
            n = len(read_channels(first)) if first is not None else 1
            channel_names = [f"channel{i}" for i in range(n)]
            logger.warning("no dataset.json in %s: channels named %s", src, channel_names)
    wanted = set(cases) if cases is not None else None
    name = desc.name if desc and desc.name else src.name

    with create_dataset(
        out_dir,
        source=src,
        overwrite=overwrite,
        channel_names=channel_names,
        labels=labels,
        name=name,
        description=(desc.description if desc else "") or f"imported from MSD task {src.name}",
        source_kind="msd",
        chunk=chunk,
        chunk_overlap=chunk_overlap,
    ) as writer:
        images = source_files(images_tr, _ENDINGS, writer)
        labels_dir = src / "labelsTr"
        label_files = source_files(labels_dir, _ENDINGS, writer) if labels_dir.is_dir() else []
        by_stem = {_stem(f): f for f in label_files}
        image_stems = {_stem(f) for f in images}
        if wanted is not None:
            unknown = sorted(wanted - image_stems)
            if unknown:
                raise InputError(images_tr, "requested cases not found", found=str(unknown[:5]))
            images = [f for f in images if _stem(f) in wanted]
        elif not images:
            raise InputError(images_tr, "holds no images", expected="NAME.nii.gz files")
        orphans = [f for s, f in by_stem.items() if s not in image_stems]
        for f in orphans:
            if not skip_invalid:
                raise InputError(f, "label has no image", expected=f"imagesTr/{f.name}")
            writer.skip(f, "label has no image")

        def add_train(image: Path) -> None:
            stem = _stem(image)
            label_path = by_stem.get(stem)
            if label_path is None:
                raise InputError(labels_dir / image.name, f"label file missing for image {image}")
            writer.add_case(
                stem,
                _read_image(image),
                _read_label(label_path),
                patient_id=stem,
                source=image,
                label_source=label_path,
            )

        import_each(
            writer,
            images,
            add_train,
            describe=lambda f: f,
            skip_invalid=skip_invalid,
            progress=progress,
            description="MSD training cases",
        )
        images_ts = src / "imagesTs"
        if include_test and images_ts.is_dir():
            tests = source_files(images_ts, _ENDINGS, writer)
            if wanted is not None:
                tests = [f for f in tests if _stem(f) in wanted]

            def add_test(image: Path) -> None:
                writer.add_case(_stem(image), _read_image(image), None, test=True, source=image)

            import_each(
                writer,
                tests,
                add_test,
                describe=lambda f: f,
                skip_invalid=skip_invalid,
                progress=progress,
                description="MSD test cases",
            )
    return Path(out_dir)
