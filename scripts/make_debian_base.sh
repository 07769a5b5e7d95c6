#!/usr/bin/env bash
# Make a Debian bookworm base image from Debian's packages alone, for building
# deploy/Dockerfile where no container registry can be reached (only a Debian mirror).
#
# In: an image name (default localhost/debian-bookworm-base); DEBIAN_MIRROR (default
# http://deb.debian.org/debian). Out: that image in podman's storage: debootstrap's
# minbase with python3 (3.11), python3-venv and ca-certificates, apt caches emptied.
# Then: scripts/build_images.sh --base-image localhost/debian-bookworm-base ...
# Needs root, debootstrap and podman (apt-get install debootstrap podman).
set -euo pipefail

image=${1:-localhost/debian-bookworm-base}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
[[ $(id -u) == 0 ]] || { echo "make_debian_base.sh: debootstrap needs root" >&2; exit 2; }
for tool in debootstrap podman; do
    command -v "$tool" >/dev/null || { echo "make_debian_base.sh: $tool is not installed (apt-get install $tool)" >&2; exit 2; }
done

rootfs=$(mktemp -d "${TMPDIR:-/var/tmp}/pairforge-base.XXXXXX")
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$mirror"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' - "$image"
echo "make_debian_base.sh: $image ($(chroot "$rootfs" python3 --version))"
