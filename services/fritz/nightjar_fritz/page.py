"""The candidates page (`GET /` or `/candidates`): what an operator scans each night.

Input: the selection from the query string (filter, time window, page). Output: one HTML
page: per candidate its three thumbnails, model scores, passing filters and a light curve.
Every value is HTML-escaped; images come from /static/thumbnails like SkyPortal's.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from nightjar_fritz.api import Api
from nightjar_fritz.payloads import ApiError
from nightjar_fritz.plot import light_curve_svg

PER_PAGE = 20
WINDOWS_HOURS = (6, 24, 72, 168, 720)
_STYLE = """
body{font-family:system-ui,sans-serif;margin:16px;color:#222;background:#f4f5f7}
h1{font-size:20px;margin:0 0 8px}form{margin:8px 0 12px}form *{margin-right:8px}
.card{display:flex;gap:14px;background:#fff;border:1px solid #ddd;border-radius:6px;
padding:10px;margin-bottom:10px;align-items:flex-start}.meta{width:220px;font-size:13px}
.meta b{font-size:15px}.thumbs{display:flex;gap:6px}.thumbs figure{margin:0;text-align:center;
font-size:11px}.thumbs img{width:126px;height:126px;image-rendering:pixelated;border:1px solid #ccc;
background:#000}table.scores{font-size:12px;border-collapse:collapse}
table.scores td{padding:1px 6px;border-bottom:1px solid #eee}.none{color:#888}
"""


def render(api: Api, params: Mapping[str, str], now: datetime | None = None) -> str:
    """The whole page for this selection."""
    now = now or datetime.now(UTC)
    filter_id = _filter_id(params.get("filter"), api)
    start, end = _window(params, now)
    page = max(1, _positive(params.get("page"), 1))
    obj_ids = api.store.candidate_objs([filter_id] if filter_id else None, start, end)
    shown = obj_ids[(page - 1) * PER_PAGE : page * PER_PAGE]
    cards = "".join(_card(api, obj_id) for obj_id in shown) or '<p class="none">No candidates.</p>'
    summary = (
        f"{len(obj_ids)} candidate(s) passed between {start:%Y-%m-%d %H:%M} and "
        f"{end:%Y-%m-%d %H:%M} UTC"
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Nightjar candidates</title>"
        f"<style>{_STYLE}</style></head><body><h1>Nightjar candidates</h1>"
        f"{_form(api, params, filter_id)}<p>{html.escape(summary)}</p>{cards}"
        f"{_pager(params, page, len(obj_ids))}</body></html>"
    )


def _card(api: Api, obj_id: str) -> str:
    view = api.candidate_view(obj_id, photometry=True)
    esc = html.escape
    passing = view["passing_alerts"]
    latest = passing[-1] if passing else {}
    filters = ", ".join(
        esc(api.catalog.filters.get(fid, str(fid))) for fid in view.get("filter_ids", [])
    )
    passed_at = latest.get("passed_at")
    meta = (
        f"<div class='meta'><b>{esc(obj_id)}</b><br>RA {view.get('ra', 0):.5f} "
        f"Dec {view.get('dec', 0):+.5f}<br>filters: {filters}<br>"
        f"passed: {esc(f'{passed_at:%Y-%m-%d %H:%M:%S}' if passed_at else '?')}<br>"
        f"alert: {esc(str(latest.get('passing_alert_id', '?')))}</div>"
    )
    return (
        f"<div class='card' id='{esc(obj_id)}'>{meta}{_thumbnails(view)}"
        f"{_scores(view['annotations'])}<div>{light_curve_svg(view['photometry'])}</div></div>"
    )


def _thumbnails(view: Mapping[str, Any]) -> str:
    available = {t["type"]: t["public_url"] for t in view["thumbnails"]}
    figures = []
    for ttype, label in (("new", "science"), ("ref", "reference"), ("sub", "difference")):
        url = available.get(ttype)
        image = (
            f"<img src='{html.escape(url)}' alt='{label}'>"
            if url
            else "<div class='none'>missing</div>"
        )
        figures.append(f"<figure>{image}<figcaption>{label}</figcaption></figure>")
    return f"<div class='thumbs'>{''.join(figures)}</div>"


def _scores(annotations: list[Mapping[str, Any]]) -> str:
    rows = []
    for annotation in annotations:
        for key, value in sorted((annotation.get("data") or {}).items()):
            if key == "candid":
                continue
            shown = f"{value:.3f}" if isinstance(value, float) else str(value)
            rows.append(f"<tr><td>{html.escape(key)}</td><td>{html.escape(shown)}</td></tr>")
    if not rows:
        return "<div class='none'>no scores</div>"
    return f"<table class='scores'><tr><th colspan=2>scores</th></tr>{''.join(rows)}</table>"


def _form(api: Api, params: Mapping[str, str], filter_id: int | None) -> str:
    options = ["<option value=''>all filters</option>"] + [
        f"<option value='{fid}'{' selected' if fid == filter_id else ''}>"
        f"{html.escape(name)} ({fid})</option>"
        for fid, name in sorted(api.catalog.filters.items())
    ]
    hours = params.get("hours", "24")
    windows = [
        f"<option value='{h}'{' selected' if str(h) == hours else ''}>last {h} h</option>"
        for h in WINDOWS_HOURS
    ]
    start = html.escape(params.get("start", ""))
    end = html.escape(params.get("end", ""))
    return (
        f"<form method='get' action='/candidates'><select name='filter'>{''.join(options)}"
        f"</select><select name='hours'>{''.join(windows)}</select>"
        f"from <input name='start' placeholder='2024-05-01T00:00' value='{start}'>"
        f"to <input name='end' placeholder='(now)' value='{end}'>"
        "<button type='submit'>Show</button></form>"
    )


def _pager(params: Mapping[str, str], page: int, total: int) -> str:
    links = []
    if page > 1:
        links.append(f"<a href='?{_query(params, page - 1)}'>&larr; newer</a>")
    if page * PER_PAGE < total:
        links.append(f"<a href='?{_query(params, page + 1)}'>older &rarr;</a>")
    return f"<p>{' | '.join(links)}</p>" if links else ""


def _query(params: Mapping[str, str], page: int) -> str:
    return html.escape(
        urlencode({**{k: v for k, v in params.items() if k != "token"}, "page": page})
    )


def _filter_id(value: str | None, api: Api) -> int | None:
    if not value:
        return None
    filter_id = _positive(value, 0)
    if filter_id not in api.catalog.filters:
        raise ApiError(400, f"filter: unknown filter id {value!r}")
    return filter_id


def _window(params: Mapping[str, str], now: datetime) -> tuple[datetime, datetime]:
    end = _parse_time(params.get("end"), "end") or now
    start = _parse_time(params.get("start"), "start")
    if start is None:
        start = end - timedelta(hours=_positive(params.get("hours"), 24))
    return start, end


def _parse_time(value: str | None, name: str) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ApiError(400, f"{name}: {value!r} is not a date like 2024-05-01T00:00") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _positive(value: str | None, default: int) -> int:
    try:
        number = int(value) if value else default
    except ValueError as exc:
        raise ApiError(400, f"{value!r} is not a whole number") from exc
    return number if number > 0 else default
