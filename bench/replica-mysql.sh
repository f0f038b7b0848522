#!/usr/bin/env bash
# The MySQL/MariaDB replica sink against MariaDB's own tools, in one run.
#
# Two private MariaDB servers: a source (row binlog) and a target. For each
# streaming workload the same binlog range is applied to the target by
#   (a) MariaDB's own replication (CHANGE MASTER TO the range's start, START
#       SLAVE, timed until MASTER_POS_WAIT reaches its end), into database
#       `bench`, and
#   (b) sluice run --until-caught-up (MySQL source, mysql sink) into
#       database `sl` (its checkpoint taken at the range's start).
# Both write the same binary log: the target runs with --log-bin and
# --log-slave-updates, so the replication thread's writes are binlogged like
# sluice's (as on a replica that may be promoted).
# Each consumer runs twice, in the order A B B A, from the same target state
# (the target table is emptied or reloaded before every sample), and keeps
# its best sample. What each delivered is checked on the target: the
# replication's table must equal the source's (row count and CRC32 sum),
# sluice's passes `sluice verify`.
# Workloads: INSERTS rows in 50 transactions; UPDATES single-row update
# transactions. Snapshot: a SNAP-row table, `mariadb-dump | mariadb` vs
# sluice's initial snapshot into the target (both into an empty table).
#
# Usage: bench/replica-mysql.sh [INSERTS] [UPDATES] [SNAP]   (default 500000 200000 1000000)
#        WORKLOADS=updates bench/replica-mysql.sh   (any of: inserts updates snapshot)
set -euo pipefail
cd "$(dirname "$0")/.."
INSERTS=${1:-500000}
UPDATES=${2:-200000}
SNAP=${3:-1000000}
WORKLOADS=${WORKLOADS:-inserts updates snapshot}
TXS=50
WORK=$(mktemp -d /tmp/sluice-mybench-replica.XXXXXX)
chmod 755 "$WORK"
SLUICE=${SLUICE_BIN:-$PWD/target/release/sluice}  # SLUICE_BIN: compare another build
cargo build --release --quiet
# shellcheck source=bench/common.sh
. bench/common.sh
MARIADBD=$(command -v mariadbd || echo /usr/sbin/mariadbd)
USER_OPT=()
[ "$(id -u)" = 0 ] && USER_OPT=(--user=mysql)
PIDS=()
start_server() { # name server-id [extra option] -> PORT_<name>
  local name=$1 id=$2 dir=$WORK/$1 port
  port=$(free_port)
  mkdir -p "$dir/data"
  [ "$(id -u)" = 0 ] && chown -R mysql:mysql "$dir"
  mariadb-install-db --no-defaults "${USER_OPT[@]}" --datadir="$dir/data" --auth-root-authentication-method=normal --skip-test-db >/dev/null
  "$MARIADBD" --no-defaults "${USER_OPT[@]}" --datadir="$dir/data" --port="$port" --bind-address=127.0.0.1 \
    --socket="$dir/sock" --log-error="$dir/err.log" --log-bin="$dir/data/binlog" --server-id="$id" \
    --binlog-format=ROW --binlog-row-image=FULL --binlog-row-metadata=FULL --max-binlog-size=1G \
    --innodb-buffer-pool-size=1G --innodb-log-file-size=512M --innodb-flush-log-at-trx-commit=0 --sync-binlog=0 \
    --character-set-server=utf8mb4 --slave-parallel-threads=0 ${3:-} >/dev/null 2>&1 &
  PIDS+=($!)
  for _ in $(seq 150); do mariadb --no-defaults --socket="$dir/sock" -uroot -e "SELECT 1" >/dev/null 2>&1 && break; sleep 0.2; done
  eval "PORT_$name=$port"
}
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
start_server src 1
start_server dst 2 --log-slave-updates
msrc() { mariadb --no-defaults --socket="$WORK/src/sock" -uroot --batch --skip-column-names "$@"; }
mdst() { mariadb --no-defaults --socket="$WORK/dst/sock" -uroot --batch --skip-column-names "$@"; }

DDL="CREATE TABLE t (id BIGINT PRIMARY KEY, v INT NOT NULL, s VARCHAR(64) NOT NULL, n DECIMAL(12,2), ts DATETIME(6) NOT NULL)"
msrc -e "CREATE DATABASE bench; USE bench; $DDL"
mdst -e "CREATE DATABASE bench; USE bench; $DDL"

RESULTS=$WORK/results.txt
: > "$RESULTS"
printf '%-10s %-34s %9s %12s %10s %8s  %s\n' workload consumer seconds per_s vs_base rss_MB samples | tee -a "$RESULTS"
line() { # workload fn label baseline-fn
  printf '%-10s %-34s %9.2f %12.0f %10s %8s  %s\n' "$1" "$3" "${BEST[$2]}" "$(best_rate "$2")" \
    "$(ratio "$2" "$4")" "${BEST_RSS[$2]}" "${SAMPLES[$2]}" | tee -a "$RESULTS"
}
SUM="SELECT COUNT(*), COALESCE(SUM(CRC32(CONCAT_WS('|', id, v, s, n, ts))), 0) FROM t"

pipeline() { # name snapshot-mode schema
  cat > "$WORK/$1.yaml" <<YAML
version: 1
name: $1
source:
  type: mysql
  url: mysql://root@127.0.0.1:$PORT_src
tables:
  include: ["bench.t"]
snapshot:
  mode: $2
  parallelism: 4
sink:
  type: mysql
  url: mysql://root@127.0.0.1:$PORT_dst
  schema: $3
  batch:
    max_rows: 20000
    max_delay_ms: 500
checkpoint:
  path: $WORK/state-$1
YAML
  echo "$WORK/$1.yaml"
}
verified() { # pipeline file -> DELIVERED
  if "$SLUICE" verify "$1" > "$WORK/verify.out" 2>&1; then DELIVERED=$EXPECTED; else
    cat "$WORK/verify.out" >&2
    DELIVERED="a replica that differs from the source"
  fi
}
same_as_source() { # database on the target
  [ "$(mdst -D "$1" -e "$SUM")" = "$(msrc -D bench -e "$SUM")" ] && DELIVERED=$EXPECTED || DELIVERED="a table that differs from the source"
}

# Streaming: the range, and the SQL that puts a target table back in its state before the load.
FILE="" POS="" EFILE="" EPOS="" RESET=""
native() {
  mdst -D bench -e "TRUNCATE t; $RESET"
  mdst -e "STOP SLAVE; RESET SLAVE ALL; CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=$PORT_src, MASTER_USER='root', MASTER_LOG_FILE='$FILE', MASTER_LOG_POS=$POS, MASTER_USE_GTID=no" 2>/dev/null
  timed eval 'mdst -e "START SLAVE"; mdst -e "SELECT MASTER_POS_WAIT('"'"'$EFILE'"'"', $EPOS, 3600)" >/dev/null'
  mdst -e "STOP SLAVE"
  same_as_source bench
}
sluice_my() {
  local n=$1 log="$WORK/sluice-$TAG-$1.log"
  mdst -D sl -e "TRUNCATE t; $RESET"
  timed eval 'SLUICE_LOG=warn "$SLUICE" run "$WORK/stream$n.yaml" --until-caught-up 2> "$log"' || failed "sluice → mysql" "$log"
  RSS=$(sluice_rss "$log")
  verified "$WORK/stream$n.yaml"
}

pipeline stream1 never sl >/dev/null
pipeline stream2 never sl >/dev/null
mdst -e "CREATE DATABASE sl; USE sl; $DDL"
run_workload() { # name count sql
  TAG=$1 EXPECTED=$2
  # Sluice's checkpoints and the replication start all at the current end.
  for n in 1 2; do SLUICE_LOG=warn "$SLUICE" run "$WORK/stream$n.yaml" --until-caught-up >/dev/null 2>&1; done
  read -r FILE POS _ < <(msrc -e "SHOW MASTER STATUS")
  printf '%s\n' "$3" > "$WORK/load.sql"
  msrc < "$WORK/load.sql"
  read -r EFILE EPOS _ < <(msrc -e "SHOW MASTER STATUS")
  reset_samples
  abba native sluice_my
  line "$1" native "MariaDB replication" native
  line "$1" sluice_my "sluice → mysql (verified)" native
}

case " $WORKLOADS " in *" inserts "*)
  PER_TX=$((INSERTS / TXS))
  SQL="USE bench;"
  for t in $(seq 0 $((TXS - 1))); do
    SQL+=" START TRANSACTION; INSERT INTO t SELECT seq, seq % 1000, CONCAT('row ', seq), seq * 0.01, NOW(6) FROM seq_$((t * PER_TX + 1))_to_$(((t + 1) * PER_TX)); COMMIT;"
  done
  msrc -D bench -e "TRUNCATE t"
  RESET=""
  run_workload inserts "$INSERTS" "$SQL" ;;
esac

case " $WORKLOADS " in *" updates "*)
  # From the same starting rows everywhere (loaded before the range starts).
  LOAD="INSERT INTO t SELECT seq, seq % 1000, CONCAT('row ', seq), seq * 0.01, '2026-01-01 00:00:00' FROM seq_1_to_$UPDATES"
  msrc -D bench -e "TRUNCATE t; $LOAD"
  RESET=$LOAD
  { echo "USE bench;"; seq 1 "$UPDATES" | awk '{print "UPDATE t SET v = v + 1 WHERE id = " $1 ";"}'; } > "$WORK/upd.sql"
  run_workload updates "$UPDATES" "$(cat "$WORK/upd.sql")" ;;
esac

case " $WORKLOADS " in *" snapshot "*)
  # mariadb-dump | mariadb vs sluice's initial snapshot, both into an empty table.
  msrc -e "USE bench; DROP TABLE t; $DDL; INSERT INTO t SELECT seq, seq % 1000, CONCAT('row ', seq), seq * 0.01, NOW(6) FROM seq_1_to_$SNAP"
  mdst -e "CREATE DATABASE dump; CREATE DATABASE snap"
  EXPECTED=$SNAP
  dump() {
    mdst -e "DROP TABLE IF EXISTS dump.t"
    timed eval 'mariadb-dump --no-defaults --socket="$WORK/src/sock" -uroot --single-transaction --quick bench t | mdst -D dump'
    same_as_source dump
  }
  sluice_snap() {
    local n=$1 p log="$WORK/snap-$1.log"
    p=$(pipeline "snap$n" initial snap)
    mdst -e "DROP TABLE IF EXISTS snap.t"
    timed eval 'SLUICE_LOG=warn "$SLUICE" run "$p" --until-caught-up 2> "$log"' || failed "sluice snapshot" "$log"
    RSS=$(sluice_rss "$log")
    verified "$p"
  }
  reset_samples
  abba dump sluice_snap
  line snapshot dump "mariadb-dump | mariadb" dump
  line snapshot sluice_snap "sluice → mysql (verified)" dump ;;
esac
echo "(vs_base: ratio to MariaDB's replication in the same run; for the snapshot, to mariadb-dump | mariadb;"
echo " best of two samples per consumer, run in the order A B B A)"
