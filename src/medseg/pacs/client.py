"""Connecting to a PACS over DICOMweb: configuration, authentication, errors.

The server and its credentials come from, in this order of precedence:

1. explicit arguments (the CLI's ``--url``, ``--user``, ``--password``, ``--token``,
   ``--insecure``, ``--ca-bundle``);
2. environment variables ``MEDSEG_PACS_URL``, ``MEDSEG_PACS_USER`` + ``MEDSEG_PACS_PASSWORD``,
   ``MEDSEG_PACS_TOKEN``, ``MEDSEG_PACS_CA_BUNDLE``;
3. a JSON config file: ``--config PATH``, else ``MEDSEG_PACS_CONFIG``, else
   ``$XDG_CONFIG_HOME/medseg/pacs.json`` (``~/.config/medseg/pacs.json``) when it exists,
   holding ``{"url": ..., "user": ..., "password": ..., "token": ..., "ca_bundle": ...,
   "insecure": false, "timeout": 60}`` (every key optional, unknown keys rejected).

Credentials are taken as a unit from the first source that names any (a token in the
environment is not mixed with a password from the file). Passwords and tokens never
appear in a repr, a log record or an error message; query strings (which carry patient
IDs) are removed from the log records of urllib3 and dicomweb-client. TLS certificates
are verified unless ``insecure`` is set, which logs a warning.

Every failure is a :class:`PacsError` (a :class:`~medseg.errors.MedsegError`) with a one-line
message naming the server and what was being done: connection refused or dropped,
TLS failure, HTTP 401/403 (credentials), HTTP 404 (not found), other HTTP errors.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import stat
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pydicom
import requests
import requests.adapters
import retrying
from pydicom.dataset import Dataset

from medseg.errors import ConfigError, InputError, MedsegError

__all__ = [
    "PacsAuthError",
    "PacsClient",
    "PacsConfig",
    "PacsConnectionError",
    "PacsError",
    "PacsNotFoundError",
    "PacsRejectedError",
    "resolve_config",
]

log = logging.getLogger(__name__)

ENV_URL = "MEDSEG_PACS_URL"
ENV_USER = "MEDSEG_PACS_USER"
ENV_PASSWORD = "MEDSEG_PACS_PASSWORD"
ENV_TOKEN = "MEDSEG_PACS_TOKEN"
ENV_CA_BUNDLE = "MEDSEG_PACS_CA_BUNDLE"
ENV_CONFIG = "MEDSEG_PACS_CONFIG"
CONFIG_KEYS = ("url", "user", "password", "token", "ca_bundle", "insecure", "timeout")
DEFAULT_TIMEOUT = 60.0
QIDO_PAGE = 500  # results per QIDO-RS request
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}


# ----------------------------------------------------------------------------- errors
class PacsError(MedsegError):
    """A PACS operation failed (the message says which server and what was being done)."""


class PacsConnectionError(PacsError):
    """The server could not be reached, or the connection dropped, or TLS failed."""


class PacsAuthError(PacsError):
    """The server refused the credentials (HTTP 401) or the access (HTTP 403)."""


class PacsNotFoundError(PacsError):
    """A study, series or instance (or the DICOMweb root itself) does not exist."""


class PacsRejectedError(PacsError):
    """The server refused to store one or more instances (STOW-RS)."""


# ----------------------------------------------------------------------------- config
@dataclass(frozen=True)
class PacsConfig:
    """Where the DICOMweb server is and how to authenticate; secrets are never shown."""

    url: str
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    verify: bool | str = True  # False (insecure) or the path of a CA bundle
    timeout: float = DEFAULT_TIMEOUT

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", _check_url(self.url))
        if self.token and (self.user or self.password):
            raise ConfigError("give either a user and password (basic auth) or a token, not both")
        if bool(self.user) != bool(self.password):
            raise ConfigError(
                "basic auth needs both a user and a password "
                f"(--user/--password, {ENV_USER}/{ENV_PASSWORD} or the config file)"
            )
        if not self.timeout > 0:
            raise ConfigError(f"timeout must be a positive number of seconds, found {self.timeout}")

    @property
    def auth_kind(self) -> str:
        return "token" if self.token else "basic" if self.user else "none"

    def describe(self) -> str:
        """The server and the kind of authentication, without secrets (safe to print or log)."""
        auth = {"token": "bearer token", "basic": "basic auth", "none": "no authentication"}[self.auth_kind]
        tls = "" if self.verify is not False else ", TLS NOT verified"
        return f"{self.url} ({auth}{tls})"

    def __repr__(self) -> str:
        return f"PacsConfig({self.describe()})"


def _check_url(url: str) -> str:
    text = str(url).strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"PACS URL must look like https://host:port/dicom-web, found {_redact_url(text)!r}")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            f"the PACS URL {_redact_url(text)} contains credentials; give them with --user/--password, "
            f"{ENV_USER}/{ENV_PASSWORD} or the config file instead"
        )
    if parts.query or parts.fragment:
        raise ConfigError(f"the PACS URL must not have a query string, found {_redact_url(text)}")
    return text.rstrip("/")


def _redact_url(url: str) -> str:
    """scheme://host:port/path only: no user info, no query string."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparsable URL>"
    return f"{parts.scheme}://{host}{port}{parts.path}"


def default_config_path(env: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if env is None else env
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "medseg" / "pacs.json"


def _read_config_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(path, "PACS config file not found", expected="a JSON file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        # The message holds a line/column only, never the file's text (it may hold secrets).
        raise InputError(
            path, "is not valid JSON", found=f"error at line {exc.lineno} column {exc.colno}"
        ) from None
    if not isinstance(data, dict):
        raise InputError(path, "must hold one JSON object", found=type(data).__name__)
    unknown = sorted(set(data) - set(CONFIG_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; known keys: {list(CONFIG_KEYS)}")
    for key in ("url", "user", "password", "token", "ca_bundle"):
        if key in data and data[key] is not None and not isinstance(data[key], str):
            raise ConfigError(f"{path}: '{key}' must be a string, found {type(data[key]).__name__}")
    if "insecure" in data and not isinstance(data["insecure"], bool):
        raise ConfigError(f"{path}: 'insecure' must be true or false")
    if "timeout" in data and (
        isinstance(data["timeout"], bool) or not isinstance(data["timeout"], (int, float))
    ):
        raise ConfigError(f"{path}: 'timeout' must be a number of seconds")
    if (data.get("password") or data.get("token")) and os.name == "posix":
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("%s holds a secret and is readable by other users; run: chmod 600 %s", path, path)
    return data


def resolve_config(
    *,
    url: str | None = None,
    user: str | None = None,
    password: str | None = None,
    token: str | None = None,
    insecure: bool | None = None,
    ca_bundle: str | Path | None = None,
    timeout: float | None = None,
    config_path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
) -> PacsConfig:
    """Build the :class:`PacsConfig` from arguments, then environment, then the config file."""
    environ = dict(os.environ if env is None else env)
    explicit = config_path or environ.get(ENV_CONFIG)
    if explicit:
        file_data = _read_config_file(Path(explicit).expanduser())
    else:
        default = default_config_path(environ)
        file_data = _read_config_file(default) if default.is_file() else {}
    args = {"url": url, "user": user, "password": password, "token": token}
    envs = {
        "url": environ.get(ENV_URL),
        "user": environ.get(ENV_USER),
        "password": environ.get(ENV_PASSWORD),
        "token": environ.get(ENV_TOKEN),
    }
    sources = (args, envs, file_data)
    chosen_url = next((s["url"] for s in sources if s.get("url")), None)
    if not chosen_url:
        raise ConfigError(
            f"no PACS URL: give --url, set {ENV_URL}, or write it to {default_config_path(environ)} "
            '(e.g. {"url": "https://pacs.example.org/dicom-web"})'
        )
    auth: dict[str, Any] = {}
    for source in sources:
        if any(source.get(k) for k in ("user", "password", "token")):
            auth = {k: source.get(k) or None for k in ("user", "password", "token")}
            break
    bundle = ca_bundle or environ.get(ENV_CA_BUNDLE) or file_data.get("ca_bundle")
    is_insecure = insecure if insecure else bool(file_data.get("insecure", False))
    verify: bool | str = True
    if is_insecure:
        verify = False
    elif bundle:
        bundle_path = Path(bundle).expanduser()
        if not bundle_path.is_file():
            raise InputError(
                bundle_path, "CA bundle not found", expected="a PEM file of trusted certificates"
            )
        verify = str(bundle_path)
    return PacsConfig(
        url=chosen_url,
        user=auth.get("user"),
        password=auth.get("password"),
        token=auth.get("token"),
        verify=verify,
        timeout=float(timeout if timeout is not None else file_data.get("timeout", DEFAULT_TIMEOUT)),
    )


# -------------------------------------------------------------------- log redaction
_QUERY = re.compile(r"\?[^\s\"']*")


class _RedactQueryStrings(logging.Filter):
    """Remove URL query strings (QIDO filters carry patient IDs) from third-party log records."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to fix
            return True
        redacted = _QUERY.sub("?<query redacted>", message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


_REDACTOR = _RedactQueryStrings()
# Loggers that write request URLs: urllib3 and dicomweb-client at DEBUG, retrying (used by
# dicomweb-client) at WARNING with the failed request's exception, URL included.
_URL_LOGGERS = (
    "urllib3.connectionpool",
    "dicomweb_client.web",
    "dicomweb_client.api",
    "dicomweb_client",
    "retrying",
)


def _install_log_redaction() -> None:
    for name in _URL_LOGGERS:
        logger = logging.getLogger(name)
        if _REDACTOR not in logger.filters:
            logger.addFilter(_REDACTOR)
    # dicomweb-client logs every request at INFO; medseg logs what matters itself.
    dw = logging.getLogger("dicomweb_client")
    if dw.level == logging.NOTSET:
        dw.setLevel(logging.WARNING)


# ------------------------------------------------------------------ wire details
# dicomweb-client encodes query values with quote_plus, so the QIDO wildcards "*" and "?"
# travel as %2A / %3F. Orthanc 1.10 (DICOMweb plugin 1.7) does not percent-decode query
# values and then matches nothing. Both characters are legal as-is in a URL query
# (RFC 3986 section 3.4), so they are sent literally; every server reads them the same.
_LITERAL_IN_QUERY = {"%2A": "*", "%2a": "*", "%3F": "?", "%3f": "?"}
_ESCAPED_WILDCARD = re.compile("|".join(re.escape(k) for k in _LITERAL_IN_QUERY))


class _PacsAdapter(requests.adapters.HTTPAdapter):
    """Sends QIDO wildcards literally and enforces the configured TLS verification.

    requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override ``session.verify`` (a
    request without its own ``verify`` takes the environment's bundle), which would
    silently ignore ``--insecure`` and ``--ca-bundle``; an explicit choice is applied here,
    last. With the default (verify=True) the environment's bundle is still honoured.
    """

    def __init__(self, verify: bool | str):
        super().__init__()
        self._verify = verify

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        url = request.url or ""
        if "?" in url:
            base, _, query = url.partition("?")
            request.url = base + "?" + _ESCAPED_WILDCARD.sub(lambda m: _LITERAL_IN_QUERY[m.group(0)], query)
        if self._verify is not True:
            kwargs["verify"] = self._verify
        return super().send(request, *args, **kwargs)


# ----------------------------------------------------------------------------- client
def _failure_reason(exc: BaseException, timeout: float) -> str:
    """A short, secret-free description of a requests/urllib3 failure."""
    text = repr(exc) + " " + str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text or isinstance(exc, requests.exceptions.SSLError):
        return "TLS certificate verification failed"
    if "Connection refused" in text or "Errno 111" in text:
        return "connection refused (is the server running, and is the port right?)"
    if any(
        s in text
        for s in (
            "Name or service not known",
            "nodename nor servname",
            "getaddrinfo failed",
            "Temporary failure in name resolution",
        )
    ):
        return "the host name could not be resolved"
    if isinstance(exc, requests.exceptions.Timeout) or "timed out" in text:
        return f"no answer within {timeout:g} s"
    if any(
        s in text
        for s in (
            "IncompleteRead",
            "Connection broken",
            "RemoteDisconnected",
            "Connection aborted",
            "reset by peer",
            "ProtocolError",
        )
    ):
        return "the connection was dropped during the transfer"
    return type(exc).__name__


class PacsClient:
    """A DICOMweb client (dicomweb-client) whose failures are one-line :class:`PacsError` s."""

    def __init__(self, config: PacsConfig, *, session: requests.Session | None = None):
        from dicomweb_client.api import DICOMwebClient

        _install_log_redaction()
        self.config = config
        self.server = _redact_url(config.url)
        sess = session or requests.Session()
        for prefix in ("http://", "https://"):
            sess.mount(prefix, _PacsAdapter(config.verify))
        sess.verify = config.verify
        if config.auth_kind == "basic":
            sess.auth = (str(config.user), str(config.password))
        elif config.auth_kind == "token":
            sess.headers["Authorization"] = f"Bearer {config.token}"
        if config.verify is False:
            log.warning("TLS certificate verification is OFF for %s (--insecure)", self.server)
            import urllib3

            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        host = urlsplit(config.url).hostname or ""
        if config.auth_kind != "none" and config.url.startswith("http://") and host not in _LOCAL_HOSTS:
            log.warning("credentials are sent unencrypted to %s (http, not https)", self.server)
        self._session = sess
        self._web = DICOMwebClient(
            config.url, session=sess, timeout=(min(10.0, config.timeout), config.timeout)
        )
        # dicomweb-client (through `retrying`) retries answers 429/503/... and any exception,
        # a dropped connection included: once, after about half a second. A failure that
        # persists then surfaces as a PacsError (and a pull can be resumed).
        self._web.set_http_retry_params(retry=True, max_attempts=2, wait_exponential_multiplier=250)

    def __repr__(self) -> str:
        return f"PacsClient({self.config.describe()})"

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> PacsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def translate_errors(self, what: str) -> Iterator[None]:
        """Turn requests/dicomweb-client failures while doing ``what`` into :class:`PacsError` s.

        ``what`` must not hold patient data: it goes into the message.
        """
        try:
            yield
        except requests.exceptions.HTTPError as exc:
            raise self._http_error(exc, what) from None
        except retrying.RetryError as exc:
            # dicomweb-client's retries on 429/503/... were used up.
            response = getattr(exc.last_attempt, "value", None)
            code = getattr(response, "status_code", "?")
            raise PacsError(
                f"{self.server}: the server is busy (HTTP {code}, retried) while {what}; try later"
            ) from None
        except (
            requests.exceptions.ConnectionError,
            requests.exceptions.Timeout,
            requests.exceptions.ChunkedEncodingError,
            requests.exceptions.ContentDecodingError,
        ) as exc:
            reason = _failure_reason(exc, self.config.timeout)
            hint = ""
            if reason.startswith("TLS"):
                hint = (
                    f"; give the hospital's CA with --ca-bundle or {ENV_CA_BUNDLE}, "
                    "or --insecure only on a network you trust"
                )
            raise PacsConnectionError(f"{self.server}: {reason} while {what}{hint}") from None
        except requests.exceptions.InvalidJSONError:
            raise PacsError(
                f"{self.server}: the answer to {what} is not DICOM JSON; "
                "is the URL the DICOMweb root, e.g. http://host:8042/dicom-web?"
            ) from None
        except requests.exceptions.RequestException as exc:
            raise PacsConnectionError(
                f"{self.server}: {_failure_reason(exc, self.config.timeout)} while {what}"
            ) from None
        except (ValueError, KeyError) as exc:
            # dicomweb-client raises ValueError for answers it cannot decode (wrong URL root,
            # not DICOM JSON). The text names media types and UIDs, not patients.
            raise PacsError(
                f"{self.server}: unexpected answer while {what} ({type(exc).__name__}: "
                f"{_QUERY.sub('', str(exc))[:200]}); is the URL the DICOMweb root, e.g. .../dicom-web?"
            ) from None

    def _http_error(self, exc: requests.exceptions.HTTPError, what: str) -> PacsError:
        response = exc.response
        code = response.status_code if response is not None else 0
        reason = (response.reason if response is not None else "") or ""
        status = f"HTTP {code} {reason}".strip()
        if code == 401:
            if self.config.auth_kind == "none":
                return PacsAuthError(
                    f"{self.server}: the server requires authentication ({status}) while {what}; "
                    f"give --user/--password or --token ({ENV_USER}/{ENV_PASSWORD}, {ENV_TOKEN} or the config file)"
                )
            return PacsAuthError(
                f"{self.server}: the server refused the credentials ({status}, {self.config.auth_kind} auth) "
                f"while {what}; check the user and password or the token"
            )
        if code == 403:
            return PacsAuthError(f"{self.server}: access denied ({status}) while {what}")
        if code == 404:
            return PacsNotFoundError(f"{self.server}: not found ({status}) while {what}")
        return PacsError(f"{self.server}: the server answered {status} while {what}")

    # -------------------------------------------------------------- DICOMweb calls
    def search(
        self,
        level: str,
        filters: Mapping[str, str] | None = None,
        *,
        study_uid: str | None = None,
        series_uid: str | None = None,
        fields: tuple[str, ...] = (),
        limit: int | None = None,
        what: str = "",
    ) -> list[Dataset]:
        """QIDO-RS search at ``level`` (``studies``, ``series`` or ``instances``), all pages.

        Pages of :data:`QIDO_PAGE` results are requested with ``offset`` until a short or
        empty page. dicomweb-client's ``get_remaining`` is not used: it loops until an
        empty page, forever on a server that ignores ``offset`` (Orthanc 1.10 does with
        ModalitiesInStudy); here a page that brings nothing new ends the search.
        """
        key_tags = {
            "studies": ("0020000D",),
            "series": ("0020000D", "0020000E"),
            "instances": ("0020000D", "0020000E", "00080018"),
        }[level]
        results: list[dict[str, Any]] = []
        seen: set[tuple[str, ...]] = set()
        offset = 0
        with self.translate_errors(what or f"searching {level}"):
            while True:
                page_size = QIDO_PAGE if limit is None else min(QIDO_PAGE, limit - len(results))
                kwargs: dict[str, Any] = {
                    "search_filters": dict(filters or {}),
                    "fields": list(fields) or None,
                    "limit": page_size,
                    "offset": offset or None,
                }
                if level == "studies":
                    page = self._web.search_for_studies(**kwargs)
                elif level == "series":
                    page = self._web.search_for_series(study_instance_uid=study_uid, **kwargs)
                else:
                    page = self._web.search_for_instances(
                        study_instance_uid=study_uid, series_instance_uid=series_uid, **kwargs
                    )
                new = []
                for item in page:
                    key = tuple(str((item.get(t) or {}).get("Value", [""])[0]) for t in key_tags)
                    if key not in seen:
                        seen.add(key)
                        new.append(item)
                results.extend(new)
                if not new or len(page) < page_size or (limit is not None and len(results) >= limit):
                    break
                offset += len(page)
            return [Dataset.from_json(item) for item in results]

    def retrieve_series_metadata(self, study_uid: str, series_uid: str, *, what: str = "") -> list[Dataset]:
        """WADO-RS metadata of a series' instances (no bulk data: their values are left empty)."""
        with self.translate_errors(what or "retrieving series metadata"):
            items = self._web.retrieve_series_metadata(study_uid, series_uid)
            return [Dataset.from_json(item, bulk_data_uri_handler=lambda *_: b"") for item in items]

    def retrieve_instance(self, study_uid: str, series_uid: str, sop_uid: str, *, what: str = "") -> Dataset:
        """WADO-RS retrieval of one instance, in the transfer syntax it is stored in."""
        with self.translate_errors(what or "retrieving an instance"):
            return self._web.retrieve_instance(study_uid, series_uid, sop_uid)

    def store(self, dataset: Dataset, *, study_uid: str | None = None) -> tuple[Dataset, int | None]:
        """STOW-RS of one instance: (the server's response dataset, HTTP error status or None).

        A refusal that the server explains (HTTP 400/409 with a FailedSOPSequence) is
        returned, not raised, so the caller can report it per file.
        """
        with self.translate_errors("storing an instance (STOW-RS)"):
            try:
                return self._web.store_instances([dataset], study_instance_uid=study_uid), None
            except requests.exceptions.HTTPError as exc:
                response = exc.response
                if response is None or response.status_code not in (400, 409):
                    raise
                return _response_dataset(response), response.status_code


def _response_dataset(response: requests.Response) -> Dataset:
    try:
        data = response.json()
    except ValueError:
        return Dataset()
    try:
        return Dataset.from_json(data) if isinstance(data, dict) else Dataset()
    except Exception:  # an undecodable explanation is no explanation
        return Dataset()


def read_header(path: Path) -> Dataset:
    """A DICOM file's header (no pixels), or InputError naming the file."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (
        pydicom.errors.InvalidDicomError,
        pydicom.errors.BytesLengthException,  # a file cut inside an element's value ...
        struct.error,  # ... or inside an element's header
        OSError,
        ValueError,
        EOFError,
    ) as exc:
        raise InputError(path, "is not a readable DICOM file", found=type(exc).__name__) from None
