#!/usr/bin/env bash
# `make check-env`: says which required variable of .env.example is missing or empty in .env
# (or the environment, which compose also reads). Exits 1 when any is.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
env_file=${NIGHTJAR_ENV_FILE:-.env}
[ -f "$env_file" ] || env_file=/dev/null  # the environment alone may have them all
missing=0
# A required variable is the first assignment after a "# required: <what it is>" comment.
while IFS='|' read -r name what; do
    value=${!name:-$(sed -n "s/^$name=//p" "$env_file" | tail -n1)}
    if [ -z "$value" ]; then
        echo "check-env: $name is missing from .env: $what"
        missing=1
    fi
done < <(awk '/^# required:/ {what=substr($0, 13); next}
              what != "" && /^[A-Z_]+=/ {split($0, a, "="); print a[1] "|" what; what=""}' .env.example)
if [ $missing -eq 1 ] && [ "$env_file" = /dev/null ]; then
    echo "check-env: there is no .env yet: cp .env.example .env and fill it in"
elif [ $missing -eq 0 ]; then
    echo "check-env: every required variable is set"
fi
exit $missing
