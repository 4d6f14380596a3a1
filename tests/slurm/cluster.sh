#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, from Debian's packages: cluster.sh up | down | status.
# Accounting runs through slurmdbd on a local MariaDB, because submitit reads job states with sacct.
# Needs root; `up` installs slurm-wlm, slurmdbd, munge and mariadb-server when they are missing.
set -euo pipefail

MARK="# written by agentexp tests/slurm/cluster.sh"
NODE=$(hostname -s)
LOGS=/var/log/slurm
SPOOL=/var/spool
PARTITION=${AGENTEXP_SLURM_PARTITION:-debug}
# daemon name -> pid file; started in this order, stopped in the reverse one.
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)
declare -A PIDFILE=(
  [munged]=/run/munge/munged.pid
  [mariadbd]=/run/mysqld/mysqld.pid
  [slurmdbd]=/run/slurmdbd.pid
  [slurmctld]=/run/slurmctld.pid
  [slurmd]=/run/slurmd.pid
)

say() { echo "cluster.sh: $*"; }
die() { echo "cluster.sh: $*" >&2; exit 1; }

running() {  # running NAME: its pid file names a live process
  local file=${PIDFILE[$1]}
  [[ -s $file ]] && kill -0 "$(cat "$file")" 2>/dev/null
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local seconds=$1 what=$2
  shift 2
  for _ in $(seq $((seconds * 5))); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  die "$what did not happen within ${seconds}s (logs in $LOGS)"
}

install_packages() {
  local missing=()
  command -v slurmctld >/dev/null || missing+=(slurm-wlm)
  command -v slurmdbd >/dev/null || missing+=(slurmdbd)
  command -v munged >/dev/null || missing+=(munge)
  command -v mariadbd >/dev/null || missing+=(mariadb-server)
  ((${#missing[@]} == 0)) && return 0
  say "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

write_conf() {  # write_conf PATH MODE: stdin to PATH, unless PATH is someone else's file
  if [[ -e $1 ]] && ! grep -qF "$MARK" "$1"; then
    die "$1 exists and was not written by this script; move it away to use the test cluster"
  fi
  { echo "$MARK"; cat; } >"$1"
  chmod "$2" "$1"
}

configure() {
  mkdir -p /etc/slurm "$LOGS" "$SPOOL/slurmctld" "$SPOOL/slurmd" /run/munge /run/mysqld
  chown munge:munge /run/munge
  chown mysql:mysql /run/mysqld
  if [[ ! -s /etc/munge/munge.key ]]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
  write_conf /etc/slurm/slurm.conf 644 <<EOF
ClusterName=agentexp
SlurmctldHost=$NODE
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
StateSaveLocation=$SPOOL/slurmctld
SlurmdSpoolDir=$SPOOL/slurmd
SlurmctldPidFile=${PIDFILE[slurmctld]}
SlurmdPidFile=${PIDFILE[slurmd]}
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
# seconds between SIGTERM and SIGKILL at a time limit or scancel (default 30)
KillWait=5
NodeName=$NODE CPUs=$(nproc) RealMemory=8000 State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  # slurmdbd reaches MariaDB's root account through the local socket (unix_socket auth): no password.
  write_conf /etc/slurm/slurmdbd.conf 600 <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=${PIDFILE[slurmdbd]}
LogFile=$LOGS/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
EOF
}

start() {
  case $1 in
    munged) runuser -u munge -- /usr/sbin/munged ;;
    mariadbd)
      [[ -d /var/lib/mysql/mysql ]] || mariadb-install-db --user=mysql >/dev/null
      setsid /usr/sbin/mariadbd --user=mysql --skip-networking --innodb-buffer-pool-size=32M \
        --pid-file="${PIDFILE[mariadbd]}" >>"$LOGS/mariadb.log" 2>&1 </dev/null &
      wait_for 30 "MariaDB answering" mariadb -e "select 1"
      ;;
    slurmdbd)
      slurmdbd
      wait_for 30 "slurmdbd answering" sacctmgr -n list cluster
      sacctmgr -n list cluster format=cluster | grep -qw agentexp || sacctmgr -i add cluster agentexp >/dev/null
      ;;
    slurmctld) slurmctld ;;
    slurmd) slurmd ;;
  esac
}

node_idle() { [[ $(sinfo -h -n "$NODE" -o %T) == idle* ]]; }

up() {
  [[ $(id -u) == 0 ]] || die "bringing up the cluster needs root"
  local began=$SECONDS
  install_packages
  configure
  for daemon in "${DAEMONS[@]}"; do
    running "$daemon" || start "$daemon"
  done
  wait_for 60 "node $NODE idle" node_idle
  say "up in $((SECONDS - began))s: partition $PARTITION on $NODE ($(nproc) CPUs)"
}

down() {
  if command -v squeue >/dev/null && running slurmctld; then
    squeue -h -o %i | xargs -r scancel
  fi
  local i
  for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
    local daemon=${DAEMONS[i]}
    running "$daemon" || continue
    local pid
    pid=$(cat "${PIDFILE[$daemon]}")
    kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && die "$daemon (pid $pid) did not stop"
  done
  say "down"
}

status() {
  local all=0
  for daemon in "${DAEMONS[@]}"; do
    if running "$daemon"; then say "$daemon running (pid $(cat "${PIDFILE[$daemon]}"))"; else say "$daemon stopped"; all=1; fi
  done
  ((all == 0)) && sinfo
  return $all
}

case ${1:-} in
  up) up ;;
  down) down ;;
  status) status ;;
  *) die "usage: cluster.sh up | down | status" ;;
esac
