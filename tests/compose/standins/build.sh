#!/usr/bin/env bash
# Builds the test's stand-in images offline (`docker build --network none`) from what is
# already on this machine: the Kafka jars `nightjar services up` made in ~/.cache/nightjar,
# the FerretDB binary of the current services/ferretdb sources (built here when missing),
# mongodump and mongorestore (services/mongo-tools/build.sh), and Debian's prometheus package.
# PY: the Python that has the project (.venv).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../../.." && pwd)
CACHE=${NIGHTJAR_CACHE:-$HOME/.cache/nightjar}
PY=${PY:-$repo/.venv/bin/python}
say() { echo "stand-ins: $*" >&2; }

IMAGES="stand-ins" "$repo/deploy/images/build.sh"
command -v prometheus >/dev/null || {
    say "installing Debian's prometheus package"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null
}
kafka_libs=$(ls -d "$CACHE"/kafka/3.9.1-*/libs 2>/dev/null | head -n1)
[ -n "$kafka_libs" ] || { say "no Kafka jars in $CACHE: run 'nightjar services up' once"; exit 1; }
# The binary of these sources (the cache keeps older builds, unpatched ones among them).
ferretdb=$(cd "$repo" && "$PY" - <<'PY'
import os
import sys
from pathlib import Path

from broker.tools.services.base import Layout
from broker.tools.services.ferretdb import FerretDBService

layout = Layout.from_env(os.environ, Path.cwd())
service = FerretDBService({})
service.build(layout, lambda line: print(line, file=sys.stderr))
print(service.binary(layout))
PY
)
mongo_tools=$("$repo/services/mongo-tools/build.sh")

# $1 image, $2 stand-in folder, then files to add to its context.
standin() {
    local tag=$1 folder=$2 context; shift 2
    context=$(mktemp -d)
    cp -a "$here/$folder/." "$context/"
    for file in "$@"; do cp -al "$file" "$context/" 2>/dev/null || cp -a "$file" "$context/"; done
    docker build --network none --quiet -t "$tag" "$context" >/dev/null
    rm -rf "$context"
    say "$tag built"
}
standin nightjar-test-kafka:latest kafka "$kafka_libs"
standin nightjar-test-mongo:latest mongo "$ferretdb" "$mongo_tools/mongodump" "$mongo_tools/mongorestore"
standin nightjar-test-prometheus:latest prometheus "$(command -v prometheus)"
