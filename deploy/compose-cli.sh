#!/usr/bin/env bash
# Installs Docker Compose v2 as a docker CLI plugin (`docker compose`) when the one there is
# missing or older than 2.24 (env_file `required:` and `up --wait` need it). Debian's
# docker-compose 1.29 ignores deploy.replicas, so the plugin is built from the Go module
# proxy (v2.40.x: its client still speaks the API of Debian's docker.io 20.10; /v5 does not)
# and cached in ~/.cache/nightjar/compose/. Needs Go 1.24+ (/usr/local/go/bin or PATH).
set -euo pipefail
VERSION=v2.40.3
CACHE=${NIGHTJAR_CACHE:-$HOME/.cache/nightjar}/compose/$VERSION
PLUGINS=${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins
say() { echo "compose-cli: $*" >&2; }

current=$(docker compose version --short 2>/dev/null || true)
if [ -n "$current" ] && printf '2.24.0\n%s\n' "${current#v}" | sort -V -C; then exit 0; fi
if [ ! -x "$CACHE/docker-compose" ]; then
    export PATH=$PATH:/usr/local/go/bin
    command -v go >/dev/null || { say "Go is needed to build Compose $VERSION"; exit 1; }
    say "building Docker Compose $VERSION from the Go module proxy (first run only, minutes)"
    source=$(go mod download -json "github.com/docker/compose/v2@$VERSION" \
        | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
    work=$(mktemp -d)
    # Its go.mod has replace directives, so `go install pkg@version` refuses: build in a copy.
    cp -r "$source/." "$work/" && chmod -R u+w "$work"
    mkdir -p "$CACHE"
    (cd "$work" && go build -trimpath -o "$CACHE/docker-compose.part" \
        -ldflags "-s -w -X github.com/docker/compose/v2/internal.Version=$VERSION" ./cmd) \
        >"$CACHE/../build.log" 2>&1 || { say "build failed: see $CACHE/../build.log"; exit 1; }
    mv "$CACHE/docker-compose.part" "$CACHE/docker-compose"
    rm -rf "$work"
fi
mkdir -p "$PLUGINS"
ln -sf "$CACHE/docker-compose" "$PLUGINS/docker-compose"
say "docker compose $(docker compose version --short)"
