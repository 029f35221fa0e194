#!/usr/bin/env bash
# Make a Python 3.11 base image from Debian's packages, for machines that cannot pull
# python:3.11-slim. Prints the image's name. The image is cached twice, keyed by a hash of this
# script (the recipe): as a tag in the container tool's store, and as a tarball under ~/.cache,
# so later runs (and a wiped store) skip debootstrap. Needs root (debootstrap).
set -euo pipefail

SUITE=bookworm                       # its python3 is 3.11, which the pinned wheels need
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PACKAGES=python3,python3-venv        # python3-venv brings ensurepip's wheels
CACHE_DIR=${XDG_CACHE_HOME:-$HOME/.cache}/mnist-serve
RECIPE_HASH=$(sha256sum "$0" | cut -c1-12)
NAME=localhost/mnist-serve-base:$RECIPE_HASH
TARBALL=$CACHE_DIR/debian-base-$RECIPE_HASH.tar

CONTAINER=${CONTAINER:-podman}

log() { echo "debian-base: $*" >&2; }

if "$CONTAINER" image inspect "$NAME" >/dev/null 2>&1; then
    log "cached in $CONTAINER's store"; echo "$NAME"; exit 0
fi
mkdir -p "$CACHE_DIR"
if [ ! -s "$TARBALL" ]; then
    root=$(mktemp -d "$CACHE_DIR/rootfs.XXXXXX")
    trap 'rm -rf "$root" "$root.log"' EXIT
    log "debootstrap $SUITE with $PACKAGES (a minute or two; log in $root.log)"
    if ! debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$MIRROR" >"$root.log" 2>&1; then
        tail -n 20 "$root.log" >&2; exit 1
    fi
    rm -f "$root.log"
    # What a server image never reads: package lists and caches, manuals, translations, and
    # glibc's iconv modules (Python's codecs are its own).
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
        "$root"/var/log/* "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
        "$root"/usr/share/locale/* "$root"/usr/lib/*-linux-gnu/gconv
    tar -C "$root" --numeric-owner -cf "$TARBALL.part" .
    mv "$TARBALL.part" "$TARBALL"
fi
log "importing $TARBALL"
# An imported tarball has no configuration: give it the PATH that Debian's images have.
"$CONTAINER" import --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change 'CMD ["python3"]' "$TARBALL" "$NAME" >/dev/null
echo "$NAME"
