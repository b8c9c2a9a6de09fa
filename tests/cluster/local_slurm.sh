#!/usr/bin/env bash
# A real single-node SLURM cluster on 127.0.0.1 with fake GPUs, for tests/test_slurm.py and for
# trying profiles/slurm by hand. Needs root (it installs packages, makes device nodes, runs daemons).
#
#   tests/cluster/local_slurm.sh up      install slurmctld/slurmd/slurm-client/munge when missing, write the
#                                        configuration, start munged, slurmctld and slurmd (idempotent)
#   tests/cluster/local_slurm.sh down    stop exactly the processes `up` started, by their recorded PIDs
#   tests/cluster/local_slurm.sh status  exit 0 when the cluster is up
#   tests/cluster/local_slurm.sh env     print the export line that points SLURM commands at this cluster
#
# After `up`:  eval "$(tests/cluster/local_slurm.sh env)"; sinfo; squeue; sacct -c
#
# Settings (environment):
#   ELECTRODE_ML_SLURM_DIR   state dir: configuration, daemon state, logs, PIDs [/tmp/electrode-ml-slurm]
#   ELECTRODE_ML_SLURM_GPUS  fake GPUs on the node [2]
#   ELECTRODE_ML_SLURM_CPUS  CPUs the node declares [8]; bookkeeping only, so the fake GPUs, not the
#                            real cores, limit how many GPU jobs run at once
#
# SLURM commands on this host find the cluster through /run/slurm/conf (slurmd runs configless), even
# without SLURM_CONF. That matters: snakemake's slurm-jobstep drops SLURM_CONF before its inner srun.
# An existing /etc/slurm/slurm.conf would win over it, so `up` warns about one.
# The one partition is `debug` (the default). Jobs get their GPU index in CUDA_VISIBLE_DEVICES and
# SLURM_JOB_GPUS. What SLURM allocated and what each task saw is logged, for the tests, in
#   $DIR/log/gpu_alloc.log  (Prolog/Epilog: "<event> <epoch s> job=<id> gpus=<SLURM_JOB_GPUS>")
#   $DIR/log/task_env.log   (TaskProlog: job, step, CUDA_VISIBLE_DEVICES, SLURM_JOB_GPUS, SLURM_STEP_GPUS)
#   $DIR/log/jobcomp.txt    (jobcomp/filetxt: read with `sacct -c`; plain `sacct` has no accounting here)
set -euo pipefail

DIR=${ELECTRODE_ML_SLURM_DIR:-/tmp/electrode-ml-slurm}
GPUS=${ELECTRODE_ML_SLURM_GPUS:-2}
CPUS=${ELECTRODE_ML_SLURM_CPUS:-8}
NODE=$(hostname -s)
export SLURM_CONF=$DIR/etc/slurm.conf
PIDS=$DIR/pids

log() { echo "local_slurm: $*" >&2; }

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        log "needs root (it installs packages, makes device nodes and runs munged/slurmctld/slurmd)"
        exit 1
    fi
}

install_packages() {
    local missing=0 tool
    for tool in slurmctld slurmd sinfo sbatch munged munge; do
        command -v "$tool" >/dev/null 2>&1 || missing=1
    done
    [ "$missing" -eq 0 ] && return 0
    log "installing slurmctld slurmd slurm-client munge (Debian packages)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
}

# PID recorded by `up` for one daemon, if that process is still alive and is that daemon.
alive_pid() {
    local name=$1 pid
    [ -f "$PIDS/$name.pid" ] || return 1
    pid=$(cat "$PIDS/$name.pid")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] || return 1
    echo "$pid"
}

node_ready() {
    local state
    state=$(timeout 5 sinfo -h -n "$NODE" -o %t 2>/dev/null | head -1) || return 1
    case "$state" in idle* | mix* | alloc*) return 0 ;; *) return 1 ;; esac
}

is_up() {
    alive_pid slurmctld >/dev/null && alive_pid slurmd >/dev/null && munge_works && node_ready
}

munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

write_config() {
    mkdir -p "$DIR"/{etc,state/ctld,state/d,log,fakedev} "$PIDS"
    local i mem
    for ((i = 0; i < GPUS; i++)); do
        # Fake GPU device nodes (same major/minor as /dev/null): task/none means no device cgroup.
        [ -e "$DIR/fakedev/nvidia$i" ] || mknod "$DIR/fakedev/nvidia$i" c 1 3
    done
    mem=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
    cat >"$DIR/etc/slurm.conf" <<EOF
# Written by tests/cluster/local_slurm.sh: one node ($NODE) on 127.0.0.1 with $GPUS fake GPUs.
ClusterName=electrode-ml-local
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state/ctld
SlurmdSpoolDir=$DIR/state/d
SlurmctldPidFile=$DIR/state/slurmctld.pid
SlurmdPidFile=$DIR/state/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
Prolog=$DIR/etc/prolog.sh
Epilog=$DIR/etc/epilog.sh
TaskProlog=$DIR/etc/task_prolog.sh
# Configless: slurmd fetches this file from slurmctld and links it at /run/slurm/conf, where SLURM
# commands look when SLURM_CONF is unset (snakemake's slurm-jobstep drops SLURM_CONF before its srun).
SlurmctldParameters=enable_configless
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SchedulerType=sched/backfill
# Finished jobs stay visible to squeue for 10 min: snakemake's squeue status check relies on it.
MinJobAge=600
# Lets the node declare more CPUs/GPUs than the hardware has (they are bookkeeping only).
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$mem Gres=gpu:fake:$GPUS State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    # No Flags=no_gpu_env: jobs see their GPU in CUDA_VISIBLE_DEVICES as on a real cluster. (Without
    # device cgroups the index is the global one, so on a host with one real GPU a job given fake
    # index 1 would not see it; the tests train on the CPU.)
    cat >"$DIR/etc/gres.conf" <<EOF
AutoDetect=off
NodeName=$NODE Name=gpu Type=fake File=$DIR/fakedev/nvidia[0-$((GPUS - 1))]
EOF
    cat >"$DIR/etc/prolog.sh" <<EOF
#!/bin/sh
echo "start \$(date +%s.%N) job=\$SLURM_JOB_ID gpus=\${SLURM_JOB_GPUS:-}" >>"$DIR/log/gpu_alloc.log"
EOF
    cat >"$DIR/etc/epilog.sh" <<EOF
#!/bin/sh
echo "end \$(date +%s.%N) job=\$SLURM_JOB_ID gpus=\${SLURM_JOB_GPUS:-}" >>"$DIR/log/gpu_alloc.log"
EOF
    # TaskProlog runs in each task's environment; a "print" line also lands in the job's output file.
    cat >"$DIR/etc/task_prolog.sh" <<EOF
#!/bin/sh
line="job=\$SLURM_JOB_ID step=\${SLURM_STEP_ID:-batch} CUDA_VISIBLE_DEVICES=\${CUDA_VISIBLE_DEVICES:-unset} SLURM_JOB_GPUS=\${SLURM_JOB_GPUS:-unset} SLURM_STEP_GPUS=\${SLURM_STEP_GPUS:-unset}"
echo "\$(date +%s.%N) \$line" >>"$DIR/log/task_env.log"
echo "print local_slurm task: \$line"
EOF
    chmod 755 "$DIR/etc/prolog.sh" "$DIR/etc/epilog.sh" "$DIR/etc/task_prolog.sh"
}

# Start a daemon in the foreground mode as a background process in its own session and record its PID.
# setsid execs (the child of a non-interactive shell is no process-group leader), so $! is the daemon,
# but only once the forked shell, setsid and setpriv or env have each exec'd the next: until then the
# PID carries their name, and alive_pid would call the daemon dead. So wait for the last exec.
start() {
    local name=$1 pid i
    shift
    setsid "$@" >>"$DIR/log/$name.out" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$PIDS/$name.pid"
    for ((i = 0; i < 100; i++)); do
        alive_pid "$name" >/dev/null && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    log "$name did not start (pid $pid)"
    show_logs
    exit 1
}

up() {
    need_root
    install_packages
    if is_up; then
        log "already up (state in $DIR)"
        return 0
    fi
    down_quietly
    if [ -e /etc/slurm/slurm.conf ]; then
        log "warning: /etc/slurm/slurm.conf exists; SLURM commands run without SLURM_CONF (such as the srun"
        log "inside snakemake's jobs) will use it, not this cluster"
    fi
    write_config
    if alive_pid munged >/dev/null || munge_works; then
        log "munged already running; using it"
    else
        mkdir -p /run/munge
        chown munge:munge /run/munge
        # munged refuses to run as root; as the munge user, with -F it stays in the foreground.
        start munged setpriv --reuid=munge --regid=munge --clear-groups /usr/sbin/munged -F
        wait_for "munged" munge_works 10
    fi
    start slurmctld slurmctld -D
    # No SLURM_CONF for slurmd: with --conf-server it takes the configuration from slurmctld (configless).
    start slurmd env -u SLURM_CONF slurmd -D --conf-server 127.0.0.1
    wait_for "node $NODE to be idle" node_ready 30
    log "up: node $NODE, $GPUS fake GPUs, $CPUS CPUs, partition debug (state in $DIR)"
    log "SLURM commands on this host find it through /run/slurm/conf; or export SLURM_CONF=$SLURM_CONF"
}

# Wait up to $3 seconds for check $2; fail at once, with the logs, when a daemon we started has died.
wait_for() {
    local what=$1 check=$2 seconds=$3 name
    local deadline=$((SECONDS + seconds))
    while ((SECONDS < deadline)); do
        "$check" && return 0
        for name in munged slurmctld slurmd; do
            if [ -f "$PIDS/$name.pid" ] && ! alive_pid "$name" >/dev/null; then
                log "$name exited while waiting for $what"
                show_logs
                exit 1
            fi
        done
        sleep 0.2
    done
    log "timed out after ${seconds}s waiting for $what"
    show_logs
    exit 1
}

show_logs() {
    local f
    for f in "$DIR"/log/slurmctld.log "$DIR"/log/slurmd.log "$DIR"/log/munged.out; do
        [ -f "$f" ] && { echo "== $f"; tail -n 15 "$f"; } >&2
    done
    return 0
}

# Cancel this cluster's jobs (their processes belong to slurmstepd, not to the daemons), then stop
# the daemons `up` started, by PID, slurmd first; SIGKILL what is left after 10 s.
down_quietly() {
    local name pid i jobs
    if alive_pid slurmctld >/dev/null; then
        jobs=$(timeout 10 squeue -h -o %i 2>/dev/null || true)
        if [ -n "$jobs" ]; then
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            for ((i = 0; i < 100; i++)); do
                [ -z "$(timeout 5 squeue -h -t running,completing -o %i 2>/dev/null)" ] && break
                sleep 0.1
            done
        fi
    fi
    for name in slurmd slurmctld munged; do
        if pid=$(alive_pid "$name"); then
            kill -TERM "$pid" 2>/dev/null || true
            for ((i = 0; i < 100; i++)); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
            log "stopped $name (pid $pid)"
        fi
        rm -f "$PIDS/$name.pid"
    done
    # The link configless slurmd made to its cached configuration, if it is still ours.
    if [ "$(readlink /run/slurm/conf 2>/dev/null)" = "$DIR/state/d/conf-cache" ]; then
        rm -f /run/slurm/conf
    fi
}

down() {
    need_root
    down_quietly
}

# Run as a command; sourced (tests/test_local_slurm.py), it only defines the functions.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    case "${1:-}" in
    up) up ;;
    down) down ;;
    status) is_up ;;
    env) echo "export SLURM_CONF=$SLURM_CONF" ;;
    *)
        echo "usage: $0 up|down|status|env" >&2
        exit 2
        ;;
    esac
fi
