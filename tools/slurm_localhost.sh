#!/usr/bin/env bash
# A real single-host Slurm cluster (slurmctld + slurmd as background processes) for tests and CI.
#
# Usage:
#   tools/slurm_localhost.sh start  STATE_DIR [--cpus N] [--gpus N] [--mem-mb M]
#   tools/slurm_localhost.sh status STATE_DIR
#   tools/slurm_localhost.sh stop   STATE_DIR
#   . STATE_DIR/env.sh        # points sbatch/squeue/scontrol/srun at this cluster (exports SLURM_CONF)
#
# start writes STATE_DIR/{slurm.conf,gres.conf,env.sh}, starts the daemons by PID (no systemd), waits until the node
# is idle and prints the SLURM_CONF line. The node offers more CPU slots than the machine has cores
# (SlurmdParameters=config_overrides, default --cpus 8) so job arrays run in parallel, and --gpus fake GPUs (char
# devices made with mknod, root only) so --gres=gpu:N requests are accepted. Partitions "cpu" (default) and "gpu"
# both hold the node, so an ESPnet conf/slurm.conf (-p cpu / -p gpu) works unchanged.
# stop cancels every job of this cluster and stops the daemons (TERM, then KILL after 10 s).
# Authentication is auth/none (Slurm 22.05): for a throw-away test cluster on a machine you control only; the
# ports are picked free at start, so several clusters (e.g. parallel test sessions) can coexist.
# Needs the Debian packages slurmctld slurmd slurm-client (tools/install.sh installs them as root).
set -euo pipefail

die() { echo "slurm_localhost.sh: $*" >&2; exit 1; }

[ $# -ge 2 ] || { sed -n '2,9p' "$0" >&2; exit 1; }
action=$1
state=$2
shift 2
cpus=8
gpus=2
mem_mb=16000
while [ $# -gt 0 ]; do
  case "$1" in
    --cpus) cpus=$2; shift 2 ;;
    --gpus) gpus=$2; shift 2 ;;
    --mem-mb|--mem_mb) mem_mb=$2; shift 2 ;;
    *) die "unknown option '$1' (see the Usage at the top of $0)" ;;
  esac
done

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_pid() {  # stop_pid PIDFILE NAME
  local pidfile=$1 name=$2 pid i
  pid_alive "${pidfile}" || { rm -f "${pidfile}"; return 0; }
  pid=$(cat "${pidfile}")
  kill -TERM "${pid}" 2>/dev/null || true
  for i in $(seq 100); do
    kill -0 "${pid}" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "${pid}" 2>/dev/null; then
    echo "slurm_localhost.sh: ${name} (pid ${pid}) ignored SIGTERM for 10 s; killing it" >&2
    kill -KILL "${pid}" 2>/dev/null || true
  fi
  rm -f "${pidfile}"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

case "${action}" in
  start)
    for exe in slurmctld slurmd sinfo sbatch; do
      command -v "${exe}" >/dev/null || [ -x "/usr/sbin/${exe}" ] \
        || die "${exe} is not installed (apt-get install slurmctld slurmd slurm-client)"
    done
    export PATH=${PATH}:/usr/sbin
    mkdir -p "${state}"
    state=$(cd "${state}" && pwd)
    if pid_alive "${state}/slurmctld.pid" || pid_alive "${state}/slurmd.pid"; then
      die "a cluster is already running from ${state} (stop it first: $0 stop ${state})"
    fi
    mkdir -p "${state}/ctld" "${state}/spool" "${state}/dev"
    node=$(hostname -s)
    ctld_port=$(free_port)
    slurmd_port=$(free_port)
    while [ "${slurmd_port}" = "${ctld_port}" ]; do slurmd_port=$(free_port); done
    gres_line=""
    : > "${state}/gres.conf"
    if [ "${gpus}" -gt 0 ]; then
      for i in $(seq 0 $((gpus - 1))); do
        [ -e "${state}/dev/nvidia${i}" ] || mknod "${state}/dev/nvidia${i}" c 1 3 2>/dev/null || break
      done
      if [ -e "${state}/dev/nvidia$((gpus - 1))" ]; then
        echo "Name=gpu File=${state}/dev/nvidia[0-$((gpus - 1))]" > "${state}/gres.conf"
        gres_line="Gres=gpu:${gpus}"
      else
        echo "slurm_localhost.sh: cannot create fake GPU devices (mknod needs root); the node has no GPUs" >&2
      fi
    fi
    cat > "${state}/slurm.conf" <<EOF
# Written by tools/slurm_localhost.sh: a single-host test cluster (see that script).
ClusterName=blspkd
SlurmctldHost=${node}(127.0.0.1)
SlurmctldPort=${ctld_port}
SlurmdPort=${slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
StateSaveLocation=${state}/ctld
SlurmdSpoolDir=${state}/spool
SlurmctldPidFile=${state}/slurmctld.daemon.pid
SlurmdPidFile=${state}/slurmd.daemon.pid
SlurmctldLogFile=${state}/slurmctld.log
SlurmdLogFile=${state}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No systemd or cgroups here: plain process tracking.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a default memory per CPU every job takes all of the node's memory and jobs run one at a time.
DefMemPerCPU=500
# Reject impossible requests at submission instead of leaving them pending forever.
EnforcePartLimits=ALL
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
MinJobAge=600
# Offer the CPUs/memory/GPUs below even though the machine has fewer.
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName=${node} NodeAddr=127.0.0.1 CPUs=${cpus} Sockets=1 CoresPerSocket=${cpus} ThreadsPerCore=1 RealMemory=${mem_mb} ${gres_line} State=UNKNOWN
PartitionName=cpu Nodes=${node} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=${node} MaxTime=INFINITE State=UP
EOF
    cat > "${state}/env.sh" <<EOF
# Source me to talk to the localhost cluster in ${state}.
export SLURM_CONF=${state}/slurm.conf
export PATH=\${PATH}:/usr/sbin
EOF
    export SLURM_CONF=${state}/slurm.conf
    # -c: start from a clean state; -D: stay in the foreground so that \$! is the daemon's PID.
    setsid slurmctld -D -c -f "${SLURM_CONF}" >> "${state}/slurmctld.out" 2>&1 < /dev/null &
    echo $! > "${state}/slurmctld.pid"
    setsid slurmd -D -f "${SLURM_CONF}" -N "${node}" >> "${state}/slurmd.out" 2>&1 < /dev/null &
    echo $! > "${state}/slurmd.pid"
    start_time=$(date +%s)
    until [ "$(sinfo -h -n "${node}" -o %T 2>/dev/null | head -n1)" = idle ]; do
      if ! pid_alive "${state}/slurmctld.pid" || ! pid_alive "${state}/slurmd.pid" \
         || [ $(($(date +%s) - start_time)) -gt 30 ]; then
        echo "slurm_localhost.sh: the cluster did not come up; last lines of its logs:" >&2
        tail -n 5 "${state}"/slurmctld.log "${state}"/slurmd.log "${state}"/*.out 2>/dev/null >&2 || true
        "$0" stop "${state}" || true
        exit 1
      fi
      sleep 0.2
    done
    echo "slurm_localhost.sh: cluster up in $(($(date +%s) - start_time)) s (node ${node}: ${cpus} CPUs," \
      "${mem_mb} MB, ${gres_line:-no GPUs}); use it with: export SLURM_CONF=${SLURM_CONF}"
    ;;
  stop)
    [ -d "${state}" ] || die "no state directory ${state}"
    state=$(cd "${state}" && pwd)
    export PATH=${PATH}:/usr/sbin SLURM_CONF=${state}/slurm.conf
    if pid_alive "${state}/slurmctld.pid"; then
      jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ' || true)
      if [ -n "${jobs// /}" ]; then
        # shellcheck disable=SC2086
        scancel ${jobs} 2>/dev/null || true
        for _ in $(seq 50); do
          [ -z "$(squeue -h 2>/dev/null)" ] && break
          sleep 0.1
        done
      fi
    fi
    stop_pid "${state}/slurmd.pid" slurmd
    stop_pid "${state}/slurmctld.pid" slurmctld
    echo "slurm_localhost.sh: stopped the cluster in ${state}"
    ;;
  status)
    export PATH=${PATH}:/usr/sbin SLURM_CONF=${state}/slurm.conf
    rc=0
    for d in slurmctld slurmd; do
      if pid_alive "${state}/${d}.pid"; then echo "${d}: running (pid $(cat "${state}/${d}.pid"))"
      else echo "${d}: not running"; rc=1; fi
    done
    [ ${rc} -eq 0 ] && sinfo
    exit ${rc}
    ;;
  *) die "unknown action '${action}' (start, stop or status)" ;;
esac
