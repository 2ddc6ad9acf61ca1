"""The decode fuzzer (tests/fuzz/fuzz_decode.py) for a bounded number of runs, memory-capped:
any exception other than BadAlert, or more memory than the cap, fails `make test`."""

from __future__ import annotations

import importlib.util
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FUZZER = REPO / "tests" / "fuzz" / "fuzz_decode.py"
RUNS = int(os.environ.get("FUZZ_RUNS_IN_TEST", "1500"))
MEMORY_LIMIT = 3 << 30  # address space: the interpreter, numpy and libFuzzer fit well below


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


@pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None,
    reason="atheris is not installed (it is in the dev extra: make venv)",
)
def test_decode_survives_the_fuzzer(tmp_path: Path) -> None:
    env = dict(os.environ, FUZZ_CORPUS=str(tmp_path / "corpus"))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    args = [f"-runs={RUNS}", "-max_len=200000", "-rss_limit_mb=2048", "-seed=1"]
    done = subprocess.run(
        [sys.executable, str(FUZZER), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=_limit_memory,
    )
    report = done.stderr[-4000:]
    assert done.returncode == 0, f"the fuzzer found an input the decoder fails on:\n{report}"
    assert f"Done {RUNS} runs" in done.stderr, report
    assert len(list((tmp_path / "corpus").iterdir())) > 20  # seeded, and it explored
