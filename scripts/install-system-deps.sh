#!/usr/bin/env bash
# Debian packages the test suite needs: FluidSynth + General MIDI soundfonts (corpus renderer),
# Chromium + driver (demo-page browser test), docker-compose (compose file validation).
# Installs only what is missing, so repeated `make test` runs do not touch apt.
set -euo pipefail
packages=(fluidsynth fluid-soundfont-gm timgm6mb-soundfont musescore-general-soundfont-small csound-soundfont chromium chromium-driver docker-compose)
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
