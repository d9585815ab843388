#!/usr/bin/env bash
# Start a real single-node SLURM cluster on this machine (Debian's slurm-wlm + munge, as root):
# one node with all CPUs and memory, one partition `debug`, no accounting database (the
# Snakemake SLURM plugin then polls with `squeue`). Idempotent: when the node is already up it only
# brings a changed slurm.conf into effect (scontrol reconfigure).
# Used by the cluster test (tests/test_slurm.py) and by .ci/run.
set -euo pipefail

for tool in munged slurmctld slurmd; do
  command -v "$tool" >/dev/null || { echo "start-slurm: $tool not found (apt-get install slurm-wlm munge)" >&2; exit 1; }
done

host=$(hostname -s)
node=$(slurmd -C | head -1)                      # NodeName=<host> CPUs=… RealMemory=…
cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$node")
mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node")

# MinJobAge: slurmctld keeps a finished job's record (what `scontrol show job` reads) this many seconds.
# The cluster test reads every job's state after the whole study has run, which takes longer than
# SLURM's default of 300 s on a slow machine; a day covers any machine.
conf=$(cat <<CONF
ClusterName=dlnpipe
SlurmctldHost=${host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
MinJobAge=86400
KillWait=5
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem} State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP
CONF
)
up() { sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; }
if up && [ "$conf" = "$(cat /etc/slurm/slurm.conf 2>/dev/null)" ]; then
  exit 0
fi
[ "$(id -u)" = 0 ] || { echo "start-slurm: must run as root" >&2; exit 1; }
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
if up; then
  printf '%s\n' "$conf" > /etc/slurm/slurm.conf
  scontrol reconfigure
  exit 0
fi
printf '%s\n' "$conf" > /etc/slurm/slurm.conf

if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
chmod 0400 /etc/munge/munge.key
pgrep -x munged >/dev/null || su -s /bin/sh munge -c /usr/sbin/munged
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd

for _ in $(seq 300); do   # seconds: the daemons register in a few; generous for a slow machine
  if up; then
    sinfo
    exit 0
  fi
  sleep 1
done
echo "start-slurm: the node did not come up; logs:" >&2
tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
exit 1
