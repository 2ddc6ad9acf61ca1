"""The SkyPortal API subset of the Fritz-like service: routes and their handlers.

Input: authenticated `Request`s. Output: SkyPortal envelopes. Covers what Kowalski and
`nightjar post` call (candidates, photometry, thumbnails, annotations) plus sysinfo,
streams, groups, sources and the candidate list used by the candidates page.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from nightjar_fritz import __version__
from nightjar_fritz.payloads import (
    AnnotationPost,
    AnnotationPut,
    ApiError,
    CandidatePost,
    ThumbnailPost,
    parse,
    photometry_rows,
)
from nightjar_fritz.store import FritzStore
from nightjar_fritz.web import Request, Response, success

Handler = Callable[[Request], Response]
_OBJ = r"(?P<obj_id>[\w.+-]+)"
MAX_PER_PAGE = 500


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler


@dataclass(frozen=True, slots=True)
class Catalog:
    """What the service knows from configuration: filters, groups and streams by id."""

    filters: Mapping[int, str]
    groups: Mapping[int, str]
    streams: Mapping[int, str]


class Api:
    def __init__(self, store: FritzStore, catalog: Catalog) -> None:
        self.store = store
        self.catalog = catalog

    def routes(self) -> list[Route]:
        table: list[tuple[str, str, Handler]] = [
            ("GET", r"/api/sysinfo", self.sysinfo),
            ("GET", r"/api/streams", self.streams),
            ("GET", r"/api/groups/(?P<group_id>\d+)", self.group),
            ("HEAD", rf"/api/candidates/{_OBJ}", self.candidate_head),
            ("GET", rf"/api/candidates/{_OBJ}", self.candidate_get),
            ("GET", r"/api/candidates", self.candidate_list),
            ("POST", r"/api/candidates", self.candidate_post),
            ("PUT", r"/api/photometry", self.photometry_put),
            ("POST", r"/api/thumbnail", self.thumbnail_post),
            ("GET", rf"/api/sources/{_OBJ}", self.source_get),
            ("GET", rf"/api/sources/{_OBJ}/photometry", self.source_photometry),
            ("GET", rf"/api/sources/{_OBJ}/annotations", self.annotations_get),
            ("POST", rf"/api/sources/{_OBJ}/annotations", self.annotation_post),
            (
                "PUT",
                rf"/api/sources/{_OBJ}/annotations/(?P<annotation_id>\d+)",
                self.annotation_put,
            ),
        ]
        return [Route(m, re.compile(f"^{p}$"), h) for m, p, h in table]

    def sysinfo(self, request: Request) -> Response:
        return success(
            {
                "name": "Nightjar Fritz-like API",
                "version": __version__,
                "skyportal_api_subset": sorted(
                    {f"{r.method} {r.pattern.pattern}" for r in self.routes()}
                ),
                "database": self.store.db.name,
            }
        )

    def streams(self, request: Request) -> Response:
        return success([{"id": i, "name": n} for i, n in sorted(self.catalog.streams.items())])

    def group(self, request: Request) -> Response:
        group_id = int(request.match["group_id"])
        name = self.catalog.groups.get(group_id)
        if name is None:
            raise ApiError(404, f"group_id: no group {group_id}")
        filters = [
            {"id": fid, "name": fname, "group_id": group_id}
            for fid, fname in sorted(self.catalog.filters.items())
        ]
        return success({"id": group_id, "name": name, "nickname": name, "filters": filters})

    def candidate_head(self, request: Request) -> Response:
        obj_id = request.match["obj_id"]
        if not self.store.has_candidate(obj_id):
            raise ApiError(404, f"No candidate with object ID {obj_id}")
        return success()

    def candidate_get(self, request: Request) -> Response:
        obj_id = request.match["obj_id"]
        if not self.store.has_candidate(obj_id):
            raise ApiError(404, f"No candidate with object ID {obj_id}")
        return success(self.candidate_view(obj_id, photometry=_flag(request, "includePhotometry")))

    def candidate_list(self, request: Request) -> Response:
        filter_ids = _int_list(request.params.get("filterIDs"), "filterIDs")
        start = _date(request.params.get("startDate"), "startDate")
        end = _date(request.params.get("endDate"), "endDate")
        per_page = min(_int(request.params.get("numPerPage"), "numPerPage", 25), MAX_PER_PAGE)
        page = _int(request.params.get("pageNumber"), "pageNumber", 1)
        if per_page < 1 or page < 1:
            raise ApiError(400, "numPerPage and pageNumber must be positive")
        obj_ids = self.store.candidate_objs(filter_ids, start, end)
        selected = obj_ids[(page - 1) * per_page : page * per_page]
        photometry = _flag(request, "includePhotometry")
        return success(
            {
                "candidates": [self.candidate_view(o, photometry=photometry) for o in selected],
                "totalMatches": len(obj_ids),
                "pageNumber": page,
                "numPerPage": per_page,
            }
        )

    def candidate_view(self, obj_id: str, *, photometry: bool = False) -> dict[str, Any]:
        obj = self.store.obj(obj_id) or {"id": obj_id}
        passing = self.store.passing_alerts(obj_id)
        view = {
            **obj,
            "filter_ids": sorted({row["filter_id"] for row in passing}),
            "passing_alerts": passing,
            "thumbnails": self.store.thumbnails(obj_id),
            "annotations": self.store.annotations(obj_id),
        }
        if photometry:
            view["photometry"] = self.store.photometry(obj_id)
        return view

    def candidate_post(self, request: Request) -> Response:
        post = parse(CandidatePost, request.json())
        unknown = sorted(set(post.filter_ids) - set(self.catalog.filters))
        if unknown:
            raise ApiError(400, f"filter_ids: unknown filter id(s) {unknown}")
        self.store.upsert_obj(post)
        ids = self.store.add_candidates(post)
        self.store.log_write(
            "POST",
            request.path,
            {"obj_id": post.id, "filter_ids": post.filter_ids, "key": post.passing_alert_id},
        )
        return success({"ids": ids})

    def photometry_put(self, request: Request) -> Response:
        body = request.json()
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object")
        rows = photometry_rows(body)
        for obj_id in sorted({row.obj_id for row in rows}):
            self.store.require_obj(obj_id)
        ids = self.store.put_photometry(rows)
        obj_ids = sorted({row.obj_id for row in rows})
        self.store.log_write("PUT", request.path, {"obj_id": obj_ids[0], "points": len(rows)})
        return success({"ids": ids, "upload_id": f"nightjar-{datetime.now(UTC):%Y%m%dT%H%M%S%f}"})

    def thumbnail_post(self, request: Request) -> Response:
        post = parse(ThumbnailPost, request.json())
        self.store.require_obj(post.obj_id)
        thumbnail_id = self.store.put_thumbnail(post.obj_id, post.ttype, post.png())
        self.store.log_write("POST", request.path, {"obj_id": post.obj_id, "key": post.ttype})
        return success({"id": thumbnail_id})

    def source_get(self, request: Request) -> Response:
        obj_id = request.match["obj_id"]
        if self.store.obj(obj_id) is None:
            raise ApiError(404, f"No source with object ID {obj_id}")
        return success(self.candidate_view(obj_id, photometry=_flag(request, "includePhotometry")))

    def source_photometry(self, request: Request) -> Response:
        obj_id = request.match["obj_id"]
        self.store.require_obj(obj_id)
        return success(self.store.photometry(obj_id))

    def annotations_get(self, request: Request) -> Response:
        return success(self.store.annotations(request.match["obj_id"]))

    def annotation_post(self, request: Request) -> Response:
        obj_id = request.match["obj_id"]
        post = parse(AnnotationPost, request.json())
        self.store.require_obj(obj_id)
        group_ids = self._known_groups(post.group_ids)
        annotation_id = self.store.add_annotation(obj_id, post, group_ids)
        self.store.log_write("POST", request.path, {"obj_id": obj_id, "key": post.origin})
        return success({"annotation_id": annotation_id})

    def annotation_put(self, request: Request) -> Response:
        obj_id = request.match["obj_id"]
        put = parse(AnnotationPut, request.json())
        if put.group_ids is not None:
            self._known_groups(put.group_ids)
        self.store.update_annotation(obj_id, int(request.match["annotation_id"]), put)
        self.store.log_write("PUT", request.path, {"obj_id": obj_id, "key": put.origin})
        return success()

    def _known_groups(self, group_ids: list[int] | None) -> list[int]:
        if not group_ids:
            return sorted(self.catalog.groups)
        unknown = sorted(set(group_ids) - set(self.catalog.groups))
        if unknown:
            raise ApiError(400, f"group_ids: unknown group id(s) {unknown}")
        return group_ids


def _flag(request: Request, name: str) -> bool:
    return request.params.get(name, "").lower() in ("1", "true", "yes")


def _int(value: str | None, name: str, default: int) -> int:
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise ApiError(400, f"{name}: {value!r} is not an integer") from exc


def _int_list(value: str | None, name: str) -> list[int] | None:
    if not value:
        return None
    try:
        return [int(part) for part in value.split(",") if part.strip()]
    except ValueError as exc:
        raise ApiError(400, f"{name}: expected comma-separated integers, got {value!r}") from exc


def _date(value: str | None, name: str) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ApiError(
            400, f"{name}: {value!r} is not an ISO date (e.g. 2024-05-01T00:00)"
        ) from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
