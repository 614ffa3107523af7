#!/usr/bin/env bash
# Makes the base image the tests build the Dockerfile on (BASE_IMAGE), without a registry: a minimal Debian
# (mmdebstrap --variant=minbase, from the mirror apt already uses) with python3 and python3-venv, streamed into
# `podman import` as localhost/dcn-base:<suite>. Does nothing when the image exists (cached in the podman storage
# of scripts/container/podman-env.sh). Needs root, mmdebstrap and podman (scripts/install-system-deps.sh).
# mmdebstrap rather than debootstrap: 62-106 s instead of 85-155 s on the busy 2-core machine (apt downloads in
# parallel), and it writes the tarball to stdout.
#   bash scripts/container/make-base-image.sh        # prints the image name
# DCN_BASE_SUITE (default bookworm: python 3.11, as python:3.11-slim-bookworm), DEBIAN_MIRROR (default: the
# first Debian mirror in apt's sources, else http://deb.debian.org/debian).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/podman-env.sh"
suite="${DCN_BASE_SUITE:-bookworm}"
image="localhost/dcn-base:$suite"
if podman image exists "$image"; then
    echo "$image"
    exit 0
fi
mirror="${DEBIAN_MIRROR:-}"
if [ -z "$mirror" ]; then
    mirror="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | grep -oE '(https?|file)://[^ ]*/debian/?( |$)' | grep -v security | head -n1 | tr -d ' ' || true)"
fi
mirror="${mirror:-http://deb.debian.org/debian}"
log="$(mktemp "$DCN_CONTAINER_CACHE/tmp/mmdebstrap.XXXXXX.log")"
trap 'rm -f "$log"' EXIT
echo "mmdebstrap $suite from $mirror" >&2
# No recommends, no docs, man pages or translations: the image only has to run python3 -m venv and pip.
mmdebstrap --quiet --mode=root --variant=minbase --include=python3,python3-venv,ca-certificates \
        --aptopt='APT::Install-Recommends "false"' --aptopt='Acquire::Retries "3"' \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
        "$suite" - "$mirror" 2> "$log" \
    | podman import --quiet \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        --message "mmdebstrap --variant=minbase $suite + python3 python3-venv ca-certificates" \
        - "$image" > /dev/null \
    || { tail -n 30 "$log" >&2; podman rmi --force "$image" > /dev/null 2>&1 || true; exit 1; }
echo "$image"
