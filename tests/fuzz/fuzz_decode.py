"""Coverage-guided fuzzing of the decode path (atheris/libFuzzer): bytes -> Alert or BadAlert.

Input: libFuzzer's arguments (-runs=N, -max_total_time=S, -rss_limit_mb=M, ...), and a
corpus folder (FUZZ_CORPUS, default a temporary one) seeded with simulated ZTF container
files and LSST Confluent frames, the hostile corpus of broker.tools.fuzz_corpus and, where
present, the real samples in ../shared/reference. Output: exit 0, or libFuzzer's crash
report naming the input: any exception other than BadAlert is a finding. `make fuzz` runs it
long; tests/unit/test_fuzz_decode.py runs it briefly in `make test`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["broker"]):
    from broker.decode import Decoder
    from broker.errors import BadAlert
    from broker.settings import SchemaSettings

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO.parent / "shared" / "reference"
# Small enough that libFuzzer's mutations reach the oversized path now and then.
MAX_MESSAGE_BYTES = 1 << 20
MAX_DECODE_BYTES = 8 << 20

DECODER = Decoder(
    SchemaSettings(lsst_schema_dir=REFERENCE / "lsst" / "schema" if REFERENCE.is_dir() else None),
    MAX_MESSAGE_BYTES,
    max_decode_bytes=MAX_DECODE_BYTES,
)


def test_one_input(data: bytes) -> None:
    """One message through the broker's decoder: an Alert or BadAlert, nothing else."""
    with contextlib.suppress(BadAlert):
        DECODER.decode(data)


def seed_corpus(folder: Path) -> int:
    """Write the seed messages into `folder` (one file each, named by content); their count."""
    from broker.tools.fuzz_corpus import hostile_corpus
    from broker.tools.simulate import iter_alerts

    seeds = [*iter_alerts("ztf", 4, seed=11), *iter_alerts("lsst", 4, seed=11)]
    seeds += [case.data for case in hostile_corpus(seeds[0], seeds[4], DECODER, damaged=2)]
    if REFERENCE.is_dir():
        seeds += [path.read_bytes() for path in sorted(REFERENCE.rglob("alerts/**/*.avro"))]
    folder.mkdir(parents=True, exist_ok=True)
    for data in seeds:
        if len(data) <= MAX_MESSAGE_BYTES:
            (folder / hashlib.sha1(data).hexdigest()).write_bytes(data)
    return len(seeds)


def main() -> None:
    corpus = Path(os.environ.get("FUZZ_CORPUS") or tempfile.mkdtemp(prefix="nightjar-fuzz-"))
    if not any(corpus.glob("*")):
        print(f"fuzz_decode: {seed_corpus(corpus)} seed messages in {corpus}", file=sys.stderr)
    args = [sys.argv[0], *sys.argv[1:], str(corpus)]
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
