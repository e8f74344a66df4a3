#!/usr/bin/env bash
# install-browser-deps.sh installs, idempotently, the npm packages of the
# browser tests (attest/fleet's headless Chromium test drives Debian's
# chromium with playwright-core): `npm ci` from the committed lock file, run
# only when node_modules is missing or older than package-lock.json.
# node_modules is gitignored. Needs Node 18 or later: when no npm is on the
# PATH it installs Debian's nodejs and npm (a Node installed otherwise, e.g.
# a newer one with its own npm, is left alone).
set -euo pipefail

cd "$(dirname "$0")/.."
dirs=(attest/fleet/testdata/browser)

for d in "${dirs[@]}"; do
  stamp="$d/node_modules/.package-lock.json"
  if [[ -f $stamp && ! $d/package-lock.json -nt $stamp ]]; then
    continue
  fi
  if ! command -v npm >/dev/null; then
    if [[ $(id -u) -ne 0 ]]; then
      echo "install-browser-deps: npm is required (Node 18 or later); need root to install Debian's nodejs and npm" >&2
      exit 1
    fi
    echo "install-browser-deps: installing Debian's nodejs and npm"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
  fi
  echo "install-browser-deps: npm ci in $d"
  (cd "$d" && npm ci --no-audit --no-fund --loglevel=error)
  touch "$stamp"
done
echo "install-browser-deps: npm packages present"
