#!/usr/bin/env bash
# Stop only the SLURM and munge daemons that slurm_up.sh started (by PID and start time).
set -uo pipefail
STATE=${SLURM_TEST_STATE:-/run/cbt-slurm}
for name in slurmd slurmctld munged; do
  f="$STATE/$name.pid"
  [ -s "$f" ] || continue
  read -r pid st < "$f"
  if [ -e "/proc/$pid" ] && [ "$(awk '{print $22}' /proc/$pid/stat)" = "$st" ]; then
    kill "$pid" 2>/dev/null
    for _ in $(seq 50); do [ -e "/proc/$pid" ] || break; sleep 0.1; done
    [ -e "/proc/$pid" ] && kill -9 "$pid" 2>/dev/null
  fi
  rm -f "$f"
done
# Put back the configuration that was there before slurm_up.sh (or remove the one it wrote).
for f in slurm.conf gres.conf; do
  if [ -e "$STATE/$f.orig" ]; then
    cp -p "$STATE/$f.orig" "/etc/slurm/$f" && rm -f "$STATE/$f.orig"
  elif [ -e "$STATE/$f.ours" ]; then
    rm -f "/etc/slurm/$f"
  fi
  rm -f "$STATE/$f.ours"
done
echo "SLURM test daemons stopped"
