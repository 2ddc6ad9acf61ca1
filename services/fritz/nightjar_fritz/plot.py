"""Light curve -> small inline SVG for the candidates page (no plotting library).

Input: photometry rows as stored by the service (flux in microjansky at zero point 23.9;
magnitudes here are the service's own conversion, not the poster's).
Output: an SVG string: detections as filled circles, 5-sigma limits as open triangles,
magnitude axis inverted, one colour per band.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

from nightjar_fritz.payloads import PHOT_ZP

WIDTH, HEIGHT = 360, 170
_LEFT, _RIGHT, _TOP, _BOTTOM = 38, 10, 10, 26
COLOURS = {
    "ztfg": "#2e8b57", "ztfr": "#c0392b", "ztfi": "#d4a017",
    "lsstu": "#6a0dad", "lsstg": "#2e8b57", "lsstr": "#c0392b", "lssti": "#d4a017",
    "lsstz": "#555555", "lssty": "#333333",
    "ps1::y": "#7f5539", "2massj": "#8e44ad", "2massh": "#5d4037", "2massks": "#3e2723",
    "desu": "#6a0dad", "desg": "#2e8b57", "desr": "#c0392b", "desi": "#d4a017",
    "desz": "#555555", "desy": "#333333",
}  # fmt: skip
_LIMIT_NSIGMA = 5.0


def flux_to_mag(flux: float) -> float:
    """AB magnitude of a positive flux in microjansky (m = -2.5 log10(flux) + 23.9)."""
    return -2.5 * math.log10(flux) + PHOT_ZP


def light_curve_svg(rows: Sequence[Mapping[str, Any]]) -> str:
    """The light curve as an <svg> element (a short note when there is nothing to plot)."""
    points = [p for p in (_point(row) for row in rows) if p is not None]
    if not points:
        note = '<text x="10" y="20">no photometry</text>'
        return f'<svg width="{WIDTH}" height="{HEIGHT}" role="img">{note}</svg>'
    mjds = [p[0] for p in points]
    mags = [p[1] for p in points]
    x0, x1 = _padded(min(mjds), max(mjds), 1.0)
    bright, faint = _padded(min(mags), max(mags), 0.3)

    def x(mjd: float) -> float:
        return _LEFT + (mjd - x0) / (x1 - x0) * (WIDTH - _LEFT - _RIGHT)

    def y(mag: float) -> float:  # brighter (smaller) magnitudes at the top
        return _TOP + (mag - bright) / (faint - bright) * (HEIGHT - _TOP - _BOTTOM)

    marks = [_mark(x(mjd), y(mag), band, limit) for mjd, mag, band, limit in points]
    axes = _axes(x0, x1, bright, faint, x, y)
    legend = _legend(sorted({p[2] for p in points}, key=_band_order))
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="light curve">'
        + axes
        + "".join(marks)
        + legend
        + "</svg>"
    )


def _band_order(band: str) -> int:
    order = list(COLOURS)
    return order.index(band) if band in order else len(order)


def _legend(bands: Sequence[str]) -> str:
    """Band colours and the limit symbol, centred under the plot."""
    parts, cx = [], (WIDTH - 30 * len(bands) - 40) / 2 + 6
    for band in bands:
        colour = COLOURS.get(band, "#000000")
        label = html.escape(band.removeprefix("ztf").removeprefix("lsst"))
        parts.append(f'<circle cx="{cx:.0f}" cy="{HEIGHT - 11}" r="3" fill="{colour}"/>')
        parts.append(f'<text x="{cx + 6:.0f}" y="{HEIGHT - 7}" font-size="10">{label}</text>')
        cx += 30
    parts.append(f'<text x="{cx:.0f}" y="{HEIGHT - 7}" font-size="10">\u25bd limit</text>')
    return "".join(parts)


def _point(row: Mapping[str, Any]) -> tuple[float, float, str, bool] | None:
    mjd, flux, fluxerr = row.get("mjd"), row.get("flux"), row.get("fluxerr")
    band = str(row.get("filter", ""))
    if not isinstance(mjd, int | float):
        return None
    if isinstance(flux, int | float) and flux > 0:
        return float(mjd), flux_to_mag(flux), band, False
    if flux is None and isinstance(fluxerr, int | float) and fluxerr > 0:
        return float(mjd), flux_to_mag(_LIMIT_NSIGMA * fluxerr), band, True
    return None  # negative-flux detections are not drawn in magnitude space


def _mark(cx: float, cy: float, band: str, limit: bool) -> str:
    colour = COLOURS.get(band, "#000000")
    title = f"<title>{html.escape(band)}{' limit' if limit else ''}</title>"
    if limit:
        path = f"M{cx - 4:.1f},{cy - 3:.1f} L{cx + 4:.1f},{cy - 3:.1f} L{cx:.1f},{cy + 4:.1f} Z"
        return f'<path d="{path}" fill="none" stroke="{colour}" opacity="0.6">{title}</path>'
    return f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3.2" fill="{colour}">{title}</circle>'


def _axes(x0: float, x1: float, bright: float, faint: float, x: Any, y: Any) -> str:
    bottom, right = HEIGHT - _BOTTOM, WIDTH - _RIGHT
    parts = [
        f'<rect x="{_LEFT}" y="{_TOP}" width="{right - _LEFT}" height="{bottom - _TOP}" '
        'fill="#fafafa" stroke="#999"/>'
    ]
    for mag in range(math.ceil(bright), math.floor(faint) + 1):
        label = f'x="{_LEFT - 4}" y="{y(mag) + 4:.1f}" font-size="10" text-anchor="end"'
        parts.append(f"<text {label}>{mag}</text>")
    parts.append(f'<text x="{_LEFT}" y="{HEIGHT - 8}" font-size="10">MJD {x0:.1f}</text>')
    parts.append(
        f'<text x="{right}" y="{HEIGHT - 8}" font-size="10" text-anchor="end">{x1:.1f}</text>'
    )
    return "".join(parts)


def _padded(low: float, high: float, minimum: float) -> tuple[float, float]:
    span = max(high - low, minimum)
    middle = (low + high) / 2
    return middle - 0.55 * span, middle + 0.55 * span
