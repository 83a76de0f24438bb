#!/usr/bin/env bash
# Bring up a single-node SLURM cluster on this machine for the tests (no systemd needed):
# installs Debian's munge/slurmctld/slurmd/slurm-client if missing, writes slurm.conf for this host
# (with a dummy `gpu` GRES so GPU requests are accepted), starts munged, slurmctld and slurmd, and
# waits until the node is idle. Records the PIDs and start times of what it started in
# $SLURM_TEST_STATE (default /run/cbt-slurm) so slurm_down.sh stops only those.
set -euo pipefail
STATE=${SLURM_TEST_STATE:-/run/cbt-slurm}
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
HOST=$(hostname -s)
t0=$(date +%s.%N)

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || true
  apt-get install -y -qq --no-install-recommends munge slurmctld slurmd slurm-client >/dev/null
fi

mkdir -p "$STATE" /run/munge /var/log/slurm /var/spool/slurmctld /var/spool/slurmd /run/slurm /etc/slurm
chown munge:munge /run/munge
chmod 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
chown -R slurm:slurm /var/spool/slurmctld /var/log/slurm /run/slurm 2>/dev/null || true

# Keep any configuration that was there before; slurm_down.sh puts it back. (A slurm.conf left
# behind with no controller running makes every `scontrol` call, and so every snakemake start with
# the SLURM plugin installed, wait about 10 s.)
for f in slurm.conf gres.conf; do
  if [ -e "/etc/slurm/$f" ] && [ ! -e "$STATE/$f.orig" ] && [ ! -e "$STATE/$f.ours" ]; then
    cp -p "/etc/slurm/$f" "$STATE/$f.orig"
  fi
  touch "$STATE/$f.ours"
done

# A character device backs the dummy GPU (a gres.conf count without File does not work).
cat > /etc/slurm/gres.conf <<GRES
NodeName=$HOST Name=gpu File=/dev/null
GRES

cat > /etc/slurm/slurm.conf <<CONF
ClusterName=cbttest
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
ReturnToService=2
MinJobAge=300
SchedulerType=sched/backfill
GresTypes=gpu
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:1 State=UNKNOWN
PartitionName=main Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF

record() {  # name pid: keep the PID and its start time (against PID reuse)
  echo "$2 $(awk '{print $22}' /proc/$2/stat)" > "$STATE/$1.pid"
}

start_daemon() {  # name pidfile command...: start unless ours is already running
  local name=$1 pidfile=$2; shift 2
  if [ -s "$STATE/$name.pid" ] && read -r pid st < "$STATE/$name.pid" && [ -e /proc/$pid ] \
     && [ "$(awk '{print $22}' /proc/$pid/stat)" = "$st" ]; then
    return 0
  fi
  rm -f "$pidfile"
  # Close inherited descriptors above 2 so the daemons do not hold a caller's lock files.
  ( for fd in $(ls /proc/$$/fd); do [ "$fd" -gt 2 ] && eval "exec $fd>&-" 2>/dev/null; done; exec "$@" ) </dev/null >/dev/null 2>&1
  for _ in $(seq 100); do [ -s "$pidfile" ] && break; sleep 0.05; done
  [ -s "$pidfile" ] || { echo "$name did not write $pidfile" >&2; exit 1; }
  record "$name" "$(cat "$pidfile")"
}

start_daemon munged /run/munge/munged.pid runuser -u munge -- /usr/sbin/munged
munge -n | unmunge >/dev/null
start_daemon slurmctld /run/slurm/slurmctld.pid /usr/sbin/slurmctld -c
start_daemon slurmd /run/slurm/slurmd.pid /usr/sbin/slurmd

for _ in $(seq 200); do
  state=$(sinfo -h -N -o %t 2>/dev/null | head -n1 || true)
  case "$state" in idle|mix|alloc) break ;; drain*|inval*) scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true ;; esac
  sleep 0.1
done
state=$(sinfo -h -N -o %t | head -n1)
[ "$state" = idle ] || [ "$state" = mix ] || { echo "node state: $state" >&2; exit 1; }
printf "SLURM up on %s (%s CPUs, %s MB) in %s s\n" "$HOST" "$CPUS" "$MEM_MB" "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')"
