"""Plain request/response records of the Fritz-like service and SkyPortal's JSON envelope.

Input: what the HTTP handler read (method, path, query, headers, body). Output: status,
headers and body bytes; `success`/`error` wrap data as SkyPortal does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from nightjar_fritz import __version__
from nightjar_fritz.payloads import ApiError


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    params: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes = b""
    match: Mapping[str, str] = field(default_factory=dict)  # named groups of the route

    def json(self) -> Any:
        if not self.body:
            raise ApiError(400, "request body is empty; send a JSON object")
        try:
            return json.loads(self.body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ApiError(400, f"request body is not valid JSON: {exc}") from exc

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == lowered), None)


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def success(data: Any = None) -> Response:
    return _envelope(200, {"status": "success", "data": {} if data is None else data})


def error(status: int, message: str) -> Response:
    return _envelope(status, {"status": "error", "message": message, "data": {}})


def _envelope(status: int, content: dict[str, Any]) -> Response:
    content["version"] = f"nightjar-{__version__}"
    return Response(status=status, body=json.dumps(content, default=_jsonable).encode())


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return None  # image bytes are served from /static, never inside JSON
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
