#!/usr/bin/env bash
# install-browser-deps.sh installs, idempotently, the npm packages of the
# browser tests (attest/fleet's headless Chromium test drives Debian's
# chromium with playwright-core): `npm ci` from the committed lock file, run
# only when node_modules is missing or older than package-lock.json.
# node_modules is gitignored. Needs Node 20 or later (/usr/bin/node).
set -euo pipefail

cd "$(dirname "$0")/.."
dirs=(attest/fleet/testdata/browser)

for d in "${dirs[@]}"; do
  stamp="$d/node_modules/.package-lock.json"
  if [[ -f $stamp && ! $d/package-lock.json -nt $stamp ]]; then
    continue
  fi
  if ! command -v npm >/dev/null; then
    echo "install-browser-deps: npm is required (Node 20 or later)" >&2
    exit 1
  fi
  echo "install-browser-deps: npm ci in $d"
  (cd "$d" && npm ci --no-audit --no-fund --loglevel=error)
  touch "$stamp"
done
echo "install-browser-deps: npm packages present"
