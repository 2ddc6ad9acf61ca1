#!/usr/bin/env bash
# Builds mongodump and mongorestore (MongoDB Database Tools) from the Go module proxy into
# ~/.cache/nightjar/mongo-tools/<version>-<digest of go.mod, go.sum>/ once, and prints that
# folder. The compose test puts them in its FerretDB stand-in for `mongo`, so the README's
# backup lines run there as against mongo:7.0, whose image has them.
#
# go.mod pins github.com/mongodb/mongo-tools by pseudo-version: its release tags (100.17.0)
# have no `v`, so the proxy serves no version for them, only commits. Pure Go: CGO_ENABLED=0
# and no build tags (Kerberos, the Go driver's `gssapi` tag, would need cgo). Needs Go 1.25.11+.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${NIGHTJAR_CACHE:-$HOME/.cache/nightjar}/mongo-tools
TOOLS="mongodump mongorestore"
say() { echo "mongo-tools: $*" >&2; }

version=$(awk '$1 == "github.com/mongodb/mongo-tools" { print $2 }' "$here/go.mod")
target="$CACHE/$version-$(cat "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-12)"
if [ ! -x "$target/mongorestore" ]; then
    export PATH=$PATH:/usr/local/go/bin
    command -v go >/dev/null || { say "Go 1.25.11+ is needed to build mongo-tools"; exit 1; }
    mkdir -p "$CACHE"
    work=$(mktemp -d "$CACHE/build.XXXXXX") && chmod 755 "$work"
    trap 'rm -rf "$work"' EXIT
    say "building $TOOLS $version from the Go module proxy (first run only, a minute or two)"
    began=$SECONDS
    commit=${version##*-}
    for tool in $TOOLS; do
        (cd "$here" && CGO_ENABLED=0 go build -trimpath -buildvcs=false -o "$work/$tool" \
            -ldflags "-s -w -X main.VersionStr=$version -X main.GitCommit=$commit" \
            "github.com/mongodb/mongo-tools/$tool/main") >>"$CACHE/build.log" 2>&1 \
            || { say "go build $tool failed: see $CACHE/build.log"; exit 1; }
    done
    # A finished folder appears whole, or not at all (another build may have won the race).
    mv -T "$work" "$target" 2>/dev/null || [ -x "$target/mongorestore" ]
    say "built in $((SECONDS - began)) s"
fi
echo "$target"
