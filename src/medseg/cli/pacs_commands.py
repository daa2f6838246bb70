"""``medseg pacs ...``: query, pull, push and segment over DICOMweb (see docs/pacs.md).

The server comes from ``--url``, ``MEDSEG_PACS_URL`` or the config file
(``~/.config/medseg/pacs.json`` or ``--config``); credentials from the same places.
Passwords and tokens are never printed. Prefer the environment or a ``chmod 600``
config file to ``--password``/``--token`` (those land in the shell history).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from medseg.cli.common import EXIT_INTERNAL_ERROR, app, cli_command, console, err_console, warnings_only

if TYPE_CHECKING:
    from medseg.pacs.client import PacsClient

pacs_app = typer.Typer(
    help="Query a PACS and pull, push or segment studies over DICOMweb (QIDO/WADO/STOW-RS).",
    no_args_is_help=True,
)
app.add_typer(pacs_app, name="pacs")

UrlOpt = Annotated[
    str | None,
    typer.Option(
        "--url", help="DICOMweb root, e.g. https://pacs.example.org/dicom-web (or MEDSEG_PACS_URL)."
    ),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="JSON config file with the keys url, user, password, token, ca_bundle, insecure, timeout "
        "(or MEDSEG_PACS_CONFIG; default ~/.config/medseg/pacs.json).",
    ),
]
UserOpt = Annotated[str | None, typer.Option("--user", help="Basic-auth user (or MEDSEG_PACS_USER).")]
PasswordOpt = Annotated[
    str | None,
    typer.Option("--password", help="Basic-auth password; prefer MEDSEG_PACS_PASSWORD or the config file."),
]
TokenOpt = Annotated[
    str | None, typer.Option("--token", help="Bearer token; prefer MEDSEG_PACS_TOKEN or the config file.")
]
InsecureOpt = Annotated[
    bool, typer.Option("--insecure", help="Do not verify the server's TLS certificate (warns; avoid).")
]
CaBundleOpt = Annotated[
    Path | None, typer.Option("--ca-bundle", help="PEM file of CAs to trust (or MEDSEG_PACS_CA_BUNDLE).")
]
TimeoutOpt = Annotated[
    float | None, typer.Option("--timeout", help="Seconds to wait for an answer (default 60).")
]
StudyOpt = Annotated[str | None, typer.Option("--study", help="StudyInstanceUID.")]
SeriesOpt = Annotated[str | None, typer.Option("--series", help="SeriesInstanceUID.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]


def _client(
    url: str | None,
    config: Path | None,
    user: str | None,
    password: str | None,
    token: str | None,
    insecure: bool,
    ca_bundle: Path | None,
    timeout: float | None,
) -> PacsClient:
    from medseg.pacs.client import PacsClient, resolve_config

    cfg = resolve_config(
        url=url,
        user=user,
        password=password,
        token=token,
        insecure=insecure or None,
        ca_bundle=ca_bundle,
        timeout=timeout,
        config_path=config,
    )
    return PacsClient(cfg)


def _count(value: int | None) -> str:
    return "?" if value is None else str(value)


# ---------------------------------------------------------------------------- query
@pacs_app.command("query")
@cli_command
def query_command(
    patient: Annotated[str | None, typer.Option("--patient", help="PatientID (exact).")] = None,
    date: Annotated[
        str | None,
        typer.Option(
            "--date",
            help="Study date YYYYMMDD or YYYY-MM-DD, or a range YYYYMMDD-YYYYMMDD or "
            "YYYY-MM-DD..YYYY-MM-DD (either end may be open).",
        ),
    ] = None,
    modality: Annotated[str | None, typer.Option("--modality", help="Modality, e.g. MR, CT, SEG.")] = None,
    description: Annotated[
        str | None, typer.Option("--description", help="Study (or series) description; substring or glob.")
    ] = None,
    study: StudyOpt = None,
    series_level: Annotated[
        bool,
        typer.Option("--series-level", "-s", help="List series instead of studies (implied by --study)."),
    ] = False,
    limit: Annotated[
        int,
        typer.Option(
            "--limit",
            min=1,
            help="At most this many results (a hospital PACS holds millions of studies: narrow the "
            "search or raise it).",
        ),
    ] = 100,
    study_uids: Annotated[
        bool,
        typer.Option(
            "--study-uids",
            help="Print only the StudyInstanceUIDs found, one per line, no table (no patient data): "
            "redirect it to a file for 'medseg pacs segment --studies FILE'.",
        ),
    ] = False,
    url: UrlOpt = None,
    config: ConfigOpt = None,
    user: UserOpt = None,
    password: PasswordOpt = None,
    token: TokenOpt = None,
    insecure: InsecureOpt = False,
    ca_bundle: CaBundleOpt = None,
    timeout: TimeoutOpt = None,
) -> None:
    """Find studies (or series) by patient, date, modality and description; print a table.

    The table shows patient IDs and names: it is your terminal. medseg's logs never do.
    """
    from medseg.pacs.query import query_series, query_studies

    with _client(url, config, user, password, token, insecure, ca_bundle, timeout) as client:
        if study_uids:
            found = (
                [s.study_uid for s in query_series(client, study_uid=study, patient_id=patient, date=date,
                                                   modality=modality, description=description, limit=limit)]
                if series_level or study
                else [st.study_uid for st in query_studies(client, patient_id=patient, date=date,
                                                           modality=modality, description=description,
                                                           limit=limit)]
            )  # fmt: skip
            for uid in dict.fromkeys(found):  # a study of several matching series once
                typer.echo(uid)
            if len(found) >= limit:  # on stderr: stdout is the list
                err_console.print(
                    f"the first {limit} results; more may match: narrow the search or raise --limit"
                )
            return
        if series_level or study:
            series = query_series(
                client,
                study_uid=study,
                patient_id=patient,
                date=date,
                modality=modality,
                description=description,
                limit=limit,
            )
            scope = f" of study {study}" if study else ""
            table = Table(title=f"{len(series)} series{scope} on {client.server}", title_justify="left")
            columns = [] if study else ["patient ID", "date"]
            columns += ["#", "modality", "description", "instances", "SeriesInstanceUID"]
            columns += [] if study else ["StudyInstanceUID"]
            rows = [
                ([] if study else [s.patient_id, s.date])
                + [_count(s.number), s.modality, s.description, _count(s.n_instances), s.series_uid]
                + ([] if study else [s.study_uid])
                for s in series
            ]
        else:
            studies = query_studies(
                client, patient_id=patient, date=date, modality=modality, description=description, limit=limit
            )
            table = Table(title=f"{len(studies)} studies on {client.server}", title_justify="left")
            columns = ["patient ID", "patient name", "date", "description", "modalities", "series", "instances",
                       "StudyInstanceUID"]  # fmt: skip
            rows = [
                [
                    st.patient_id,
                    st.patient_name,
                    st.date,
                    st.description,
                    ",".join(st.modalities),
                    _count(st.n_series),
                    _count(st.n_instances),
                    st.study_uid,
                ]
                for st in studies
            ]
    for k, col in enumerate(columns):
        if col.endswith("UID"):
            # UIDs are what users copy into the next command: never fold them.
            width = max([len(r[k]) for r in rows] + [len(col)])
            table.add_column(col, no_wrap=True, min_width=width)
        else:
            table.add_column(col, overflow="fold", max_width=32)
    for row in rows:
        table.add_row(*row)
    # Wider than the terminal rather than fold or cut the UIDs users copy into the next command.
    natural = 1 + sum(
        3 + max([len(r[k]) for r in rows] + [len(col)])
        if col.endswith("UID")
        else 3 + min(32, max([len(r[k]) for r in rows] + [len(col)]))
        for k, col in enumerate(columns)
    )
    Console(width=max(console.width, min(natural, 240)), highlight=False).print(table, crop=False)
    if len(rows) >= limit:  # the server may hold more: say so rather than let the table look complete
        console.print(
            f"the first {limit} results; more may match: narrow the search (--date, --modality, --patient, "
            "--description) or raise --limit"
        )


# ----------------------------------------------------------------------------- pull
@pacs_app.command("pull")
@cli_command
def pull_command(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder to pull into (created; re-run to resume).")
    ],
    study: StudyOpt = None,
    series: SeriesOpt = None,
    quiet: QuietOpt = False,
    url: UrlOpt = None,
    config: ConfigOpt = None,
    user: UserOpt = None,
    password: PasswordOpt = None,
    token: TokenOpt = None,
    insecure: InsecureOpt = False,
    ca_bundle: CaBundleOpt = None,
    timeout: TimeoutOpt = None,
) -> None:
    """Download a series (--series) or a whole study (--study) into a folder, resumably.

    A series goes straight into OUT; a study into OUT/<SeriesInstanceUID>/. Files are
    named <SOPInstanceUID>.dcm and appear only when complete; running the command
    again skips what is already there.
    """
    from medseg.errors import ConfigError
    from medseg.pacs.transfer import pull_series, pull_study

    if not study and not series:
        raise ConfigError("give --series UID (one series) or --study UID (the whole study)")
    with _client(url, config, user, password, token, insecure, ca_bundle, timeout) as client:
        if series:
            results = [pull_series(client, series, out, study_uid=study, progress=not quiet)]
        else:
            assert study is not None
            results = pull_study(client, study, out, progress=not quiet)
    for r in results:
        console.print(
            f"{r.modality} '{r.description}': {r.total} instances in {r.folder} "
            f"({r.downloaded} downloaded, {r.skipped} already present)",
            soft_wrap=True,
        )


# ----------------------------------------------------------------------------- push
@pacs_app.command("push")
@cli_command
def push_command(
    paths: Annotated[list[Path], typer.Argument(help="DICOM files or folders (SEG, RTSTRUCT, images ...).")],
    study: Annotated[
        str | None,
        typer.Option("--study", help="Only accept instances of this StudyInstanceUID (server-checked)."),
    ] = None,
    skip_invalid: Annotated[
        bool,
        typer.Option(
            "--skip-invalid",
            help="Push the whole files and leave out damaged ones (cut short, unreadable, no UIDs); "
            "by default one damaged file stops the push before anything is sent.",
        ),
    ] = False,
    quiet: QuietOpt = False,
    url: UrlOpt = None,
    config: ConfigOpt = None,
    user: UserOpt = None,
    password: PasswordOpt = None,
    token: TokenOpt = None,
    insecure: InsecureOpt = False,
    ca_bundle: CaBundleOpt = None,
    timeout: TimeoutOpt = None,
) -> None:
    """Store DICOM files on the PACS (STOW-RS) and report accepted and rejected instances.

    Every file is checked before anything is sent: a file cut short (e.g. by an interrupted
    copy: fewer pixel bytes than Rows x Columns x samples x bits, or no pixel data),
    unreadable or without its UIDs stops the push, naming the damaged files, unless
    --skip-invalid. Exits with code 2 when a file is damaged or the server rejected any
    instance.
    """
    from medseg.pacs.transfer import push_files

    with _client(url, config, user, password, token, insecure, ca_bundle, timeout) as client:
        result = push_files(client, paths, study_uid=study, skip_invalid=skip_invalid, progress=not quiet)
        for item in result.accepted:
            console.print(f"[green]accepted[/] {item.path} ({item.modality or '?'})", soft_wrap=True)
        for bad in result.rejected:
            err_console.print(f"[red]rejected[/] {bad.path}: {bad.reason}", soft_wrap=True)
        skipped_note = f", {len(result.skipped)} damaged files not pushed" if result.skipped else ""
        console.print(
            f"{len(result.accepted)} accepted, {len(result.rejected)} rejected by {client.server}{skipped_note}"
        )
        result.raise_for_rejections(client.server)


# -------------------------------------------------------------------------- segment
@pacs_app.command("segment")
@cli_command
def segment_command(
    model: Annotated[Path, typer.Option("--model", "-m", help="Model folder (as for medseg predict).")],
    study: Annotated[
        list[str] | None,
        typer.Option("--study", help="StudyInstanceUID of a study to segment (repeat for several)."),
    ] = None,
    studies: Annotated[
        Path | None,
        typer.Option(
            "--studies",
            help="File of StudyInstanceUIDs to segment one after the other: one per line (as "
            "'medseg pacs query --study-uids' prints) or a CSV/TSV with a StudyInstanceUID column.",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Folder for pacs_segment.json, each study's outcome (needed for several studies); a "
            "re-run into it skips the studies already pushed.",
        ),
    ] = None,
    series: SeriesOpt = None,
    description: Annotated[
        str | None,
        typer.Option(
            "--description",
            help="Pick the series by description (glob, case-insensitive), e.g. 't2*tra*'; "
            "'t2*tra*@last' (or @first) takes the latest (earliest) of several matching.",
        ),
    ] = None,
    formats: Annotated[
        str, typer.Option("--format", help="What to push back: dicom-seg, rtstruct or both, comma-separated.")
    ] = "dicom-seg,rtstruct",
    work: Annotated[
        Path | None,
        typer.Option("--work", help="Keep the pulled series and results here (default: a temporary folder)."),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace results from an earlier run in --work; with --out, also segment and push "
            "again the studies an earlier run pushed.",
        ),
    ] = False,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    threads: Annotated[
        int | None, typer.Option("--threads", help="CPU threads for the network (default: all cores).")
    ] = None,
    allow_modality_mismatch: Annotated[
        bool,
        typer.Option(
            "--allow-modality-mismatch",
            help="Segment and push a series of another modality than the model's (e.g. an MR series "
            "with a CT model); without it such a series is refused before anything is pulled.",
        ),
    ] = False,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet",
            "-q",
            help="No progress bar and no log lines but warnings and errors; the lines that say what "
            "was segmented and pushed still show.",
        ),
    ] = False,
    url: UrlOpt = None,
    config: ConfigOpt = None,
    user: UserOpt = None,
    password: PasswordOpt = None,
    token: TokenOpt = None,
    insecure: InsecureOpt = False,
    ca_bundle: CaBundleOpt = None,
    timeout: TimeoutOpt = None,
) -> None:
    """Pull a series, segment it with a model, push the DICOM SEG / RTSTRUCT back to its study.

    Nothing is pushed unless prediction and export succeeded and every result
    references the source series. A series of another modality than the model was trained
    on (its plan: CT normalisation or channel name) is refused before it is pulled, unless
    --allow-modality-mismatch.

    Several studies (--study repeated, --studies FILE) are segmented one after the other with
    the model loaded once; a study that fails is reported and the others go on. OUT/pacs_segment.json
    lists each study's series, pushed instances or error, rewritten after every study; running
    the command again skips the studies already pushed. The exit code is then 1 when a study
    failed, 3 when one failed on an internal error.
    """
    from medseg.errors import ConfigError
    from medseg.pacs.segment import model_segment_fn, read_study_list, segment_study

    uids = list(study or [])
    if studies is not None:
        uids += read_study_list(studies)
    uids = list(dict.fromkeys(u.strip() for u in uids))
    if not uids:
        raise ConfigError("give the study to segment: --study UID (repeatable) or --studies FILE")
    if out is None and len(uids) > 1:
        raise ConfigError(
            f"{len(uids)} studies need --out DIR for pacs_segment.json, the outcome of each study "
            "(a re-run into it skips the studies already pushed)"
        )
    fmt = tuple(f.strip() for f in formats.split(",") if f.strip())
    segment_fn = model_segment_fn(model, formats=fmt, device=device, threads=threads)
    if out is not None:
        _segment_many(
            uids,
            segment_fn,
            out,
            series=series,
            description=description,
            work=work,
            overwrite=overwrite,
            quiet=quiet,
            allow_modality_mismatch=allow_modality_mismatch,
            client_args=(url, config, user, password, token, insecure, ca_bundle, timeout),
        )
        return
    (study_uid,) = uids
    with (
        _client(url, config, user, password, token, insecure, ca_bundle, timeout) as client,
        warnings_only(quiet),  # a script over many studies: its warnings (a CT model on an MR) still show
    ):
        result = segment_study(
            client,
            study_uid,
            segment_fn,
            series_uid=series,
            description=description,
            work_dir=work,
            overwrite=overwrite,
            progress=not quiet,
            allow_modality_mismatch=allow_modality_mismatch,
        )
        console.print(f"segmented series {result.series.summary()}", soft_wrap=True)
        for item in result.pushed.accepted:
            console.print(
                f"[green]pushed[/] {item.modality} {item.sop_uid} to study {result.study_uid}", soft_wrap=True
            )
        if result.work_dir is not None:
            console.print(f"pulled series and results kept in {result.work_dir}")


def _segment_many(
    uids: list[str],
    segment_fn: Callable[[Path, Path], Sequence[Path]],
    out: Path,
    *,
    series: str | None,
    description: str | None,
    work: Path | None,
    overwrite: bool,
    quiet: bool,
    allow_modality_mismatch: bool,
    client_args: tuple[Any, ...],
) -> None:
    """pacs segment over several studies (or one with --out): a line per study, a summary line,
    exit 1 (3 on an internal error) when any failed, as predict's cohort."""
    from medseg.pacs.segment import SUMMARY_NAME, StudyOutcome, segment_studies

    def report(i: int, n: int, o: StudyOutcome) -> None:
        head = f"[{i}/{n}] study {o.study_uid}:"
        if o.status == "failed":
            err_console.print(f"{head} [red]failed[/] {escape(o.error)}", soft_wrap=True)
            return
        pushed = ", ".join(f"{p['modality']} {p['sop_instance_uid']}" for p in o.pushed)
        state = "[green]pushed[/]" if o.status == "pushed" else "[yellow]already pushed[/] (not redone)"
        console.print(f"{head} series {escape(o.series)}: {state} {pushed}", soft_wrap=True)

    with (
        _client(*client_args) as client,
        warnings_only(quiet),  # a failed study is still logged as an error when it happens
    ):
        try:
            outcomes = segment_studies(
                client,
                uids,
                segment_fn,
                out,
                series_uid=series,
                description=description,
                work_dir=work,
                overwrite=overwrite,
                progress=not quiet,
                allow_modality_mismatch=allow_modality_mismatch,
                on_outcome=report,
            )
        except KeyboardInterrupt:
            console.print(
                f"[yellow]interrupted:[/] the studies finished so far are listed in "
                f"{escape(str(out / SUMMARY_NAME))}; run the same command again to do the rest "
                "(studies already pushed are not redone)",
                soft_wrap=True,
            )
            raise typer.Exit(130) from None
    failed = [o for o in outcomes if o.status == "failed"]
    skipped = [o for o in outcomes if o.status == "already pushed"]
    console.print(
        f"{len(outcomes) - len(failed) - len(skipped)} of {len(outcomes)} studies segmented and pushed"
        + (f", {len(skipped)} already pushed (--overwrite redoes them)" if skipped else "")
        + (f", [red]{len(failed)} failed[/]" if failed else "")
        + f"; outcome of each in {escape(str(out / SUMMARY_NAME))}",
        soft_wrap=True,
    )
    if any(o.internal_error for o in failed):
        raise typer.Exit(EXIT_INTERNAL_ERROR)
    if failed:
        raise typer.Exit(1)
