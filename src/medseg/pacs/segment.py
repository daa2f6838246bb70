"""Segment a series straight from the PACS: pull -> predict -> export -> push back.

:func:`segment_study` is built around an injectable ``segment_fn(series_folder,
out_folder) -> files`` that turns the pulled series into DICOM objects (SEG, RTSTRUCT,
...) referencing it. The default, :func:`model_segment_fn`, runs medseg's predictor
with a model folder; tests inject a simple thresholding function.

A series of another modality than the model's (a CT model and an MR series, or the
reverse) is refused before anything is pulled: its labels would mean nothing, and pushing
them into a clinical PACS is worse than not segmenting (``allow_modality_mismatch``
overrides). :func:`model_segment_fn` says which modality its model expects.

Nothing is pushed unless ``segment_fn`` returned normally and every file it returned
is a readable DICOM object of the same study that is not one of the source instances,
and every SEG / RTSTRUCT references the source series. Results are then posted to
``/studies/{StudyInstanceUID}`` so the server itself refuses anything of another study.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from medseg.errors import InputError, MedsegError, OutputExistsError
from medseg.pacs.client import PacsClient, PacsError, PacsNotFoundError, read_header
from medseg.pacs.query import NON_IMAGE_MODALITIES, SeriesRecord, check_uid, find_series, query_series
from medseg.pacs.transfer import PullResult, PushResult, pull_series, push_files

__all__ = [
    "ModelSegmentFn",
    "SegmentFn",
    "SegmentResult",
    "StudyOutcome",
    "check_modality",
    "check_outputs",
    "choose_series",
    "model_segment_fn",
    "read_study_list",
    "segment_studies",
    "segment_study",
]

log = logging.getLogger(__name__)

SegmentFn = Callable[[Path, Path], Sequence[Path]]
"""``segment_fn(series_folder, out_folder) -> files to push`` (written under ``out_folder``)."""

_REFERENCING = {"SEG", "RTSTRUCT"}


@dataclass
class SegmentResult:
    study_uid: str
    series: SeriesRecord
    pulled: PullResult
    outputs: list[Path]
    pushed: PushResult
    work_dir: Path | None = field(default=None)  # None when a temporary folder was used and removed


def choose_series(
    client: PacsClient,
    study_uid: str,
    *,
    series_uid: str | None = None,
    description: str | None = None,
) -> SeriesRecord:
    """The image series to segment: the one named, or the only image series matching ``description``.

    ``description`` is a case-insensitive glob (``t2*tra*``) or an exact description; with
    ``@last`` (``@first``) after it, the latest (earliest) of several matching series, by
    SeriesDate/SeriesTime when the server gives them for each, else by SeriesNumber.
    None or several candidates raise :class:`PacsError` listing them (number,
    description, modality, count and UID; no patient data).
    """
    study = check_uid(study_uid, "--study")
    if series_uid:
        record = find_series(client, series_uid, study)
        if record.modality.upper() in NON_IMAGE_MODALITIES:
            raise PacsError(
                f"series {record.summary()} is a {record.modality}, not an image series to segment"
            )
        return record
    series = query_series(client, study_uid=study)
    if not series:
        raise PacsNotFoundError(f"{client.server}: study {study} not found (or it has no series)")
    every = images = [s for s in series if s.modality.upper() not in NON_IMAGE_MODALITIES]
    rule = ""
    if description:
        base, sep, tail = description.rpartition("@")
        if sep and tail.lower() in ("last", "first"):
            description, rule = base, tail.lower()
        pattern = description.lower()
        images = [s for s in images if fnmatch.fnmatchcase(s.description.lower(), pattern)]
    if len(images) > 1 and rule:
        # as `medseg predict --series '...@last'`: by SeriesDate/SeriesTime when every
        # candidate has them, else by SeriesNumber
        by_time = all(s.acquired for s in images)
        if by_time or all(s.number is not None for s in images):
            ordered = sorted(images, key=lambda s: (s.acquired, 0) if by_time else ("", s.number or 0))
            return ordered[-1] if rule == "last" else ordered[0]
    if len(images) == 1:
        return images[0]
    # none matching: list the study's image series, whose descriptions the user can then give
    listing = "; ".join(s.summary() for s in (images or every)) or "none"
    what = f"matching --description {description!r}" if description else "in the study"
    raise PacsError(
        f"{'no' if not images else len(images)} image series {what}; choose one with --series UID"
        f"{'' if description else ' or --description'}"
        f"{' (or add @last or @first to the description: the latest or earliest acquired)' if description and len(images) > 1 else ''}. "
        + ("Image series of the study" if description and not images else "Series")
        + f": {listing}"
    )


def _referenced_series(ds: Dataset) -> set[str]:
    """Every SeriesInstanceUID named inside the dataset's sequences (SEG, RTSTRUCT, SR ...)."""
    found: set[str] = set()
    for element in ds:
        if element.VR == "SQ":
            for child in element.value:
                uid = child.get("SeriesInstanceUID")
                if uid:
                    found.add(str(uid))
                found |= _referenced_series(child)
    return found


def _warn_of_earlier_results(client: PacsClient, record: SeriesRecord) -> None:
    """One warning when the study already holds SEG / RTSTRUCT series referencing the series
    (an earlier run): each run pushes new objects beside them, and a cohort run twice would
    leave every study with two segmentations that a viewer shows side by side."""
    earlier = []
    try:
        for other in query_series(client, study_uid=record.study_uid):
            if other.modality.upper() not in _REFERENCING:
                continue
            headers = client.retrieve_series_metadata(
                record.study_uid, other.series_uid, what="looking for earlier results of the series"
            )
            if any(record.series_uid in _referenced_series(ds) for ds in headers):
                earlier.append(other)
    except PacsError as exc:  # a server without WADO-RS metadata: only this check is lost
        log.warning("could not look for earlier results of the series: %s", exc)
        return
    if earlier:
        log.warning(
            "the study already holds %d %s series referencing series %s (an earlier run?): %s; this run "
            "pushes new ones beside them (delete the old ones in the PACS if they are not wanted)",
            len(earlier),
            "/".join(sorted({e.modality for e in earlier})),
            record.series_uid,
            "; ".join(f"{e.modality} '{e.description}' {e.series_uid}" for e in earlier[:5])
            + (" ..." if len(earlier) > 5 else ""),
        )


def check_modality(
    record: SeriesRecord, expected: tuple[str, str] | None, *, model: str, allow: bool = False
) -> None:
    """Refuse (PacsError) a series whose modality is not the one the model was trained on.

    ``expected`` is (modality, why it is known), e.g. from :func:`model_segment_fn`; None (a
    model whose channel names say nothing) and a series without a Modality are not checked.
    ``allow`` turns the refusal into a warning.
    """
    if expected is None:
        log.info("the model's modality is not known (plan channel names); series modality not checked")
        return
    modality, why = expected
    found = record.modality.strip().upper()
    if not found or found == modality:
        return
    what = (
        f"series {record.summary()} is {found}, but the model {model} expects {modality} ({why}); "
        "its labels would be meaningless"
    )
    if allow:
        log.warning("%s: segmenting it anyway (--allow-modality-mismatch)", what)
        return
    raise PacsError(
        f"{what}. Refused before pulling: nothing was pulled or pushed. Choose a {modality} series "
        "(--series / --description) or a model trained on "
        f"{found}, or pass --allow-modality-mismatch to segment and push it anyway"
    )


def check_outputs(
    files: Sequence[Path], *, study_uid: str, source_series_uid: str, source_sops: set[str]
) -> list[Path]:
    """Refuse (PacsError) anything that must not be pushed to the source study."""
    if not files:
        raise PacsError("the segmentation produced no files; nothing was pushed")
    checked = []
    for entry in files:
        path = Path(entry)
        if not path.is_file():
            raise PacsError(
                f"{path}: the segmentation reported this file but it does not exist; nothing was pushed"
            )
        ds = read_header(path)
        problem = ""
        if str(ds.get("StudyInstanceUID", "")) != study_uid:
            problem = "it belongs to another study"
        elif (
            str(ds.get("SeriesInstanceUID", "")) == source_series_uid
            or str(ds.get("SOPInstanceUID", "")) in source_sops
        ):
            problem = "it is an instance of the source series itself"
        elif str(
            ds.get("Modality", "")
        ).upper() in _REFERENCING and source_series_uid not in _referenced_series(ds):
            problem = f"this {ds.get('Modality')} does not reference the source series {source_series_uid}"
        if problem:
            raise PacsError(f"{path}: refusing to push it: {problem}; nothing was pushed")
        checked.append(path)
    return checked


def segment_study(
    client: PacsClient,
    study_uid: str,
    segment_fn: SegmentFn,
    *,
    series_uid: str | None = None,
    description: str | None = None,
    work_dir: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = False,
    allow_modality_mismatch: bool = False,
) -> SegmentResult:
    """Pull one series of ``study_uid``, run ``segment_fn`` on it and push its files back.

    ``work_dir`` keeps ``series/`` (the pulled images; a re-run resumes the pull) and
    ``results/`` (what ``segment_fn`` wrote; refused if it exists unless ``overwrite``).
    Without it a temporary folder is used and removed afterwards. A ``segment_fn`` with an
    ``expected_modality`` (a :class:`ModelSegmentFn`) has the series' modality checked
    first (:func:`check_modality`; ``allow_modality_mismatch`` overrides).
    """
    record = choose_series(client, study_uid, series_uid=series_uid, description=description)
    if isinstance(segment_fn, ModelSegmentFn):
        check_modality(
            record, segment_fn.expected_modality, model=str(segment_fn.model), allow=allow_modality_mismatch
        )
    log.info("segmenting series %s", record.summary())
    _warn_of_earlier_results(client, record)
    temporary = work_dir is None
    work = Path(tempfile.mkdtemp(prefix="medseg-pacs-")) if temporary else Path(str(work_dir))
    try:
        results = work / "results"
        if results.exists() and any(results.iterdir()):
            if not overwrite:
                raise OutputExistsError(results)
            shutil.rmtree(results)
        pulled = pull_series(
            client, record.series_uid, work / "series", study_uid=record.study_uid, progress=progress
        )
        results.mkdir(parents=True, exist_ok=True)
        try:
            produced = list(segment_fn(pulled.folder, results))
        except MedsegError as exc:
            raise PacsError(f"segmentation failed, nothing was pushed: {exc}") from exc
        except Exception:
            log.error("segmentation failed with an unexpected error; nothing was pushed")
            raise
        source_sops = {p.stem for p in pulled.files}
        outputs = check_outputs(
            produced, study_uid=pulled.study_uid, source_series_uid=pulled.series_uid, source_sops=source_sops
        )
        pushed = push_files(client, outputs, study_uid=pulled.study_uid, progress=progress)
        pushed.raise_for_rejections(client.server)
        return SegmentResult(
            study_uid=pulled.study_uid,
            series=record,
            pulled=pulled,
            outputs=outputs,
            pushed=pushed,
            work_dir=None if temporary else work,
        )
    finally:
        if temporary:
            shutil.rmtree(work, ignore_errors=True)


_PUSHABLE = ("dicom-seg", "rtstruct")


@dataclass(frozen=True)
class ModelSegmentFn:
    """A ``segment_fn`` running medseg's predictor (imported lazily) with a model folder, and
    the modality the model was trained on (``expected_modality``: (modality, why), or None
    when its plan does not say), which :func:`segment_study` checks before pulling."""

    model: Path
    formats: tuple[str, ...]
    device: str = "auto"
    tta: bool = False
    threads: int | None = None
    expected_modality: tuple[str, str] | None = None
    # the loaded SegmentationModel (see :meth:`loaded`): a cohort loads the network once
    model_loaded: Any = field(default=None, compare=False, repr=False)

    def loaded(self) -> ModelSegmentFn:
        """This function with its model loaded now, once, instead of at every call."""
        if self.model_loaded is not None:
            return self
        from medseg.inference.predictor import SegmentationModel

        network = SegmentationModel(self.model, device=self.device, threads=self.threads)
        return dataclasses.replace(self, model_loaded=network)

    def __call__(self, series_folder: Path, out_folder: Path) -> list[Path]:
        from medseg.inference.predictor import PredictConfig, predict

        config = PredictConfig(formats=self.formats, device=self.device, tta=self.tta, threads=self.threads)  # type: ignore[arg-type]
        model = self.model if self.model_loaded is None else self.model_loaded
        results = predict(series_folder, model, out_folder, config)
        failed = [r for r in results if not r.ok]
        if failed:
            raise PacsError(f"prediction failed: {failed[0].error}")
        files = [Path(p) for r in results for fmt, p in r.outputs.items() if fmt in _PUSHABLE]
        if not files:
            raise PacsError("the model found nothing to segment in the series (no SEG/RTSTRUCT written)")
        return files


def _model_modality(model: Path) -> tuple[str, str] | None:
    """The modality the model folder (or ensemble) was trained on, from its first fold's plan;
    None when the folder cannot be read here (the predictor then names the problem)."""
    from medseg.preprocessing.plan import Plan, expected_modality
    from medseg.training.checkpoint import model_folders

    try:
        folders = model_folders(model)
        return expected_modality(Plan.load(folders[0] / "plan.json")) if folders else None
    except MedsegError:
        return None


def model_segment_fn(
    model: str | Path,
    *,
    formats: Sequence[str] = _PUSHABLE,
    device: str = "auto",
    tta: bool = False,
    threads: int | None = None,
) -> ModelSegmentFn:
    """A :class:`ModelSegmentFn` for ``model``; ``threads`` caps the CPU threads of the
    network, as ``predict --threads``."""
    wrong = [f for f in formats if f not in _PUSHABLE]
    if wrong or not formats:
        raise PacsError(
            f"only dicom-seg and rtstruct can be pushed to a PACS, found {list(formats) or 'none'}; for "
            "volumes, meshes or a report, keep --work DIR and run: medseg export DIR/results/series/seg.dcm "
            "DIR/series -f volumes,mesh,report"
        )
    return ModelSegmentFn(
        Path(model), tuple(formats), device, tta, threads, expected_modality=_model_modality(Path(model))
    )


# ------------------------------------------------------------------------ several studies
SUMMARY_NAME = "pacs_segment.json"


@dataclass
class StudyOutcome:
    """What happened to one study of :func:`segment_studies` (one entry of its summary JSON).

    ``status`` is ``pushed`` (done now), ``already pushed`` (done by an earlier run into the
    same folder, not redone) or ``failed`` (``error`` says why; ``internal_error`` when the
    cause is a bug rather than the study or the server)."""

    study_uid: str
    status: str
    series_uid: str = ""
    series: str = ""  # SeriesRecord.summary(): number, description, modality, count (no patient data)
    pushed: list[dict[str, str]] = field(default_factory=list)  # {"modality", "sop_instance_uid"}
    error: str = ""
    internal_error: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status != "failed"


def read_study_list(path: str | Path) -> list[str]:
    """The StudyInstanceUIDs of a file: one UID per line (``#`` comments and blank lines
    ignored; what ``medseg pacs query --study-uids`` prints), or a CSV / TSV table with a
    ``StudyInstanceUID`` column. Duplicates are dropped, the order kept."""
    import csv

    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(file, "cannot read the list of studies", found=str(exc)) from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise InputError(file, "lists no study", expected="one StudyInstanceUID per line", found="nothing")
    header = lines[0]
    if "\t" in header or "," in header or ";" in header:
        delimiter = "\t" if "\t" in header else ("," if "," in header else ";")
        rows = list(csv.reader(lines, delimiter=delimiter))
        names = [n.strip().lower() for n in rows[0]]
        if "studyinstanceuid" not in names:
            raise InputError(
                file,
                "is a table without a StudyInstanceUID column",
                expected="one StudyInstanceUID per line, or a CSV/TSV table with a StudyInstanceUID column",
                found=f"columns {rows[0]}",
            )
        k = names.index("studyinstanceuid")
        values = [(n + 2, r[k].strip() if k < len(r) else "") for n, r in enumerate(rows[1:])]
    else:
        values = list(enumerate(lines, start=1))
    uids: list[str] = []
    for number, value in values:
        try:
            uid = check_uid(value, "a StudyInstanceUID")
        except MedsegError:
            raise InputError(
                file,
                f"entry {number} is not a StudyInstanceUID",
                expected="a DICOM UID (digits and dots, at most 64 characters)",
                found=repr(value[:80]),
            ) from None
        if uid not in uids:
            uids.append(uid)
    return uids


def _read_summary(path: Path, server: str) -> dict[str, dict[str, Any]]:
    """The studies of an earlier run's summary, by StudyInstanceUID ({} when there is none).

    A summary of runs against another server is refused: its studies were pushed there, not to
    ``server`` (skipped as 'already pushed' they would never reach it), and its entries, kept
    beside this run's, would be listed under this run's server."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        entries = data["studies"]
        earlier = {str(e["study_uid"]): dict(e) for e in entries}
        earlier_server = str(data.get("server") or "")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(
            path,
            "is not a summary of medseg pacs segment; cannot tell which studies were pushed",
            expected=f"the {SUMMARY_NAME} an earlier run wrote, or another output folder",
            found=f"{type(exc).__name__}: {exc}",
        ) from None
    if earlier and earlier_server and earlier_server != server:
        raise InputError(
            path,
            "lists the studies of runs against another PACS server",
            expected=f"runs against {server} (the server of this run), or another output folder",
            found=f"server {earlier_server}",
        )
    return earlier


def segment_studies(
    client: PacsClient,
    study_uids: Sequence[str],
    segment_fn: SegmentFn,
    out_dir: str | Path,
    *,
    series_uid: str | None = None,
    description: str | None = None,
    work_dir: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = False,
    allow_modality_mismatch: bool = False,
    on_outcome: Callable[[int, int, StudyOutcome], None] | None = None,
) -> list[StudyOutcome]:
    """:func:`segment_study` for each study in turn, going on past a study that fails.

    ``out_dir/pacs_segment.json`` lists each study's outcome (series chosen, pushed SOP
    instance UIDs, error) and is rewritten atomically after every study: a re-run into the
    same folder skips the studies it lists as pushed (``overwrite`` segments and pushes them
    again, beside the earlier objects) and retries the others. ``work_dir`` keeps each
    study's series and results in ``work_dir/<StudyInstanceUID>/``; results of a study not
    recorded as pushed are redone. A :class:`ModelSegmentFn` loads its model once, here.
    ``on_outcome(i, n, outcome)`` is called after each study (the CLI prints a line).
    """
    import medseg
    from medseg.io.atomic import prepare_output_folder, run_lock, write_text_atomic

    if series_uid and len(study_uids) > 1:
        raise PacsError(
            f"--series names one series of one study, but {len(study_uids)} studies were given; choose "
            "each study's series with --description (a glob such as 't2*tra*') or leave it to the "
            "study's only image series"
        )
    out = prepare_output_folder(out_dir)
    summary = out / SUMMARY_NAME
    with run_lock(out / f".{SUMMARY_NAME}.lock", "medseg pacs segment"):
        earlier = _read_summary(summary, client.server)
        if isinstance(segment_fn, ModelSegmentFn):
            segment_fn = segment_fn.loaded()
        outcomes: list[StudyOutcome] = []

        def write_summary() -> None:
            done = {o.study_uid for o in outcomes}
            entries = [dataclasses.asdict(o) for o in outcomes]
            entries += [e for uid, e in earlier.items() if uid not in done]  # studies of other runs
            write_text_atomic(
                summary,
                json.dumps(
                    {
                        "medseg_version": medseg.__version__,
                        "server": client.server,
                        "model": str(getattr(segment_fn, "model", "")),
                        "studies": entries,
                    },
                    indent=2,
                )
                + "\n",
                overwrite=True,
            )

        for i, study in enumerate(study_uids):
            before = earlier.get(study)
            started = time.monotonic()
            if before and before.get("status") in ("pushed", "already pushed") and not overwrite:
                outcome = StudyOutcome(
                    study,
                    "already pushed",
                    str(before.get("series_uid", "")),
                    str(before.get("series", "")),
                    list(before.get("pushed", [])),
                )
                log.info("study %d of %d (%s): already pushed by an earlier run, not redone", i + 1,
                         len(study_uids), study)  # fmt: skip
            else:
                log.info("study %d of %d: %s", i + 1, len(study_uids), study)
                outcome = _segment_one(
                    client,
                    study,
                    segment_fn,
                    series_uid=series_uid,
                    description=description,
                    work_dir=None if work_dir is None else Path(work_dir) / study,
                    progress=progress,
                    allow_modality_mismatch=allow_modality_mismatch,
                )
                outcome.seconds = round(time.monotonic() - started, 1)
            outcomes.append(outcome)
            write_summary()  # after every study: a killed run is resumed from it
            if on_outcome is not None:
                on_outcome(i + 1, len(study_uids), outcome)
        return outcomes


def _segment_one(
    client: PacsClient,
    study: str,
    segment_fn: SegmentFn,
    *,
    series_uid: str | None,
    description: str | None,
    work_dir: Path | None,
    progress: bool,
    allow_modality_mismatch: bool,
) -> StudyOutcome:
    """One study of :func:`segment_studies`; its failure is returned, not raised (as predict's
    cohort: a MedsegError is the study's, anything else a bug listed as an internal error)."""
    try:
        result = segment_study(
            client,
            study,
            segment_fn,
            series_uid=series_uid,
            description=description,
            work_dir=work_dir,
            overwrite=True,  # results of a study not recorded as pushed were not pushed: redo them
            progress=progress,
            allow_modality_mismatch=allow_modality_mismatch,
        )
    except MedsegError as exc:
        log.error("study %s failed: %s", study, exc)
        return StudyOutcome(study, "failed", error=str(exc))
    except Exception as exc:
        from medseg.io.dicom import safe_error_text

        text = f"internal error: {safe_error_text(exc)}"
        log.error("study %s failed with an %s (please report it; MEDSEG_DEBUG=1 shows the traceback)",
                  study, text)  # fmt: skip
        log.debug("traceback of study %s", study, exc_info=True)
        return StudyOutcome(study, "failed", error=text, internal_error=True)
    return StudyOutcome(
        result.study_uid,
        "pushed",
        result.series.series_uid,
        result.series.summary(),
        [{"modality": item.modality, "sop_instance_uid": item.sop_uid} for item in result.pushed.accepted],
    )
