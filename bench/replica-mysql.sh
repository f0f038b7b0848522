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
# Workloads: INSERTS rows in 50 transactions; UPDATES single-row update
# transactions. Snapshot: a SNAP-row table, `mariadb-dump | mariadb` vs
# sluice's initial snapshot into the target. Every sluice result is checked
# with `sluice verify` before it is reported.
#
# Usage: bench/replica-mysql.sh [INSERTS] [UPDATES] [SNAP]   (default 500000 200000 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
INSERTS=${1:-500000}
UPDATES=${2:-200000}
SNAP=${3:-1000000}
TXS=50
WORK=$(mktemp -d /tmp/sluice-mybench-replica.XXXXXX)
chmod 755 "$WORK"
SLUICE=$PWD/target/release/sluice
cargo build --release --quiet
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
MARIADBD=$(command -v mariadbd || echo /usr/sbin/mariadbd)
USER_OPT=()
[ "$(id -u)" = 0 ] && USER_OPT=(--user=mysql)
PIDS=()
start_server() { # name server-id -> PORT_<name>
  local name=$1 id=$2 dir=$WORK/$1 port
  port=$(free_port)
  mkdir -p "$dir/data"
  [ "$(id -u)" = 0 ] && chown -R mysql:mysql "$dir"
  mariadb-install-db --no-defaults "${USER_OPT[@]}" --datadir="$dir/data" --auth-root-authentication-method=normal --skip-test-db >/dev/null
  "$MARIADBD" --no-defaults "${USER_OPT[@]}" --datadir="$dir/data" --port="$port" --bind-address=127.0.0.1 \
    --socket="$dir/sock" --log-error="$dir/err.log" --log-bin="$dir/data/binlog" --server-id="$id" \
    --binlog-format=ROW --binlog-row-image=FULL --binlog-row-metadata=FULL --max-binlog-size=1G \
    --innodb-buffer-pool-size=1G --innodb-log-file-size=512M --innodb-flush-log-at-trx-commit=0 --sync-binlog=0 \
    --character-set-server=utf8mb4 --slave-parallel-threads=0 >/dev/null 2>&1 &
  PIDS+=($!)
  for _ in $(seq 150); do mariadb --no-defaults --socket="$dir/sock" -uroot -e "SELECT 1" >/dev/null 2>&1 && break; sleep 0.2; done
  eval "PORT_$name=$port"
}
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
start_server src 1
start_server dst 2
msrc() { mariadb --no-defaults --socket="$WORK/src/sock" -uroot --batch --skip-column-names "$@"; }
mdst() { mariadb --no-defaults --socket="$WORK/dst/sock" -uroot --batch --skip-column-names "$@"; }
now() { date +%s.%N; }
rate() { python3 -c "print($1/($3-$2))"; }

DDL="CREATE TABLE t (id BIGINT PRIMARY KEY, v INT NOT NULL, s VARCHAR(64) NOT NULL, n DECIMAL(12,2), ts DATETIME(6) NOT NULL)"
msrc -e "CREATE DATABASE bench; USE bench; $DDL"
mdst -e "CREATE DATABASE bench; USE bench; $DDL"

RESULTS=$WORK/results.txt
: > "$RESULTS"
printf '%-10s %-34s %9s %12s %10s %8s\n' workload consumer seconds per_s vs_native rss_MB | tee -a "$RESULTS"
report() { # workload consumer t0 t1 count native rss
  python3 - "$@" <<'PY' | tee -a "$RESULTS"
import sys
w, c, t0, t1, n, native, rss = sys.argv[1:8]
secs = float(t1) - float(t0); rate = float(n) / secs
vn = f"{rate/float(native):.2f}x" if native else "-"
print(f"{w:<10} {c:<34} {secs:9.2f} {rate:12.0f} {vn:>10} {rss:>8}")
PY
}

pipeline() { # name snapshot-mode
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
  schema: sl
  batch:
    max_rows: 20000
    max_delay_ms: 500
checkpoint:
  path: $WORK/state-$1
YAML
  echo "$WORK/$1.yaml"
}
verify() {
  if ! "$SLUICE" verify "$1" > "$WORK/verify.out" 2>&1; then
    cat "$WORK/verify.out"; echo "verify failed: the replica differs from the source" >&2; exit 1
  fi
}

STREAM=$(pipeline stream never)
run_workload() { # name count sql
  local name=$1 n=$2 sql=$3
  # Sluice's checkpoint and the replication start both at the current end.
  SLUICE_LOG=warn "$SLUICE" run "$STREAM" --until-caught-up >/dev/null 2>&1
  read -r FILE POS _ < <(msrc -e "SHOW MASTER STATUS")
  printf '%s\n' "$sql" > "$WORK/load.sql"
  msrc < "$WORK/load.sql"
  read -r EFILE EPOS _ < <(msrc -e "SHOW MASTER STATUS")

  local t0 t1 native
  mdst -e "STOP SLAVE; RESET SLAVE ALL; CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=$PORT_src, MASTER_USER='root', MASTER_LOG_FILE='$FILE', MASTER_LOG_POS=$POS, MASTER_USE_GTID=no" 2>/dev/null
  t0=$(now)
  mdst -e "START SLAVE"
  mdst -e "SELECT MASTER_POS_WAIT('$EFILE', $EPOS, 3600)" >/dev/null
  t1=$(now)
  mdst -e "STOP SLAVE"
  native=$(rate "$n" "$t0" "$t1")
  report "$name" "MariaDB replication" "$t0" "$t1" "$n" "$native" "-"

  t0=$(now)
  SLUICE_LOG=warn "$SLUICE" run "$STREAM" --until-caught-up 2> "$WORK/sluice-$name.log"
  t1=$(now)
  verify "$STREAM"
  report "$name" "sluice → mysql (verified)" "$t0" "$t1" "$n" "$native" \
    "$(grep -o 'peak RSS [0-9]*' "$WORK/sluice-$name.log" | awk '{print $3}')"
}

PER_TX=$((INSERTS / TXS))
SQL="USE bench;"
for t in $(seq 0 $((TXS - 1))); do
  SQL+=" START TRANSACTION; INSERT INTO t SELECT seq, seq % 1000, CONCAT('row ', seq), seq * 0.01, NOW(6) FROM seq_$((t * PER_TX + 1))_to_$(((t + 1) * PER_TX)); COMMIT;"
done
run_workload inserts "$INSERTS" "$SQL"

{ echo "USE bench;"; seq 1 "$UPDATES" | awk '{print "UPDATE t SET v = v + 1 WHERE id = " $1 ";"}'; } > "$WORK/upd.sql"
run_workload updates "$UPDATES" "$(cat "$WORK/upd.sql")"

# Snapshot: mariadb-dump | mariadb vs sluice's initial snapshot.
msrc -e "USE bench; DROP TABLE t; $DDL; INSERT INTO t SELECT seq, seq % 1000, CONCAT('row ', seq), seq * 0.01, NOW(6) FROM seq_1_to_$SNAP"
mdst -e "CREATE DATABASE dump"
t0=$(now)
mariadb-dump --no-defaults --socket="$WORK/src/sock" -uroot --single-transaction --quick bench t | mdst -D dump
t1=$(now)
dump=$(rate "$SNAP" "$t0" "$t1")
report snapshot "mariadb-dump | mariadb" "$t0" "$t1" "$SNAP" "$dump" "-"
SNAPP=$(pipeline snap initial)
sed -i 's/  schema: sl/  schema: snap/' "$SNAPP"
t0=$(now)
SLUICE_LOG=warn "$SLUICE" run "$SNAPP" --until-caught-up 2> "$WORK/snap.log"
t1=$(now)
verify "$SNAPP"
report snapshot "sluice → mysql (verified)" "$t0" "$t1" "$SNAP" "$dump" "$(grep -o 'peak RSS [0-9]*' "$WORK/snap.log" | awk '{print $3}')"
echo "(vs_native: ratio to MariaDB's replication in the same run; for the snapshot, to mariadb-dump | mariadb)"
