"""`nightjar models fetch`: published weights -> verified ONNX model in the cache.

Input: registry entries, their canonical URLs (requests, streamed, tqdm progress) or a
local --mirror folder with the same file names. Output: <models dir>/<name>/<version>/
model.onnx + manifest.json, after sha256 verification and a TensorFlow-vs-ONNX check.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import time
from pathlib import Path

import onnxruntime as ort
import requests
from tqdm import tqdm

from broker.errors import ConfigError, NightjarError, TransientError
from broker.tools.models.convert import MAX_ABS_DIFF, convert
from workers.models.manifest import (
    ONNX_FILE,
    Manifest,
    install_dir,
    sha256_file,
    write_manifest,
)
from workers.models.registry import ModelSpec
from workers.runtime import ORT_LOAD_ERRORS

log = logging.getLogger(__name__)

DOWNLOADS = "downloads"
# Weights Nightjar trains itself ship in the repository; an entry without a URL whose file
# is here installs from it (its sha256 is still checked).
BUNDLED = Path(__file__).resolve().parents[3] / "workers" / "models" / "weights"
ATTEMPTS = 3
TIMEOUT_S = 60


class FetchError(NightjarError):
    """A model file could not be obtained or does not match its pinned sha256."""


def fetch(
    spec: ModelSpec, models_dir: Path, mirror: Path | None = None, progress: bool = True
) -> Manifest:
    """Install one entry: obtain and verify the source, convert if needed, write the manifest."""
    source = spec.source
    if source is None:
        raise ConfigError(f"model {spec.name} is computed from the packet; nothing to fetch")
    if source.sha256 is None:
        raise ConfigError(
            f"model {spec.name}: the registry pins no sha256 for {source.file}; add "
            f"`sha256: <output of sha256sum {source.file}>` to its source in the registry"
        )
    path = obtain(spec, models_dir, mirror, progress)
    example_dir = mirror if mirror is not None else path.parent
    if source.format == "onnx":
        onnx_bytes, diff, probe, versions = path.read_bytes(), None, "none (published ONNX)", {}
        check_onnx(spec, onnx_bytes)
    else:
        converted = convert(spec, path, example_dir)
        onnx_bytes, diff = converted.onnx, converted.max_abs_diff
        probe, versions = converted.probe, converted.versions
    target = install_dir(models_dir, spec)
    target.mkdir(parents=True, exist_ok=True)
    partial = target / (ONNX_FILE + ".part")
    partial.write_bytes(onnx_bytes)
    partial.replace(target / ONNX_FILE)
    return write_manifest(
        models_dir,
        spec,
        {
            "name": spec.name,
            "version": spec.version,
            "source_url": source.url,
            "source_sha256": source.sha256,
            "onnx_sha256": sha256_file(target / ONNX_FILE),
            "source_format": source.format,
            "opset": int(versions["opset"]) if "opset" in versions else None,
            "max_abs_diff": diff,
            "max_abs_diff_limit": MAX_ABS_DIFF,
            "probe": probe,
            "versions": versions,
            "converted_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        },
    )


def check_onnx(spec: ModelSpec, onnx_bytes: bytes) -> None:
    """Refuse an ONNX file that ONNX Runtime cannot load or whose inputs differ from the entry."""
    try:
        session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    except ORT_LOAD_ERRORS as exc:
        raise FetchError(f"model {spec.name}: ONNX Runtime cannot load it: {exc}") from exc
    have = sorted(node.name for node in session.get_inputs())
    want = sorted(tensor.name for tensor in spec.inputs)
    if have != want:
        raise FetchError(f"model {spec.name}: the ONNX file takes {have}, the registry says {want}")


def obtain(spec: ModelSpec, models_dir: Path, mirror: Path | None, progress: bool) -> Path:
    """The verified source file in <models dir>/downloads (reused when already verified)."""
    assert spec.source is not None and spec.source.sha256 is not None
    target = models_dir / DOWNLOADS / spec.source.file
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_file() and sha256_file(target) == spec.source.sha256:
        return target
    partial = target.with_name(target.name + ".part")
    bundled = BUNDLED / spec.source.file
    if spec.source.url is None and bundled.is_file():
        shutil.copyfile(bundled, partial)
    elif mirror is not None:
        shutil.copyfile(find_in_mirror(mirror, spec.source.file, spec.name), partial)
    elif spec.source.url is None:
        raise FetchError(
            f"model {spec.name} has no public URL; put {spec.source.file} in a folder and run "
            f"`nightjar models fetch --mirror DIR {spec.name}`"
        )
    else:
        download(spec.source.url, partial, progress)
    actual = sha256_file(partial)
    if actual != spec.source.sha256:
        partial.unlink()
        raise FetchError(
            f"model {spec.name}: {spec.source.file} has sha256 {actual}, the registry pins "
            f"{spec.source.sha256}; the file is corrupt or not the published one"
        )
    partial.replace(target)
    return target


def find_in_mirror(mirror: Path, file: str, name: str) -> Path:
    """`file` directly in the mirror folder or in one of its sub-folders."""
    if not mirror.is_dir():
        raise FetchError(f"--mirror {mirror} is not a folder")
    for candidate in (mirror / file, *sorted(mirror.glob(f"*/{file}"))):
        if candidate.is_file():
            return candidate
    raise FetchError(f"model {name}: {file} is neither in {mirror} nor in its sub-folders")


def download(url: str, target: Path, progress: bool) -> None:
    """Stream `url` to `target`, retrying timeouts and 5xx with capped backoff."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            _stream(url, target, progress)
            return
        except TransientError as exc:
            if attempt == ATTEMPTS:
                raise FetchError(f"cannot download {url} after {ATTEMPTS} tries: {exc}") from exc
            delay = min(2**attempt, 10)
            log.warning("download of %s failed (%s); retrying in %d s", url, exc, delay)
            time.sleep(delay)


def _stream(url: str, target: Path, progress: bool) -> None:
    try:
        with requests.get(url, stream=True, timeout=TIMEOUT_S) as response:
            if response.status_code >= 500:
                raise TransientError(f"HTTP {response.status_code}")
            if response.status_code != 200:
                raise FetchError(f"cannot download {url}: HTTP {response.status_code}")
            total = int(response.headers.get("content-length", 0)) or None
            with (
                target.open("wb") as handle,
                tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    desc=target.name.removesuffix(".part"),
                    disable=not progress,
                ) as bar,
            ):
                for chunk in response.iter_content(chunk_size=1 << 16):
                    handle.write(chunk)
                    bar.update(len(chunk))
    except (requests.Timeout, requests.ConnectionError) as exc:
        raise TransientError(str(exc)) from exc
