#!/usr/bin/env bash
# fetch-kernel.sh downloads Debian's linux-image-cloud-amd64 (never installing
# it into the host), unpacks vmlinuz and its modules into a cache, and records
# the version and sha256. Idempotent: a cached kernel is reused.
#
# Prints the cache directory on stdout. Layout:
#   $EMBASSY_CACHE/kernel/<version>/vmlinuz
#   $EMBASSY_CACHE/kernel/<version>/lib/modules/<version>/...
#   $EMBASSY_CACHE/kernel/<version>/kernel.env   (VERSION=, SHA256=, DEB=)
#   $EMBASSY_CACHE/kernel/current -> <version>
set -euo pipefail

cache=${EMBASSY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/embassy}/kernel
mkdir -p "$cache"

if [[ -f $cache/current/kernel.env && -f $cache/current/vmlinuz ]]; then
  echo "$cache/current"
  exit 0
fi

if ! apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1; then
  apt-get update -qq
fi
# The metapackage depends on exactly one versioned image package.
pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [[ -z $pkg ]]; then
  echo "fetch-kernel: cannot resolve linux-image-cloud-amd64" >&2
  exit 1
fi
version=${pkg#linux-image-}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work" # apt-get download drops privileges to _apt
(cd "$work" && apt-get download -qq "$pkg" >&2)
deb=$(ls "$work"/*.deb)
dpkg-deb -x "$deb" "$work/root"

dest=$cache/$version
rm -rf "$dest.tmp"
mkdir -p "$dest.tmp/lib"
cp "$work/root/boot/vmlinuz-$version" "$dest.tmp/vmlinuz"
cp -a "$work/root/lib/modules" "$dest.tmp/lib/"
{
  echo "VERSION=$version"
  echo "SHA256=$(sha256sum "$dest.tmp/vmlinuz" | cut -d' ' -f1)"
  echo "DEB=$(basename "$deb")"
  echo "DEB_SHA256=$(sha256sum "$deb" | cut -d' ' -f1)"
} > "$dest.tmp/kernel.env"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
ln -sfn "$version" "$cache/current"
echo "fetch-kernel: cached $pkg in $dest" >&2
echo "$cache/current"
