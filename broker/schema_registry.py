"""Writer schemas for the decode stage: Rubin/LSST ones by Confluent schema id, and the
cache of every writer schema decode has met, which the publish stage re-encodes with.

Input: the 4-byte id of a Confluent-framed message (100 * major + minor, e.g. 701 = v7.1).
Output: the schema as plain JSON data, from a Confluent-compatible registry
(`GET {url}/schemas/ids/{id}`) when one is configured, else from local .avsc files: the
configured folder first, then every schema Rubin has released, as shipped in its
`lsst-alert-packet` package (installed without its dependencies by `make venv` and the
images: Nightjar reads only its .avsc files). `WriterSchemas`: key -> parsed schema, filled
by decode, read by publish (broker.app gives both the same instance).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests
from fastavro.schema import load_schema

from broker.errors import BadAlert, TransientError, retry_transient
from broker.records import RejectReason
from broker.settings import SchemaSettings
from broker.surveys import SurveyAdapter

if TYPE_CHECKING:
    from broker.avro.guard import Shape  # schema_guard reads SCHEMA_ROOT from here

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
# The surveys' published schemas shipped with Nightjar (simulate, offline decoding).
SCHEMA_ROOT = REPO_ROOT / "schemas"
# An id the registry did not know is asked again only after this long.
UNKNOWN_ID_RETRY_S = 60.0
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# Distinct writer schemas kept parsed; a healthy stream has a handful.
MAX_CACHED_SCHEMAS = 256


@dataclass(frozen=True, slots=True)
class WriterSchema:
    """A writer schema parsed once: `parsed` feeds fastavro, `plain` is its JSON data."""

    key: str  # '<record name>@<fingerprint>': stable across processes
    name: str  # full record name, e.g. 'ztf.alert', 'lsst.v7_1.alert'
    version: str
    plain: dict[str, Any]
    parsed: dict[str, Any]
    adapter: SurveyAdapter
    shape: Shape  # checked by broker.avro.guard: bounds what a message costs to decode


class WriterSchemas:
    """Writer schemas by key: decode adds each one it meets, publish encodes with them.

    Thread-safe: decode adds on the main thread while the writer thread publishes. Bounded
    (the oldest is dropped past MAX_CACHED_SCHEMAS): only a corrupt or hostile stream gets
    there, and an alert is published before the hundreds of schemas that would evict its own.
    """

    def __init__(self) -> None:
        self._by_key: dict[str, WriterSchema] = {}
        self._lock = threading.Lock()

    def add(self, schema: WriterSchema) -> WriterSchema:
        """The schema kept under `schema.key`: the one known already, else `schema`."""
        with self._lock:
            known = self._by_key.get(schema.key)
            if known is not None:
                return known
            if len(self._by_key) >= MAX_CACHED_SCHEMAS:
                del self._by_key[next(iter(self._by_key))]
            self._by_key[schema.key] = schema
            return schema

    def parsed(self, key: str) -> dict[str, Any]:
        """The parsed schema of a decoded alert's `schema_key` (do not mutate)."""
        with self._lock:
            schema = self._by_key.get(key)
        if schema is None:
            raise KeyError(f"schema {key!r} was not seen by this Decoder")
        return schema.parsed


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
