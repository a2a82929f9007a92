#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for `make test-cluster` (tests/cluster/):
#
#   tools/slurm_localhost.sh up   DIR   # install Debian's packages if missing, start munge,
#                                       # slurmctld and slurmd with a slurm.conf in DIR
#   tools/slurm_localhost.sh down DIR   # stop what `up` started, remove its files
#
# Needs root (apt-get, the daemons) on Debian 12 without systemd. Everything the cluster
# writes (state, spool, logs, pid files) lives in DIR. The Snakemake executor's job step runs
# `srun` with SLURM_CONF removed from its environment, so Slurm's default path
# /etc/slurm/slurm.conf must lead to this cluster's file: `up` links it there, and refuses if
# a slurm.conf of another cluster is already in place; `down` removes only its own link.
set -euo pipefail

cmd=${1:?usage: $0 up|down DIR}
dir=$(mkdir -p "${2:?usage: $0 up|down DIR}" && cd "$2" && pwd)
conf="$dir/slurm.conf"
default_conf=/etc/slurm/slurm.conf

log() { echo "slurm-localhost: $*" >&2; }

up() {
    [ "$(id -u)" = 0 ] || { log "must run as root (apt-get, slurmctld, slurmd)"; exit 1; }
    if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
        || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
        log "installing slurm-wlm and munge (Debian packages)"
        local install=(apt-get install -y --no-install-recommends slurm-wlm munge)
        # a fresh machine's package lists may be missing or stale: refresh them once
        DEBIAN_FRONTEND=noninteractive "${install[@]}" >"$dir/apt.log" 2>&1 \
            || { apt-get update >>"$dir/apt.log" 2>&1 \
                 && DEBIAN_FRONTEND=noninteractive "${install[@]}" >>"$dir/apt.log" 2>&1; } \
            || { cat "$dir/apt.log"; exit 1; }
    fi
    if [ -e "$default_conf" ] && [ "$(readlink -f "$default_conf")" != "$conf" ]; then
        log "$default_conf exists and is not this test cluster's: not touching a real cluster"
        exit 1
    fi

    # munge: the key comes with the package; its runtime and log folders belong to munge
    mkdir -p /run/munge /var/log/munge
    chown munge:munge /run/munge /var/log/munge
    [ -f /var/log/munge/munged.log ] && chown munge:munge /var/log/munge/munged.log
    if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        runuser -u munge -- munged
        echo started >"$dir/munged.started"
    fi

    local host cpus memory
    host=$(hostname -s)
    cpus=$(nproc)
    memory=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
    memory=$((memory * 9 / 10))  # leave the OS its share
    mkdir -p "$dir/state" "$dir/spool" "$dir/logs"
    cat >"$conf" <<EOF
# A one-node test cluster written by tools/slurm_localhost.sh (make test-cluster).
ClusterName=localtest
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/logs/slurmctld.log
SlurmdLogFile=$dir/logs/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
NodeName=$host CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    mkdir -p "$(dirname "$default_conf")"
    ln -sfn "$conf" "$default_conf"

    slurmctld -D -f "$conf" >"$dir/logs/slurmctld.out" 2>&1 &
    echo $! >"$dir/slurmctld.daemon"
    sleep 1
    slurmd -D -f "$conf" >"$dir/logs/slurmd.out" 2>&1 &
    echo $! >"$dir/slurmd.daemon"

    for _ in $(seq 60); do
        if sinfo -h -o '%t' 2>/dev/null | grep -qx idle; then
            log "up: $(sinfo -h -o '%P %a %D %t %c CPUs %m MB')"
            return 0
        fi
        sleep 1
    done
    log "the node did not become idle within 60 s:"
    sinfo || true
    tail -n 20 "$dir/logs/slurmctld.log" "$dir/logs/slurmd.log" || true
    exit 1
}

down() {
    # cancel leftover jobs, then stop only the daemons this script started
    scancel --user "$(id -un)" 2>/dev/null || true
    for daemon in slurmd slurmctld; do
        if [ -f "$dir/$daemon.daemon" ]; then
            kill "$(cat "$dir/$daemon.daemon")" 2>/dev/null || true
            rm -f "$dir/$daemon.daemon"
        fi
    done
    if [ -f "$dir/munged.started" ]; then
        pkill -u munge -x munged 2>/dev/null || true
        rm -f "$dir/munged.started"
    fi
    if [ "$(readlink -f "$default_conf" 2>/dev/null)" = "$conf" ]; then
        rm -f "$default_conf"
    fi
    log "down"
}

case "$cmd" in
    up) up ;;
    down) down ;;
    *) log "usage: $0 up|down DIR"; exit 2 ;;
esac
