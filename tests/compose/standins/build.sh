#!/usr/bin/env bash
# Builds the test's stand-in images offline (`docker build --network none`) from what is
# already on this machine: the Kafka jars and the FerretDB binary `nightjar services up`
# made in ~/.cache/nightjar, and Debian's prometheus package.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../../.." && pwd)
CACHE=${NIGHTJAR_CACHE:-$HOME/.cache/nightjar}
say() { echo "stand-ins: $*" >&2; }

IMAGES="stand-ins" "$repo/deploy/images/build.sh"
command -v prometheus >/dev/null || {
    say "installing Debian's prometheus package"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null
}
kafka_libs=$(ls -d "$CACHE"/kafka/3.9.1-*/libs 2>/dev/null | head -n1)
ferretdb=$(ls "$CACHE"/ferretdb/*/ferretdb 2>/dev/null | head -n1)
[ -n "$kafka_libs" ] && [ -n "$ferretdb" ] \
    || { say "no Kafka jars or FerretDB in $CACHE: run 'nightjar services up' once"; exit 1; }

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
standin nightjar-test-mongo:latest mongo "$ferretdb"
standin nightjar-test-prometheus:latest prometheus "$(command -v prometheus)"
