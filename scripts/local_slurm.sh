#!/usr/bin/env bash
# A real single-node SLURM (slurmctld + slurmd + slurmdbd accounting on MariaDB) bound to loopback,
# for tests, CI and trying `cluster=slurm` on a workstation. Needs root (apt, daemons); no systemd.
#
#   scripts/local_slurm.sh start    # install if needed, write configs, start daemons; idempotent
#   scripts/local_slurm.sh status   # exit 0 when the controller answers and the node is usable
#   scripts/local_slurm.sh stop     # stop the daemons this script started (by their pid files)
#
# Files: configs in /etc/slurm (SLURM's compiled-in location, so sbatch/squeue find them without
# SLURM_CONF), state and logs under $VLA_SLURM_STATE (default /var/lib/vla_hydra_slurm).
# An /etc/slurm/slurm.conf that this script did not write is never touched.
set -euo pipefail

STATE_DIR=${VLA_SLURM_STATE:-/var/lib/vla_hydra_slurm}
CONF_DIR=/etc/slurm
MARKER="# written by vla_hydra scripts/local_slurm.sh"
CLUSTER=local
NODE=localhost
PARTITION=debug
ACCOUNT=vla_hydra
SHORT_QOS=short
SHORT_QOS_MAXWALL=00:05:00
DB_SOCKET=$STATE_DIR/mysql/mysqld.sock
START_TIMEOUT_S=${VLA_SLURM_START_TIMEOUT_S:-60}

log() { echo "local_slurm: $*" >&2; }
die() { echo "error: local_slurm: $*" >&2; exit 1; }

have_binaries() {
    local bin
    for bin in munged slurmctld slurmd slurmdbd sbatch sacctmgr mariadbd mariadb-install-db; do
        command -v "$bin" >/dev/null 2>&1 || [[ -x /usr/sbin/$bin ]] || return 1
    done
}

install_packages() {
    have_binaries && return 0
    [[ $(id -u) -eq 0 ]] || die "SLURM is not installed and installing it needs root (apt-get)"
    command -v apt-get >/dev/null || die "SLURM is not installed and there is no apt-get to install it"
    log "installing munge, slurmctld, slurmd, slurm-client, slurmdbd, mariadb (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    # policy-rc.d 101: package scripts must not try to start services (no init system here)
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [[ ! -e $policy ]]; then printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created_policy=1; fi
    apt-get install -y -qq --no-install-recommends munge slurmctld slurmd slurm-client slurmdbd \
        mariadb-server-core mariadb-client-core >/dev/null
    [[ $created_policy -eq 1 ]] && rm -f "$policy"
    have_binaries || die "apt-get finished but SLURM/MariaDB binaries are missing"
}

pid_alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() {  # wait_for <what> <pid file> <command...>: poll until the command succeeds
    local what=$1 pidfile=$2; shift 2
    local deadline=$((SECONDS + START_TIMEOUT_S))
    until "$@" >/dev/null 2>&1; do
        # a daemon that died at start-up (bad config) fails now, not after the timeout
        if [[ -n $pidfile ]] && ((SECONDS > deadline - START_TIMEOUT_S + 2)) && ! pid_alive "$pidfile"; then
            die "$what exited at start-up: $(tail -n 1 "$STATE_DIR/log/$what.log" 2>/dev/null)"
        fi
        ((SECONDS < deadline)) || die "$what did not come up within ${START_TIMEOUT_S}s (logs: $STATE_DIR/log)"
        sleep 0.5
    done
}

# What this script writes as slurm.conf and slurmdbd.conf. On `start`, a config that differs from the one
# in place (written by an earlier version of this script) is rewritten and the daemons already running
# with the old one are restarted; `status` reports such a config as out of date.
render_slurm_conf() {
    # the node line as slurmd detects the hardware; memory capped at 85% so a job asking for what is
    # "free" cannot be refused by the node's own check
    local hw mem cpus topology
    hw=$(slurmd -C | head -1)
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
    cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$hw")
    topology=$(grep -o 'Boards=[0-9]* SocketsPerBoard=[0-9]* CoresPerSocket=[0-9]* ThreadsPerCore=[0-9]*' <<<"$hw")
    cat <<EOF
$MARKER
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/slurmd
SlurmctldPidFile=$STATE_DIR/run/slurmctld.pid
SlurmdPidFile=$STATE_DIR/run/slurmd.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
ReturnToService=2
MailProg=/bin/true
JobRequeue=1
MinJobAge=600
KillWait=10
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
# as on real clusters: a job needs an association (user + account, see ensure_accounts), a QOS that
# association may use, and must fit the QOS's limits; sbatch refuses the others
AccountingStorageEnforce=associations,limits,qos
NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$NODE CPUs=$cpus $topology RealMemory=$((mem * 85 / 100)) State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

render_slurmdbd_conf() {
    cat <<EOF
$MARKER
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=$STATE_DIR/run/slurmdbd.pid
LogFile=$STATE_DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
EOF
}

same_content() { [[ -f $1 ]] && [[ $(cat "$1") == "$2" ]]; }

# a daemon started before its config was (re)written runs with the old one (pid files are written at start)
stale_daemon() { pid_alive "$STATE_DIR/run/$1.pid" && [[ $CONF_DIR/$2 -nt $STATE_DIR/run/$1.pid ]]; }

write_configs() {  # a config is rewritten only when it changes, so its mtime tells stale_daemon the truth
    if [[ -f $CONF_DIR/slurm.conf ]] && ! grep -qF "$MARKER" "$CONF_DIR/slurm.conf"; then
        die "$CONF_DIR/slurm.conf exists and was not written by this script; refusing to replace it"
    fi
    mkdir -p "$CONF_DIR" "$STATE_DIR"/{ctld,slurmd,log,run,mysql}
    local conf
    conf=$(render_slurm_conf)
    same_content "$CONF_DIR/slurm.conf" "$conf" || printf '%s\n' "$conf" >"$CONF_DIR/slurm.conf"
    conf=$(render_slurmdbd_conf)
    same_content "$CONF_DIR/slurmdbd.conf" "$conf" || printf '%s\n' "$conf" >"$CONF_DIR/slurmdbd.conf"
    # slurmdbd refuses a config readable by others (it may hold the database password)
    chmod 600 "$CONF_DIR/slurmdbd.conf"
    # MariaDB reached by its socket only: "localhost" means the socket for the MySQL client library
    cat >"$STATE_DIR/mysql.cnf" <<EOF
[client]
socket=$DB_SOCKET
[mysqld]
socket=$DB_SOCKET
skip-networking
datadir=$STATE_DIR/mysql/data
pid-file=$STATE_DIR/run/mysqld.pid
log-error=$STATE_DIR/log/mysqld.log
innodb_buffer_pool_size=256M
innodb_lock_wait_timeout=900
EOF
    # slurmdbd's MySQL client reads the default socket path; point it at ours
    mkdir -p /run/mysqld
    ln -sfn "$DB_SOCKET" /run/mysqld/mysqld.sock
}

start_munge() {
    pid_alive "$STATE_DIR/run/munged.pid" && return 0
    [[ -s /etc/munge/munge.key ]] || { mungekey --create --force 2>/dev/null || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null; }
    chown munge:munge /etc/munge/munge.key 2>/dev/null || true
    chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
    runuser -u munge -- munged --force --pid-file="$STATE_DIR/run/munged.pid.tmp" 2>/dev/null \
        || munged --force --pid-file="$STATE_DIR/run/munged.pid.tmp"
    wait_for munged "" bash -c "munge -n | unmunge"
    # munged writes its pid file as the munge user into a root-owned dir only via the .tmp name above
    mv -f "$STATE_DIR/run/munged.pid.tmp" "$STATE_DIR/run/munged.pid" 2>/dev/null || pgrep -nx munged >"$STATE_DIR/run/munged.pid"
}

db() { mariadb --defaults-file="$STATE_DIR/mysql.cnf" -uroot "$@"; }

start_mariadb() {
    pid_alive "$STATE_DIR/run/mysqld.pid" && return 0
    if [[ ! -d $STATE_DIR/mysql/data/mysql ]]; then
        mariadb-install-db --defaults-file="$STATE_DIR/mysql.cnf" --user=root --auth-root-authentication-method=socket \
            >"$STATE_DIR/log/mysql-install.log" 2>&1 || die "mariadb-install-db failed (see $STATE_DIR/log/mysql-install.log)"
    fi
    # daemonised by hand: no init system; --user=root because slurmdbd connects as root over the socket
    setsid mariadbd --defaults-file="$STATE_DIR/mysql.cnf" --user=root </dev/null >/dev/null 2>&1 &
    wait_for mysqld "$STATE_DIR/run/mysqld.pid" db -e "select 1"
    db -e "create database if not exists slurm_acct_db"
}

# The accounting this script sets up (SLURM enforces it: AccountingStorageEnforce above). Account
# $ACCOUNT with QOS normal (the default) and $SHORT_QOS (at most $SHORT_QOS_MAXWALL per job; DenyOnLimit:
# sbatch refuses a longer --time instead of leaving the job pending); root, and the user who ran this
# script through sudo, are associated with it as their default account, so a job that names no account
# runs. Anything else (another account, QOS or user) is refused as on a real cluster.
ensure_accounts() {
    local users=(root) user qos assocs defaults
    if [[ -n ${SUDO_USER:-} && $SUDO_USER != root ]] && id "$SUDO_USER" >/dev/null 2>&1; then users+=("$SUDO_USER"); fi
    qos=$(sacctmgr -n -P show qos format=name,maxwall,flags)
    if ! grep -qx "$SHORT_QOS|$SHORT_QOS_MAXWALL|DenyOnLimit" <<<"$qos"; then
        if grep -q "^$SHORT_QOS|" <<<"$qos"; then
            sacctmgr -i modify qos "$SHORT_QOS" set MaxWall="$SHORT_QOS_MAXWALL" Flags=DenyOnLimit >/dev/null
        else
            sacctmgr -i add qos "$SHORT_QOS" MaxWall="$SHORT_QOS_MAXWALL" Flags=DenyOnLimit \
                Description="jobs of at most $SHORT_QOS_MAXWALL" >/dev/null
        fi
    fi
    assocs=$(sacctmgr -n -P show assoc where cluster="$CLUSTER" format=account,user,qos,defaultqos)
    if ! grep -qx "$ACCOUNT||normal,$SHORT_QOS|normal" <<<"$assocs"; then
        if grep -q "^$ACCOUNT||" <<<"$assocs"; then
            sacctmgr -i modify account "$ACCOUNT" where cluster="$CLUSTER" set qos=normal,"$SHORT_QOS" defaultqos=normal >/dev/null
        else
            sacctmgr -i add account "$ACCOUNT" cluster="$CLUSTER" description="vla_hydra local SLURM" \
                organization=vla_hydra qos=normal,"$SHORT_QOS" defaultqos=normal >/dev/null
        fi
    fi
    for user in "${users[@]}"; do
        grep -q "^$ACCOUNT|$user|" <<<"$assocs" || sacctmgr -i add user "$user" account="$ACCOUNT" cluster="$CLUSTER" >/dev/null
    done
    defaults=$(sacctmgr -n -P show user format=user,defaultaccount)
    for user in "${users[@]}"; do
        grep -qx "$user|$ACCOUNT" <<<"$defaults" || sacctmgr -i modify user "$user" set defaultaccount="$ACCOUNT" >/dev/null
    done
}

start_slurmdbd() {
    if stale_daemon slurmdbd slurmdbd.conf; then
        log "slurmdbd.conf changed since slurmdbd started: restarting it"
        stop_pidfile slurmdbd
    fi
    pid_alive "$STATE_DIR/run/slurmdbd.pid" || slurmdbd
    wait_for slurmdbd "$STATE_DIR/run/slurmdbd.pid" sacctmgr -n show cluster
    sacctmgr -n show cluster format=cluster | grep -qw "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null
    ensure_accounts
}

node_usable() { sinfo -h -n "$NODE" -o %T | grep -qE '^(idle|mixed|allocated|completing)'; }

start_slurm() {
    if stale_daemon slurmctld slurm.conf || stale_daemon slurmd slurm.conf; then
        # started with an earlier config (e.g. without AccountingStorageEnforce); jobs and state survive
        log "slurm.conf changed since SLURM started: restarting slurmctld and slurmd"
        stop_pidfile slurmd &
        stop_pidfile slurmctld &
        wait
    fi
    pid_alive "$STATE_DIR/run/slurmctld.pid" || slurmctld
    wait_for slurmctld "$STATE_DIR/run/slurmctld.pid" scontrol ping
    pid_alive "$STATE_DIR/run/slurmd.pid" || slurmd -N "$NODE"
    # a node left DOWN/DRAIN by an unclean earlier stop is put back into service
    local deadline=$((SECONDS + START_TIMEOUT_S))
    until node_usable; do
        sinfo -h -n "$NODE" -o %T | grep -qE 'down|drain' && scontrol update nodename="$NODE" state=resume 2>/dev/null || true
        ((SECONDS < deadline)) || die "node $NODE not idle within ${START_TIMEOUT_S}s: $(sinfo -h -n $NODE -o '%T %E') (logs: $STATE_DIR/log)"
        sleep 0.5
    done
}

cmd_start() {
    if cmd_status >/dev/null 2>&1; then log "already running"; return 0; fi
    [[ $(id -u) -eq 0 ]] || die "starting SLURM daemons needs root"
    install_packages
    write_configs
    start_munge
    start_mariadb
    start_slurmdbd
    start_slurm
    log "running: $(sinfo --version), cluster $CLUSTER, partition $PARTITION, node $NODE ($(sinfo -h -n $NODE -o '%c CPUs, %m MB'))"
}

stop_pidfile() {  # stop_pidfile <name>: SIGTERM the daemon named in our pid file, wait, then SIGKILL
    local file=$STATE_DIR/run/$1.pid pid
    pid_alive "$file" || { rm -f "$file"; return 0; }
    pid=$(cat "$file")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    rm -f "$file"
}

cmd_stop() {
    [[ -d $STATE_DIR/run ]] || { log "not running"; return 0; }
    # jobs still running would be orphaned by slurmd: cancel them first
    if scontrol ping >/dev/null 2>&1; then scancel --full --quiet --state=RUNNING,PENDING -u root 2>/dev/null || true; fi
    local name
    # SLURM first (it may flush accounting records), then what it depends on; each group in parallel
    for name in slurmd slurmctld; do stop_pidfile "$name" & done
    wait
    for name in slurmdbd mysqld munged; do stop_pidfile "$name" & done
    wait
    log "stopped"
}

cmd_status() {
    command -v scontrol >/dev/null || { echo "not installed"; return 1; }
    scontrol ping >/dev/null 2>&1 || { echo "controller not responding"; return 1; }
    node_usable || { echo "node $NODE not usable: $(sinfo -h -n $NODE -o '%T %E')"; return 1; }
    sacctmgr -n show cluster format=cluster 2>/dev/null | grep -qw "$CLUSTER" || { echo "accounting (slurmdbd) not responding"; return 1; }
    if grep -qF "$MARKER" "$CONF_DIR/slurm.conf" 2>/dev/null; then
        # ours: written by this version of the script, read by the running daemons, and the user's account there
        local again="run, as root: $0 start"
        same_content "$CONF_DIR/slurm.conf" "$(render_slurm_conf)" \
            || { echo "$CONF_DIR/slurm.conf differs from what this script writes (written by an earlier version of it, or for another VLA_SLURM_STATE; $again)"; return 1; }
        if stale_daemon slurmctld slurm.conf || stale_daemon slurmd slurm.conf; then
            echo "SLURM runs with an older $CONF_DIR/slurm.conf ($again)"; return 1
        fi
        local user=${SUDO_USER:-$(id -un)}
        [[ $user == root ]] || again="run: sudo $0 start, as $user: it associates the user who runs sudo"
        sacctmgr -n -P show assoc where cluster="$CLUSTER" account="$ACCOUNT" user="$user" format=user 2>/dev/null | grep -qx "$user" \
            || { echo "user $user has no association with account $ACCOUNT, so SLURM refuses their jobs ($again)"; return 1; }
    fi
    echo "running: $(sinfo --version); $(sinfo -h -o '%P %a %D %T %c' | head -1)"
}

case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    restart) cmd_stop; cmd_start ;;
    *) echo "usage: $0 start|stop|status|restart" >&2; exit 2 ;;
esac
