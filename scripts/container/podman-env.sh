#!/usr/bin/env bash
# Podman configuration of the project's own, kept out of /etc: writes containers.conf and storage.conf into a
# cache folder (images and build layers live there too, so they are reused by the next run on this machine)
# and exports CONTAINERS_CONF / CONTAINERS_STORAGE_CONF.
#   source scripts/container/podman-env.sh      # exports the variables into this shell
#   bash scripts/container/podman-env.sh        # prints them as KEY=VALUE lines (what the tests read)
# Settings that these VMs need (rootful podman 4.3 from Debian): runc (crun fails on the cgroup layout),
# cgroupfs instead of systemd, events in a file (no journald), and default ulimits no higher than this
# machine's hard limits (podman's defaults, nofile 1048576 and the shell's nproc, are refused here: runc cannot
# raise them, `error setting rlimit type 6/7: operation not permitted`).
# DCN_CONTAINER_CACHE moves the folder (default: ~/.cache/dcn-container).
[ "${BASH_SOURCE[0]}" = "$0" ] && set -euo pipefail  # not when sourced: leave the caller's options alone
dcn_cache="${DCN_CONTAINER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dcn-container}"
mkdir -p "$dcn_cache/storage" "$dcn_cache/tmp" "$dcn_cache/cni"
dcn_nofile="$(ulimit -Hn)"; { [ "$dcn_nofile" = unlimited ] || [ "$dcn_nofile" -gt 1048576 ]; } && dcn_nofile=1048576
# nproc: podman runs its containers under a hard limit of at most 32768 (and kernel.pid_max), whatever the shell's
dcn_nproc="$(ulimit -Hu)"; [ "$dcn_nproc" = unlimited ] && dcn_nproc=32768
for dcn_cap in 32768 "$(cat /proc/sys/kernel/pid_max 2>/dev/null || echo 32768)"; do
    [ "$dcn_nproc" -gt "$dcn_cap" ] && dcn_nproc="$dcn_cap"
done
# run-time state (locks, mounts) outside the cache, one folder per cache folder
dcn_run="/run/dcn-container/$(printf %s "$dcn_cache" | md5sum | cut -c1-12)"
cat > "$dcn_cache/containers.conf" <<CONF
# written by scripts/container/podman-env.sh
[containers]
default_ulimits = ["nofile=$dcn_nofile:$dcn_nofile", "nproc=$dcn_nproc:$dcn_nproc"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$dcn_cache/events.log"
tmp_dir = "$dcn_run/libpod"
image_copy_tmp_dir = "$dcn_cache/tmp"

[network]
# networks that podman-compose creates are written here, not into /etc/cni/net.d
network_config_dir = "$dcn_cache/cni"
CONF
cat > "$dcn_cache/storage.conf" <<CONF
# written by scripts/container/podman-env.sh
[storage]
driver = "overlay"
graphroot = "$dcn_cache/storage"
runroot = "$dcn_run/storage"
CONF
export DCN_CONTAINER_CACHE="$dcn_cache"
export CONTAINERS_CONF="$dcn_cache/containers.conf"
export CONTAINERS_STORAGE_CONF="$dcn_cache/storage.conf"
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    echo "CONTAINERS_CONF=$CONTAINERS_CONF"
    echo "CONTAINERS_STORAGE_CONF=$CONTAINERS_STORAGE_CONF"
    echo "DCN_CONTAINER_CACHE=$dcn_cache"
fi
