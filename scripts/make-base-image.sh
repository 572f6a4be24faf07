#!/usr/bin/env bash
# Builds a plain Debian 12 base image with debootstrap (no registry needed), for building the
# server's Containerfile offline:  podman build --build-arg BASE_IMAGE=<this image> .
# Usage: scripts/make-base-image.sh [IMAGE_NAME]   (as root; about 30 s and 200 MB)
set -euo pipefail
name=${1:-localhost/debian-base:bookworm}
if podman image exists "$name"; then echo "$name"; exit 0; fi
command -v debootstrap >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >&2
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
# The Debian mirror this machine's apt uses (one-line or deb822 sources), not a host written here.
mirror=$({ grep -hsE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | awk '{for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; exit }}'
           grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}'; } | grep -v security | head -n 1)
[ -n "$mirror" ] || { echo "make-base-image: no Debian mirror found in /etc/apt/sources.list*" >&2; exit 1; }
debootstrap --variant=minbase bookworm "$root" "$mirror" >&2
# As in Debian's slim images: no package lists, caches, manuals or translations.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/usr/share/doc/* "$root"/usr/share/man/* \
  "$root"/usr/share/info/* "$root"/usr/share/locale/*
tar -C "$root" -c . | podman import --change 'CMD ["/bin/bash"]' - "$name" >/dev/null
echo "$name"
