#!/usr/bin/env bash
# Sluice's MySQL/MariaDB source against MariaDB's own binlog reader, in one
# run on this machine.
#
# A private MariaDB (row binlog, full images and metadata) takes two
# workloads; each is drained from the same binlog range by
#   (a) mariadb-binlog --read-from-remote-server --raw  (raw copy of the events)
#   (b) mariadb-binlog --read-from-remote-server --verbose  (decodes every row
#       to text, written to tmpfs; its rows are counted afterwards)
#   (c) sluice run --until-caught-up into blackhole, jsonl on disk (written and
#       fsynced: ~340 bytes a row), jsonl on tmpfs (the encoding cost without
#       the disk, like (b)) and parquet on disk.
# Each consumer runs twice, in the order A B … B A, and keeps its best
# sample; every sluice pipeline is checkpointed at the end of the binlog
# before the load, so all drain the same range. Delivered rows are counted
# from the output (JSONL lines, Parquet rows read back with DuckDB); the
# blackhole has no output, so its count is the one sluice reports.
# Workloads: ROWS inserts in 100 transactions; ROWS/UPD_DIV single-row
# update transactions (default all ROWS; pass a divisor to shorten).
#
# Usage: bench/mysql.sh [ROWS] [UPD_DIV]     (default 1000000 1)
#        WORKLOADS=inserts bench/mysql.sh    (any of: inserts updates)
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-1000000}
UPD=$((ROWS / ${2:-1}))
WORKLOADS=${WORKLOADS:-inserts updates}
TXS=100
WORK=$(mktemp -d /tmp/sluice-mybench.XXXXXX)
chmod 755 "$WORK"
SLUICE=${SLUICE_BIN:-$PWD/target/release/sluice}  # SLUICE_BIN: compare another build
cargo build --release --quiet
# shellcheck source=bench/common.sh
. bench/common.sh
PORT=$(free_port)
mkdir -p "$WORK/data"
USER_OPT=()
if [ "$(id -u)" = 0 ]; then chown -R mysql:mysql "$WORK"; USER_OPT=(--user=mysql); fi
mariadb-install-db --no-defaults "${USER_OPT[@]}" --datadir="$WORK/data" --auth-root-authentication-method=normal --skip-test-db >/dev/null
MARIADBD=$(command -v mariadbd || echo /usr/sbin/mariadbd)
"$MARIADBD" --no-defaults "${USER_OPT[@]}" --datadir="$WORK/data" --port="$PORT" --bind-address=127.0.0.1 \
  --socket="$WORK/sock" --log-error="$WORK/err.log" --log-bin="$WORK/data/binlog" --server-id=1 \
  --binlog-format=ROW --binlog-row-image=FULL --binlog-row-metadata=FULL --max-binlog-size=1G \
  --innodb-buffer-pool-size=1G --innodb-log-file-size=512M --innodb-flush-log-at-trx-commit=0 --sync-binlog=0 \
  --character-set-server=utf8mb4 >/dev/null 2>&1 &
MPID=$!
SHM=$(mktemp -d /dev/shm/sluice-mybench.XXXXXX)
cleanup() { kill -9 "$MPID" 2>/dev/null || true; wait "$MPID" 2>/dev/null || true; rm -rf "$WORK" "$SHM"; }
trap cleanup EXIT
my() { mariadb --no-defaults --socket="$WORK/sock" -uroot --batch --skip-column-names "$@"; }
for _ in $(seq 100); do my -e "SELECT 1" >/dev/null 2>&1 && break; sleep 0.2; done
my -e "CREATE DATABASE bench; CREATE TABLE bench.t (id BIGINT PRIMARY KEY, v INT NOT NULL, s VARCHAR(64) NOT NULL, n DECIMAL(12,2), ts TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6))"

pipeline() { # name sink-body
  cat > "$WORK/$1.yaml" <<YAML
version: 1
name: $1
source:
  type: mysql
  url: mysql://root@127.0.0.1:$PORT
tables:
  include: ["bench.*"]
snapshot:
  mode: never
sink:
$2
checkpoint:
  path: $WORK/state-$1
YAML
}
out_dir() { case $1 in js) echo "$WORK/out-js-$2" ;; jm) echo "$SHM/out-$2" ;; pq) echo "$WORK/out-pq-$2" ;; esac; }
for n in 1 2; do
  pipeline "bh$n" "  type: blackhole"
  pipeline "js$n" "  type: files
  format: jsonl
  path: $(out_dir js $n)"
  pipeline "jm$n" "  type: files
  format: jsonl
  path: $(out_dir jm $n)"
  pipeline "pq$n" "  type: files
  format: parquet
  path: $(out_dir pq $n)"
done

RESULTS=$WORK/results.txt
printf '%-9s %-24s %9s %11s %11s %8s  %s\n' workload consumer seconds rows/s vs_verbose rss_MB samples | tee "$RESULTS"
line() { # workload fn label
  local r=-
  [ "$2" = raw ] || r=$(ratio "$2" verbose)
  printf '%-9s %-24s %9.2f %11.0f %11s %8s  %s\n' "$1" "$3" "${BEST[$2]}" "$(best_rate "$2")" "$r" \
    "${BEST_RSS[$2]}" "${SAMPLES[$2]}" | tee -a "$RESULTS"
}

FILE="" POS=""
binlog() { mariadb-binlog --no-defaults --read-from-remote-server --host=127.0.0.1 --port="$PORT" -uroot \
  --start-position="$POS" --to-last-log "$@" "$FILE"; }
raw() {
  mkdir -p "$SHM/raw"
  timed binlog --raw --result-file="$SHM/raw/" 2>/dev/null
  # The raw copy holds the events, not rows: taken as complete when mariadb-binlog succeeds.
  DELIVERED=$EXPECTED
  rm -rf "$SHM/raw"
}
verbose() {
  timed eval 'binlog --verbose --base64-output=decode-rows > "$SHM/verbose.out" 2>/dev/null'
  DELIVERED=$(grep -c '^### \(INSERT INTO\|UPDATE\|DELETE FROM\) ' "$SHM/verbose.out" || true)
  rm -f "$SHM/verbose.out"
}
sluice_into() { # kind n
  local log="$WORK/$1$2.log"
  local wrap=()
  # BENCH_PERF=js (bh, jm, pq): profile that consumer's second sample into /tmp/sluice-mysql.perf
  # (DWARF call graphs: release builds have no frame pointers).
  [ "${BENCH_PERF:-}" = "$1" ] && [ "$2" = 2 ] && wrap=(perf record -F 1999 --call-graph dwarf,32768 -o /tmp/sluice-mysql.perf --)
  timed /usr/bin/time -f "%M" -o "$WORK/rss" "${wrap[@]}" "$SLUICE" run "$WORK/$1$2.yaml" --until-caught-up >/dev/null 2>"$log" \
    || failed "sluice $1" "$log"
  RSS=$(($(cat "$WORK/rss") / 1024))
  case $1 in
    bh) DELIVERED=$(grep -o 'caught up: [0-9]* events' "$log" | awk '{print $3}' || true) ;;
    js | jm) DELIVERED=$(jsonl_rows "$(out_dir "$1" "$2")") ;;
    pq) DELIVERED=$(parquet_rows "$(out_dir "$1" "$2")") ;;
  esac
  rm -rf "$(out_dir "$1" "$2")"
}
sluice_bh() { sluice_into bh "$1"; }
sluice_js() { sluice_into js "$1"; }
sluice_jm() { sluice_into jm "$1"; }
sluice_pq() { sluice_into pq "$1"; }

run_workload() { # name rows sql
  local name=$1 p
  EXPECTED=$2
  # Checkpoints at the current end, so every consumer drains the same range.
  # A previous workload's state goes first: its files were removed after
  # they were counted, and the files sink refuses a checkpoint naming files
  # that are gone (snapshot.mode is never: a new pipeline starts at the end).
  for p in bh js jm pq; do
    for n in 1 2; do
      rm -rf "$(out_dir "$p" "$n")" "$WORK/state-$p$n"
      "$SLUICE" run "$WORK/$p$n.yaml" --until-caught-up >/dev/null 2>&1
      rm -rf "$(out_dir "$p" "$n")"
    done
  done
  read -r FILE POS _ < <(my -e "SHOW MASTER STATUS")
  printf '%s\n' "$3" > "$WORK/load.sql"
  my < "$WORK/load.sql"
  reset_samples
  abba raw verbose sluice_bh sluice_js sluice_jm sluice_pq
  line "$name" raw "mariadb-binlog raw"
  line "$name" verbose "mariadb-binlog verbose"
  line "$name" sluice_bh "sluice blackhole"
  line "$name" sluice_js "sluice jsonl (disk)"
  line "$name" sluice_jm "sluice jsonl (tmpfs)"
  line "$name" sluice_pq "sluice parquet (disk)"
}

case " $WORKLOADS " in *" inserts "*)
  PER=$((ROWS / TXS))
  INS="USE bench;"
  for i in $(seq 0 $((TXS - 1))); do
    a=$((i * PER + 1)); b=$(((i + 1) * PER))
    INS+="INSERT INTO t (id, v, s, n) SELECT seq, seq % 1000, CONCAT('row-', seq, '-', REPEAT('x', 20)), seq / 100 FROM seq_${a}_to_${b};"
  done
  run_workload inserts "$ROWS" "$INS" ;;
esac
case " $WORKLOADS " in *" updates "*)
  my -D bench -e "INSERT IGNORE INTO t (id, v, s, n) SELECT seq, seq % 1000, 'row', 0 FROM seq_1_to_$UPD"
  UPD_SQL="USE bench;
DELIMITER //
CREATE PROCEDURE upd(n INT) BEGIN DECLARE i INT DEFAULT 1; WHILE i <= n DO UPDATE t SET v = v + 1 WHERE id = i; SET i = i + 1; END WHILE; END //
DELIMITER ;
CALL upd($UPD);"
  run_workload updates "$UPD" "$UPD_SQL" ;;
esac
echo
echo "best of two samples per consumer (order A B … B A), on $(nproc) cores;"
echo "targets: blackhole >= 1.0x verbose, jsonl (disk) >= 0.8x verbose, parquet >= 0.7x verbose, RSS < 300 MB"
