#!/usr/bin/env bash
# Sluice's MySQL/MariaDB source against MariaDB's own binlog reader, in one
# run on this machine.
#
# A private MariaDB (row binlog, full images and metadata) takes two
# workloads; each is drained from the same binlog range by
#   (a) mariadb-binlog --read-from-remote-server --raw  (raw copy of the events)
#   (b) mariadb-binlog --read-from-remote-server --verbose  (decodes every row to text)
#   (c) sluice run --until-caught-up into blackhole, jsonl on disk (written and
#       fsynced: ~340 bytes a row) and jsonl on tmpfs (the encoding cost
#       without the disk; mariadb-binlog writes to /dev/null)
# Workloads: ROWS inserts in 100 transactions; ROWS/UPD_DIV single-row
# update transactions (default all ROWS; pass a divisor to shorten).
#
# Usage: bench/mysql.sh [ROWS] [UPD_DIV]     (default 1000000 1)
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-1000000}
UPD=$((ROWS / ${2:-1}))
TXS=100
WORK=$(mktemp -d /tmp/sluice-mybench.XXXXXX)
chmod 755 "$WORK"
SLUICE=$PWD/target/release/sluice
cargo build --release --quiet
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
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
cleanup() { kill -9 "$MPID" 2>/dev/null || true; wait "$MPID" 2>/dev/null || true; rm -rf "$WORK" "${SHM:-/nonexistent}"; }
trap cleanup EXIT
my() { mariadb --no-defaults --socket="$WORK/sock" -uroot --batch --skip-column-names "$@"; }
for _ in $(seq 100); do my -e "SELECT 1" >/dev/null 2>&1 && break; sleep 0.2; done
my -e "CREATE DATABASE bench; CREATE TABLE bench.t (id BIGINT PRIMARY KEY, v INT NOT NULL, s VARCHAR(64) NOT NULL, n DECIMAL(12,2), ts TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6))"

now() { date +%s.%N; }
pipeline() { # name format
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
pipeline bh "  type: blackhole"
pipeline js "  type: files
  format: jsonl
  path: $WORK/out-js"
SHM=$(mktemp -d /dev/shm/sluice-mybench.XXXXXX)
pipeline jm "  type: files
  format: jsonl
  path: $SHM/out"

RESULTS=$WORK/results.txt
printf '%-9s %-24s %9s %11s %11s %8s\n' workload consumer seconds rows/s vs_verbose rss_MB | tee "$RESULTS"

run_workload() { # name rows sql
  local name=$1 rows=$2 sql=$3
  # Checkpoints at the current end, so every consumer drains the same range.
  for p in bh js jm; do "$SLUICE" run "$WORK/$p.yaml" --until-caught-up >/dev/null 2>&1; done
  read -r FILE POS _ < <(my -e "SHOW MASTER STATUS")
  printf '%s\n' "$sql" > "$WORK/load.sql"
  my < "$WORK/load.sql"
  local verbose_rate=""
  for consumer in raw verbose bh js jm; do
    local t0 t1 rss="-" log="$WORK/$name-$consumer.log"
    t0=$(now)
    case $consumer in
      raw)
        mkdir -p "$WORK/raw"
        mariadb-binlog --no-defaults --read-from-remote-server --host=127.0.0.1 --port="$PORT" -uroot \
          --start-position="$POS" --to-last-log --raw --result-file="$WORK/raw/" "$FILE" >/dev/null 2>"$log"
        rm -rf "$WORK/raw" ;;
      verbose)
        mariadb-binlog --no-defaults --read-from-remote-server --host=127.0.0.1 --port="$PORT" -uroot \
          --start-position="$POS" --to-last-log --verbose --base64-output=decode-rows "$FILE" >/dev/null 2>"$log" ;;
      bh|js|jm)
        /usr/bin/time -f "%M" -o "$WORK/rss" "$SLUICE" run "$WORK/$consumer.yaml" --until-caught-up >/dev/null 2>"$log"
        rss=$(( $(cat "$WORK/rss") / 1024 )) ;;
    esac
    t1=$(now)
    local secs rate ratio label
    secs=$(echo "$t1 - $t0" | bc -l)
    rate=$(echo "$rows / $secs" | bc -l)
    [ "$consumer" = verbose ] && verbose_rate=$rate
    ratio=$(echo "$rate / ${verbose_rate:-$rate}" | bc -l)
    case $consumer in raw) label="mariadb-binlog raw";; verbose) label="mariadb-binlog verbose";; bh) label="sluice blackhole";; js) label="sluice jsonl (disk)";; jm) label="sluice jsonl (tmpfs)";; esac
    if [ "$consumer" = raw ]; then ratio_txt="-"; else ratio_txt=$(printf '%.2fx' "$ratio"); fi
    printf '%-9s %-24s %9.2f %11.0f %11s %8s\n' "$name" "$label" "$secs" "$rate" "$ratio_txt" "$rss" | tee -a "$RESULTS"
  done
  true
}

PER=$((ROWS / TXS))
INS="USE bench;"
for i in $(seq 0 $((TXS - 1))); do
  a=$((i * PER + 1)); b=$(((i + 1) * PER))
  INS+="INSERT INTO t (id, v, s, n) SELECT seq, seq % 1000, CONCAT('row-', seq, '-', REPEAT('x', 20)), seq / 100 FROM seq_${a}_to_${b};"
done
run_workload inserts "$ROWS" "$INS"
UPD_SQL="USE bench;
DELIMITER //
CREATE PROCEDURE upd(n INT) BEGIN DECLARE i INT DEFAULT 1; WHILE i <= n DO UPDATE t SET v = v + 1 WHERE id = i; SET i = i + 1; END WHILE; END //
DELIMITER ;
CALL upd($UPD);"
run_workload updates "$UPD" "$UPD_SQL"
echo
echo "results in one run on $(nproc) cores; targets: blackhole >= 1.0x verbose, jsonl >= 0.7x verbose, RSS < 300 MB"
