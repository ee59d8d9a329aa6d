"""One PACS over DICOMweb, through dicomweb-client: QIDO-RS searches (paged), WADO-RS retrieval of a series in a
transfer syntax medseg decodes, the metadata of the study's earlier results, and STOW-RS with each instance's outcome.

Credentials come from the environment (``MEDSEG_DICOMWEB_USER`` + ``MEDSEG_DICOMWEB_PASSWORD`` for HTTP basic, or
``MEDSEG_DICOMWEB_TOKEN`` for a bearer token), else from ``~/.netrc`` (requests reads it); they are never printed or
logged, and a URL carrying them is refused. ``MEDSEG_DICOMWEB_CA_BUNDLE`` (or ``ca_bundle``) names the CA bundle for
TLS. Requests are retried with exponential backoff on 5xx, 429, timeouts and refused connections (urllib3's Retry):
STOW is safe to repeat because medseg's output UIDs are derived from the source and the model.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from medseg.core.errors import ConfigError, DataError, MedsegError

log = logging.getLogger(__name__)

ENV_USER, ENV_PASSWORD, ENV_TOKEN = "MEDSEG_DICOMWEB_USER", "MEDSEG_DICOMWEB_PASSWORD", "MEDSEG_DICOMWEB_TOKEN"
ENV_CA_BUNDLE = "MEDSEG_DICOMWEB_CA_BUNDLE"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"  # what WADO-RS is asked for: decoded by every reader medseg uses
PAGE = 100  # QIDO-RS results per request
RETRY_STATUSES = (429, 500, 502, 503, 504)
OUTPUT_MODALITIES = {"dicom-seg": "SEG", "rtstruct": "RTSTRUCT"}
SERIES_FIELDS = (
    "SeriesDescription",
    "SeriesNumber",
    "Modality",
    "PatientID",
    "StudyDate",
    "NumberOfSeriesRelatedInstances",
)
FAILURE_REASONS = {  # PS3.18 STOW-RS / PS3.4 C-STORE failure reasons
    0x0110: "processing failure",
    0x0122: "SOP class not supported",
    0xA700: "out of resources",
    0xA900: "data set does not match SOP class",
    0xC000: "cannot understand",
}


@dataclass(frozen=True)
class DicomwebSource:
    """Where the series come from and whether the results go back (``--dicomweb`` options or
    ``prediction.dicomweb``)."""

    url: str
    study: str | None = None
    series: str | None = None
    query: tuple[tuple[str, str], ...] = ()
    channels: tuple[str, ...] = ()
    store: bool = False
    ca_bundle: Path | None = None


class PacsError(MedsegError):
    """The PACS cannot be used at all: not reachable, credentials refused, TLS failed (exit code 2)."""


@dataclass(frozen=True)
class SeriesInfo:
    """A series as QIDO-RS describes it."""

    study_uid: str
    series_uid: str
    modality: str = ""
    description: str = ""
    number: str = ""
    patient_id: str = ""
    study_date: str = ""
    instances: int | None = None

    @classmethod
    def from_json(cls, item: dict[str, Any]) -> SeriesInfo:
        from pydicom import Dataset

        ds = Dataset.from_json(item)
        count = ds.get("NumberOfSeriesRelatedInstances")
        return cls(
            str(ds.get("StudyInstanceUID", "")),
            str(ds.get("SeriesInstanceUID", "")),
            str(ds.get("Modality", "")),
            str(ds.get("SeriesDescription", "")),
            str(ds.get("SeriesNumber", "") or ""),
            str(ds.get("PatientID", "")),
            str(ds.get("StudyDate", "")),
            int(count) if count not in (None, "") else None,
        )


def check_url(url: str) -> str:
    """``url`` without a trailing slash; ConfigError for anything but an http(s) URL without credentials in it."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"--dicomweb {url}: not an http(s) URL (e.g. https://pacs.example.org/dicom-web)")
    if parts.username or parts.password:
        raise ConfigError(
            f"--dicomweb {parts.hostname}: credentials in the URL; set {ENV_USER} and {ENV_PASSWORD} "
            f"(or {ENV_TOKEN}, or ~/.netrc) instead"
        )
    return url.rstrip("/")


class Pacs:
    """A DICOMweb service at ``url``: searches, retrieval and storage, with one-line errors."""

    def __init__(self, url: str, ca_bundle: Path | None = None, timeout: float = 60.0) -> None:
        try:
            from dicomweb_client.api import DICOMwebClient
        except ImportError:
            raise ConfigError("--dicomweb: needs dicomweb-client: pip install 'medseg[pacs]'") from None

        self.url = check_url(url)
        logging.getLogger("dicomweb_client").setLevel(logging.WARNING)  # one line per request otherwise
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # each retry; the last failure is ours
        self.client = DICOMwebClient(self.url, session=_session(ca_bundle), timeout=timeout)
        self.client.set_http_retry_params(retry=False)  # the session's urllib3 Retry does it, timeouts included

    def _call(self, what: str, function: Any, *args: Any, **kwargs: Any) -> Any:
        """``function(*args, **kwargs)``; PacsError when the PACS cannot be used, DataError naming ``what`` when
        this request failed."""
        import requests

        try:
            return function(*args, **kwargs)
        except requests.exceptions.SSLError as exc:
            raise PacsError(f"--dicomweb {self.url}: TLS failed ({_reason(exc)}); set {ENV_CA_BUNDLE}") from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise PacsError(f"--dicomweb {self.url}: cannot connect ({_reason(exc)}); is the PACS running?") from None
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if status in (401, 403):
                raise PacsError(
                    f"--dicomweb {self.url}: {status} {exc.response.reason}: check {ENV_USER}/{ENV_PASSWORD}, "
                    f"{ENV_TOKEN} or ~/.netrc"
                ) from None
            raise DataError(
                f"{what}: HTTP {status} {exc.response.reason if exc.response is not None else ''}"
            ) from None

    def search_series(
        self, study: str | None = None, series: str | None = None, filters: dict[str, str] | None = None
    ) -> list[SeriesInfo]:
        """Every series matching, page by page (QIDO-RS ``limit``/``offset``)."""
        filters = dict(filters or {})
        if series:
            filters["SeriesInstanceUID"] = series
        found: list[SeriesInfo] = []
        while True:
            page = self._call(
                "QIDO-RS series search",
                self.client.search_for_series,
                study_instance_uid=study,
                search_filters=filters,
                fields=list(SERIES_FIELDS),
                limit=PAGE,
                offset=len(found),
            )
            found += [SeriesInfo.from_json(item) for item in page]
            if len(page) < PAGE:
                return found

    def results_in_study(self, study: str, modalities: list[str]) -> list[Any]:
        """The metadata (pydicom datasets, no pixels) of the study's instances of ``modalities`` (SEG, RTSTRUCT)."""
        from pydicom import Dataset

        metadata = []
        for modality in modalities:
            instances = self._call(
                f"study {study}: QIDO-RS {modality} search",
                self.client.search_for_instances,
                study_instance_uid=study,
                search_filters={"Modality": modality},
                fields=["SeriesDescription"],
            )
            for item in instances:
                info = Dataset.from_json(item)
                metadata.append(
                    Dataset.from_json(
                        self._call(
                            f"instance {info.SOPInstanceUID}: WADO-RS metadata",
                            self.client.retrieve_instance_metadata,
                            study,
                            str(info.SeriesInstanceUID),
                            str(info.SOPInstanceUID),
                        ),
                        bulk_data_uri_handler=lambda *_: b"",  # the pixels are not needed
                    )
                )
        return metadata

    def retrieve_series(self, info: SeriesInfo, folder: Path) -> list[Path]:
        """The series' instances as explicit VR little endian files in ``folder``; DataError when it is gone."""
        datasets = self._call(
            f"series {info.series_uid}: WADO-RS retrieve",
            self.client.retrieve_series,
            info.study_uid,
            info.series_uid,
            media_types=(("application/dicom", EXPLICIT_VR_LITTLE_ENDIAN),),
        )
        if not datasets:
            raise DataError(f"series {info.series_uid}: WADO-RS retrieve returned no instances")
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for index, dataset in enumerate(datasets):
            path = folder / f"{index:05d}.dcm"
            dataset.save_as(str(path), enforce_file_format=True)
            paths.append(path)
        return paths

    def store(self, study: str, paths: list[Path]) -> dict[Path, str]:
        """STOW-RS ``paths`` in one request; each file's outcome: ``stored``, or ``failed: <the PACS's reason>``.

        An instance counts as stored when the response lists it and a QIDO-RS search then finds it (a PACS may
        acknowledge an instance that a filter dropped)."""
        import pydicom
        import requests

        datasets = [pydicom.dcmread(str(path)) for path in paths]
        uids = {str(ds.SOPInstanceUID): path for ds, path in zip(datasets, paths, strict=True)}
        try:
            response = self._call(f"study {study}: STOW-RS", self.client.store_instances, datasets, study)
        except DataError as exc:  # the whole request refused: every instance with the reason
            return {path: f"failed: {exc}" for path in paths}
        except requests.RequestException as exc:
            return {path: f"failed: {_reason(exc)}" for path in paths}
        outcomes = {path: "failed: not acknowledged by the PACS" for path in paths}
        for item in response.get("FailedSOPSequence", []):
            path = uids.get(str(item.get("ReferencedSOPInstanceUID", "")))
            if path is not None:
                code = int(item.get("FailureReason", 0) or 0)
                outcomes[path] = f"failed: 0x{code:04X} {FAILURE_REASONS.get(code, 'refused')}"
        for item in response.get("ReferencedSOPSequence", []):
            uid = str(item.get("ReferencedSOPInstanceUID", ""))
            if uid in uids:
                kept = self._call(
                    f"instance {uid}: QIDO-RS",
                    self.client.search_for_instances,
                    study_instance_uid=study,
                    search_filters={"SOPInstanceUID": uid},
                )
                outcomes[uids[uid]] = "stored" if kept else "failed: acknowledged but not kept by the PACS (filtered?)"
        return outcomes


def _session(ca_bundle: Path | None) -> Any:
    """A requests session with the credentials of the environment (else ~/.netrc), the CA bundle and retries."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    session = requests.Session()
    user, password, token = (os.environ.get(name) for name in (ENV_USER, ENV_PASSWORD, ENV_TOKEN))
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    elif user:
        session.auth = (user, password or "")
    bundle = ca_bundle or (Path(os.environ[ENV_CA_BUNDLE]) if os.environ.get(ENV_CA_BUNDLE) else None)
    if bundle is not None:
        if not bundle.is_file():
            raise ConfigError(f"{ENV_CA_BUNDLE} (prediction.dicomweb.ca_bundle) {bundle}: no such file")
        session.verify = str(bundle)
    retry = Retry(
        total=4,
        connect=2,
        read=2,
        status=3,
        backoff_factor=0.3,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=None,  # POST too: a STOW retry stores the same instances
        raise_on_status=False,
    )
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _reason(exc: BaseException) -> str:
    """The innermost reason of a requests/urllib3 error, without the URL's query or any header."""
    text = str(exc)
    for marker in ("Caused by ", "Failed to establish a new connection: "):
        if marker in text:
            text = text.split(marker, 1)[1]
    return text.strip("()'\" ").split("'))")[0][:200] or type(exc).__name__
