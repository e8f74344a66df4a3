#!/usr/bin/env bash
# install-deps.sh installs, idempotently, the Debian packages Embassy's build,
# tests and demo need. Safe to run many times; runs apt only when something
# is missing.
set -euo pipefail

packages=(
  qemu-system-x86 qemu-utils ovmf swtpm swtpm-tools
  libnbd-bin nbdkit fio python3-libnbd
  systemd-boot-efi sbsigntool openssl osslsigncode binutils
  ca-certificates xz-utils cpio zstd
  chromium fonts-dejavu-core
  postgresql  # internal/pgtest: throwaway clusters for the verifier's PostgreSQL tests
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps: need root to install packages" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "install-deps: system packages present"
