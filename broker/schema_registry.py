"""Rubin/LSST writer schemas by Confluent schema id, for the decode stage.

Input: the 4-byte id of a Confluent-framed message (100 * major + minor, e.g. 701 = v7.1).
Output: the schema as plain JSON data, from a Confluent-compatible registry
(`GET {url}/schemas/ids/{id}`) when one is configured, else from local .avsc files: the
configured folder first, then every schema Rubin has released, as shipped in its
`lsst-alert-packet` package (installed without its dependencies by `make venv` and the
images: Nightjar reads only its .avsc files).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import requests
from fastavro.schema import load_schema

from broker.errors import BadAlert, TransientError, retry_transient
from broker.records import RejectReason
from broker.settings import SchemaSettings

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
# The surveys' published schemas shipped with Nightjar (simulate, offline decoding).
SCHEMA_ROOT = REPO_ROOT / "schemas"
# An id the registry did not know is asked again only after this long.
UNKNOWN_ID_RETRY_S = 60.0
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def lsst_schema_file(root: Path, schema_id: int) -> Path:
    """<root>/<major>/<minor>/lsst.v<major>_<minor>.alert.avsc for a Confluent schema id."""
    major, minor = divmod(schema_id, 100)
    return root / str(major) / str(minor) / f"lsst.v{major}_{minor}.alert.avsc"


RUBIN_PACKAGE = "lsst-alert-packet"


def packaged_schema_root() -> Path | None:
    """The schema folder of the installed `lsst-alert-packet` (<major>/<minor>/ inside), or
    None. Found from the package's metadata, without importing it (its code needs
    dependencies Nightjar does not install)."""
    try:
        distribution = metadata.distribution(RUBIN_PACKAGE)
    except metadata.PackageNotFoundError:
        return None
    root = Path(str(distribution.locate_file("lsst/alert/packet/schema")))
    return root if root.is_dir() else None


def resolve_schema_dir(directory: Path | None) -> Path:
    """The LSST schema folder: as configured (relative to the working directory, else to the
    repository), or the repository's own `schemas/lsst` when none is configured."""
    if directory is None:
        return SCHEMA_ROOT / "lsst"
    if directory.is_absolute() or directory.exists():
        return directory
    # config/nightjar.yaml says `schemas/lsst`: make that work from any working directory.
    return REPO_ROOT / directory


class SchemaRegistry:
    """Schema id -> plain JSON schema, cached; thread-safe.

    `get` raises BadAlert(unknown_schema) for an id that neither source knows, and
    TransientError when the registry cannot be reached after `retries` attempts: the
    message is fine, so the caller must retry it later rather than dead-letter it.
    """

    def __init__(
        self,
        url: str | None = None,
        directory: Path | None = None,
        *,
        timeout_s: float = 5.0,
        retries: int = 3,
        backoff_s: float = 0.5,
    ) -> None:
        self.url = url.rstrip("/") if url else None
        self.directory = resolve_schema_dir(directory)
        self.packaged = packaged_schema_root()
        self._timeout_s = timeout_s
        self._retries = max(1, retries)
        self._backoff_s = backoff_s
        self._schemas: dict[int, dict[str, Any]] = {}
        self._unknown: dict[int, float] = {}
        self._lock = threading.Lock()
        self._session: requests.Session | None = None

    @classmethod
    def from_settings(cls, settings: SchemaSettings) -> SchemaRegistry:
        return cls(settings.lsst_registry_url, settings.lsst_schema_dir)

    @property
    def source(self) -> str:
        if self.url:
            return f"registry {self.url}"
        if self.packaged is None:
            return f"folder {self.directory} (nor is {RUBIN_PACKAGE} installed: `make venv`)"
        return f"folder {self.directory} nor in {RUBIN_PACKAGE} {metadata.version(RUBIN_PACKAGE)}"

    def get(self, schema_id: int) -> dict[str, Any]:
        """The writer schema registered under `schema_id`, as plain JSON data."""
        cached = self._schemas.get(schema_id)
        if cached is not None:
            return cached
        with self._lock:
            if schema_id in self._schemas:
                return self._schemas[schema_id]
            failed_at = self._unknown.get(schema_id)
            if failed_at is not None and time.monotonic() - failed_at < UNKNOWN_ID_RETRY_S:
                raise BadAlert(RejectReason.UNKNOWN_SCHEMA, self._unknown_detail(schema_id))
            try:
                schema = self._fetch(schema_id) if self.url else self._load(schema_id)
            except BadAlert:
                self._unknown[schema_id] = time.monotonic()
                raise
            self._schemas[schema_id] = schema
            return schema

    def _unknown_detail(self, schema_id: int) -> str:
        major, minor = divmod(schema_id, 100)
        return f"schema id {schema_id} (v{major}.{minor}) is not in the {self.source}"

    def _load(self, schema_id: int) -> dict[str, Any]:
        roots = [root for root in (self.directory, self.packaged) if root is not None]
        found = [lsst_schema_file(root, schema_id) for root in roots]
        path = next((candidate for candidate in found if candidate.is_file()), None)
        if path is None:
            raise BadAlert(RejectReason.UNKNOWN_SCHEMA, self._unknown_detail(schema_id))
        try:
            # load_schema resolves the sibling files (lsst.vX_Y.diaSource.avsc, ...);
            # without the write hint it returns plain JSON data that fastavro re-parses.
            schema = load_schema(str(path), _write_hint=False)
        except Exception as exc:  # fastavro raises many types for a broken schema file
            log.error("cannot load LSST schema %s: %s", path, exc)
            raise BadAlert(
                RejectReason.UNKNOWN_SCHEMA, f"schema file {path} is not usable: {exc}"
            ) from exc
        if not isinstance(schema, dict):
            raise BadAlert(RejectReason.UNKNOWN_SCHEMA, f"schema file {path} is not a record")
        log.info("loaded LSST schema id %d (%s) from %s", schema_id, schema.get("name"), path)
        return schema

    def _fetch(self, schema_id: int) -> dict[str, Any]:
        url = f"{self.url}/schemas/ids/{schema_id}"
        try:
            response = retry_transient(
                lambda: self._get(url, schema_id),
                what=f"schema registry {url}",
                attempts=self._retries,
                first_delay=self._backoff_s,
                max_delay=10.0,
            )
        except TransientError as exc:
            raise TransientError(
                f"schema registry {url} unreachable after {self._retries} attempts ({exc})"
            ) from exc
        if response.status_code != 200:
            raise TransientError(
                f"schema registry {url} answered HTTP {response.status_code}: "
                f"{response.text[:200]} (check schemas.lsst_registry_url and its access)"
            )
        return self._parse_response(schema_id, response)

    def _get(self, url: str, schema_id: int) -> requests.Response:
        """One request; TransientError for what a retry may cure (timeouts, 408/429/5xx)."""
        if self._session is None:
            self._session = requests.Session()
        try:
            response = self._session.get(url, timeout=self._timeout_s)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise TransientError(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code == 404:
            raise BadAlert(RejectReason.UNKNOWN_SCHEMA, self._unknown_detail(schema_id))
        if response.status_code in _TRANSIENT_STATUS:
            raise TransientError(f"HTTP {response.status_code}")
        return response

    def _parse_response(self, schema_id: int, response: requests.Response) -> dict[str, Any]:
        try:
            schema = json.loads(response.json()["schema"])
        except (ValueError, KeyError, TypeError) as exc:
            raise BadAlert(
                RejectReason.UNKNOWN_SCHEMA,
                f"registry {self.url} returned no usable schema for id {schema_id}: {exc}",
            ) from exc
        if not isinstance(schema, dict):
            raise BadAlert(
                RejectReason.UNKNOWN_SCHEMA, f"registry schema id {schema_id} is not a record"
            )
        log.info(
            "loaded LSST schema id %d (%s) from registry %s",
            schema_id,
            schema.get("name"),
            self.url,
        )
        return schema
