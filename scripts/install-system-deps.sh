#!/usr/bin/env bash
# Debian packages the test suite needs: FluidSynth + General MIDI soundfonts (corpus renderer),
# Chromium + driver (demo-page browser test), docker-compose (compose file validation), podman + runc (the
# container test builds and runs the image; runc because crun fails on these VMs' cgroup layout) and mmdebstrap
# (the test's base image is made locally: no container registry is reachable).
# Installs only what is missing, so repeated `make test` runs do not touch apt.
set -euo pipefail
packages=(fluidsynth fluid-soundfont-gm timgm6mb-soundfont musescore-general-soundfont-small csound-soundfont chromium chromium-driver docker-compose
          podman runc mmdebstrap debian-archive-keyring)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${missing[*]}"
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
