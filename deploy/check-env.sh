#!/usr/bin/env bash
# `make check-env`: says which required variable of .env.example is missing or empty in .env
# (or the environment, which compose also reads). Exits 1 when any is.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
env_file=${NIGHTJAR_ENV_FILE:-.env}
[ -f "$env_file" ] || { echo "check-env: no $env_file; cp .env.example $env_file and fill it in"; exit 1; }
missing=0
# A required variable is the first assignment after a "# required:" comment.
for name in $(awk '/^# required:/ {want=1; next} want && /^[A-Z_]+=/ {split($0, a, "="); print a[1]; want=0}' .env.example); do
    value=${!name:-$(sed -n "s/^$name=//p" "$env_file" | tail -n1)}
    if [ -z "$value" ]; then
        echo "check-env: $name is missing from $env_file ($(grep -B3 "^$name=" .env.example | sed -n 's/^# required: //p'))"
        missing=1
    fi
done
[ $missing -eq 0 ] && echo "check-env: $env_file has every required variable"
exit $missing
