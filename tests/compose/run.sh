#!/usr/bin/env bash
# `make compose-test`: the deployment end to end on a real Docker engine. Starts dockerd when
# none answers (and stops only that one on the way out), installs the compose plugin, builds
# the images offline (`make images`, timed) and the test's stand-ins, then runs
# tests/compose with pytest. PY: the Python that has the project and pytest (.venv).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export PY=${PY:-.venv/bin/python}
state=.nightjar/compose-test
mkdir -p "$state"
say() { echo "compose-test: $*" >&2; }

stop_dockerd() {
    local pid
    pid=$(cat "$state/dockerd.pid")
    say "stopping the dockerd it started (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || return 0; sleep 1; done
    say "dockerd $pid did not stop in 60 s; killing it"
    kill -9 "$pid" 2>/dev/null || true
}

if ! docker info >/dev/null 2>&1; then
    command -v dockerd >/dev/null || { say "no dockerd: apt-get install docker.io"; exit 1; }
    say "no Docker engine answers: starting dockerd (log $state/dockerd.log)"
    dockerd >"$state/dockerd.log" 2>&1 &
    echo $! >"$state/dockerd.pid"
    trap stop_dockerd EXIT
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { say "dockerd did not answer in 60 s"; tail "$state/dockerd.log"; exit 1; }
fi

deploy/compose-cli.sh
began=$SECONDS
make images
say "make images took $((SECONDS - began)) s"
began=$SECONDS
tests/compose/standins/build.sh
say "stand-ins took $((SECONDS - began)) s"
began=$SECONDS
status=0
NIGHTJAR_COMPOSE_TEST=1 "$PY" -m pytest tests/compose -x -v -p no:cacheprovider ${PYTEST_ARGS:-} \
    || status=$?
say "the stack tests took $((SECONDS - began)) s (exit $status)"
exit $status
