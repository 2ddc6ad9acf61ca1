#!/usr/bin/env bash
# `make images`: every Nightjar image built with no network inside the builds, for CI and
# air-gapped sites. Needs, on the host: docker (any engine), debootstrap, python3 with pip,
# and, the first time only, Debian's package mirror and PyPI (or local mirrors of them).
#
#   1. base     nightjar-base:bookworm: Debian bookworm (python3 3.11) made with debootstrap and
#               `docker import`; a drop-in for python:3.11-slim (`python`, `pip` into /usr/local)
#   2. wheels   a wheelhouse per image, `pip download`ed on the host (cp311, manylinux x86_64)
#   3. images   `docker build --network none --build-arg BASE=...` with PIP_NO_INDEX and
#               PIP_FIND_LINKS pointing pip at the wheels sent in the build context (under
#               wheelhouse/; the Dockerfiles copy them to /wheelhouse or, with all, to /app)
#
# Everything slow is cached in $NIGHTJAR_CACHE (default ~/.cache/nightjar): the base tarball,
# the wheelhouses (keyed by the dependency files) and Docker's layer cache; a second run takes
# seconds. IMAGES picks what to build (default: broker models worker fritz; add worker-gpu
# for the NVIDIA image, whose CUDA wheels are several GB). BASE=python:3.11-slim skips step 1
# where that image can be pulled.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
CACHE=${NIGHTJAR_CACHE:-$HOME/.cache/nightjar}
IMAGES=${IMAGES:-broker models worker fritz}
BASE=${BASE:-nightjar-base:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PYTHON=${PYTHON:-python3}
# What the project's images and the test's stand-ins need besides Python itself.
BASE_PACKAGES=python3,python3-pip,python3-venv,python-is-python3,ca-certificates,curl,passwd,tini
JRE_PACKAGES=openjdk-17-jre-headless,curl,passwd,tini

say() { echo "images: $*" >&2; }
digest() { cat "$@" | sha256sum | cut -c1-12; }

# A Debian root file system imported as image $1 (packages $2); the tarball is cached.
debian_image() {
    local tag=$1 packages=$2 tarball
    tarball="$CACHE/images/$(echo "$tag $packages $MIRROR" | sha256sum | cut -c1-12).tar"
    if docker image inspect "$tag" >/dev/null 2>&1; then return; fi
    if [ ! -s "$tarball" ]; then
        command -v debootstrap >/dev/null \
            || { say "debootstrap is missing: apt-get install debootstrap"; exit 1; }
        local root began=$SECONDS
        root=$(mktemp -d "$CACHE/images/root.XXXXXX")
        mkdir -p "$CACHE/debootstrap-debs"
        say "debootstrap bookworm for $tag (first run only, a few minutes)"
        debootstrap --variant=minbase --include="$packages" --cache-dir="$CACHE/debootstrap-debs" \
            bookworm "$root" "$MIRROR" >"$CACHE/images/debootstrap.log" 2>&1 \
            || { say "debootstrap failed; see $CACHE/images/debootstrap.log"; exit 1; }
        # As in python:3.11-slim, pip installs into /usr/local (Debian forbids it by default).
        rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED
        rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
        tar -C "$root" -c . >"$tarball.part" && mv "$tarball.part" "$tarball"
        rm -rf "$root"
        say "$tag root file system ready ($((SECONDS - began)) s)"
    fi
    docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["bash"]' "$tarball" "$tag" >/dev/null
}

# The requirements of one wheel set, one per line: the project's dependencies (with extras)
# read from pyproject.toml, Rubin's schema package, and the build backend.
requirements() {
    "$PYTHON" - "$@" <<'PY'
import sys, tomllib
project, extras = sys.argv[1], sys.argv[2:]
meta = tomllib.load(open(project, "rb"))["project"]
lines = list(meta["dependencies"])
for extra in extras:
    lines += meta["optional-dependencies"][extra]
print("\n".join(lines + ["setuptools>=77", "wheel"]))
PY
}

# `pip download` of wheel set $1 into the cache; prints its folder.
wheelhouse() {
    local name=$1 project=$2; shift 2
    # Keyed by what is asked for, so edits elsewhere in pyproject.toml keep the cache.
    local folder="$CACHE/wheelhouse/$name-$(digest <(requirements "$project" "$@") \
        schemas/rubin-requirements.txt)"
    if [ ! -f "$folder/.complete" ]; then
        local platforms=(--platform manylinux2014_x86_64)
        for minor in $(seq 17 36); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
        local pip=("$PYTHON" -m pip download --quiet --disable-pip-version-check --dest "$folder"
            --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311
            "${platforms[@]}")
        say "pip download: wheel set '$name' (first run only)"
        mkdir -p "$folder"
        "${pip[@]}" -r <(requirements "$project" "$@") >&2
        "${pip[@]}" --no-deps -r schemas/rubin-requirements.txt >&2
        touch "$folder/.complete"
    fi
    echo "$folder"
}

# The build context of one image: the source tree as git sees it (tracked and new files,
# nothing git ignores, less what the Dockerfile's .dockerignore names) plus its wheels
# under wheelhouse/, streamed to `docker build -` (the classic builder: no buildx here).
build() {
    local tag=$1 dockerfile=$2 wheels=$3; shift 3
    local stage="$CACHE/images/context-$tag" began=$SECONDS
    rm -rf "$stage" && mkdir -p "$stage"
    cp -al "$wheels" "$stage/wheelhouse" 2>/dev/null || cp -a "$wheels" "$stage/wheelhouse"
    say "building $tag"
    # The Dockerfile's own .dockerignore (tests, docs, ...) keeps edits there from
    # invalidating the image's layers, as BuildKit would.
    local ignore=/dev/null
    [ -f "$dockerfile.dockerignore" ] && ignore="$dockerfile.dockerignore"
    git ls-files -z --cached --others --exclude-standard \
        | tar --null -c -f - -T - --ignore-failed-read --exclude-from=<(grep -v -e '^#' -e Dockerfile "$ignore") \
            -C "$stage" wheelhouse \
        | docker build --network none --quiet -t "$tag" -f "$dockerfile" \
            --build-arg BASE="$BASE" --build-arg PIP_NO_INDEX=1 \
            --build-arg PIP_FIND_LINKS="/wheelhouse /app/wheelhouse" "$@" - >/dev/null
    rm -rf "$stage"
    say "$tag built ($((SECONDS - began)) s)"
}

main() {
    mkdir -p "$CACHE/images"
    if [ "$BASE" = nightjar-base:bookworm ]; then
        debian_image nightjar-base:bookworm "$BASE_PACKAGES"
    fi
    local service models fritz
    for image in $IMAGES; do
        case $image in
            broker)
                service=$(wheelhouse service pyproject.toml)
                build nightjar-broker:latest services/broker/Dockerfile "$service" ;;
            worker)
                service=$(wheelhouse service pyproject.toml)
                build nightjar-worker:latest services/worker/Dockerfile "$service" ;;
            models)
                # `nightjar models fetch` is a tool (broker/tools): convert and tools extras.
                models=$(wheelhouse models pyproject.toml convert tools)
                build nightjar-models:latest services/broker/Dockerfile "$models" \
                    --build-arg 'EXTRAS=[convert,tools]' ;;
            fritz)
                # The Fritz-like service alone: its own package and dependencies.
                fritz=$(wheelhouse fritz services/fritz/pyproject.toml)
                build nightjar-fritz:latest services/fritz/Dockerfile "$fritz" ;;
            worker-gpu)
                models=$(wheelhouse gpu pyproject.toml gpu)
                build nightjar-worker-gpu:latest services/worker-gpu/Dockerfile "$models" ;;
            stand-ins)
                debian_image nightjar-test-jre:bookworm "$JRE_PACKAGES" ;;
            *) say "unknown image '$image' (broker models worker fritz worker-gpu)"; exit 2 ;;
        esac
    done
}

main
