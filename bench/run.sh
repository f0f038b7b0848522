#!/usr/bin/env bash
# Sluice benchmarks against Postgres's own tools, in one run on this machine.
#
# Streaming: for each workload, slots are created *before* the load, then the
# same WAL range is drained by
#   (a) Postgres's own logical replication: a subscription on a second
#       cluster, created disabled before the load, enabled and timed until
#       caught up (it also applies the rows);
#   (b) pg_recvlogical (pgoutput) to /dev/null;
#   (c) sluice run --until-caught-up into blackhole, jsonl and parquet.
# Snapshot: a 1M-row table, `COPY ... TO STDOUT` to /dev/null vs sluice's
# initial snapshot into blackhole.
#
# Usage: bench/run.sh [ROWS]     (default 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-1000000}
TXS=100
WORK=$(mktemp -d /tmp/sluice-bench.XXXXXX)
chmod 755 "$WORK"
SLUICE=$PWD/target/release/sluice
cargo build --release --quiet

# shellcheck source=bench/common.sh
. bench/common.sh
trap stop_clusters EXIT

start_cluster src
start_cluster dst
SRC="postgresql://postgres@127.0.0.1:$PORT_src/postgres"
DST="postgresql://postgres@127.0.0.1:$PORT_dst/postgres"
psrc() { psql -X -q -v ON_ERROR_STOP=1 -At "$SRC" "$@"; }
pdst() { psql -X -q -v ON_ERROR_STOP=1 -At "$DST" "$@"; }

TABLE_DDL="CREATE TABLE bench (id bigint PRIMARY KEY, v int NOT NULL, s text NOT NULL, n numeric(12,2), ts timestamptz NOT NULL DEFAULT now())"
psrc -c "$TABLE_DDL" -c "CREATE PUBLICATION bench_pub FOR TABLE bench"
pdst -c "$TABLE_DDL"

RESULTS=$WORK/results.txt
: > "$RESULTS"
printf '%-14s %-22s %10s %12s %9s %9s %8s\n' workload consumer seconds rows/s vs_native vs_recv rss_MB | tee -a "$RESULTS"

sluice_pipeline() { # name slot sink-body mode
  cat > "$WORK/$1.yaml" <<YAML
version: 1
name: $1
source:
  type: postgres
  url: $SRC
  slot: $2
  publication: bench_pub
tables:
  include: ["public.bench"]
snapshot:
  mode: $4
sink:
$3
checkpoint:
  path: $WORK/state-$1
YAML
  echo "$WORK/$1.yaml"
}

run_workload() { # name sql rows
  local name=$1 sql=$2 rows=$3
  local tag=${name//-/_}
  # Slots first, so every consumer reads the same WAL range.
  pdst -c "DROP SUBSCRIPTION IF EXISTS sub_$tag" -c "TRUNCATE bench"
  pdst -c "CREATE SUBSCRIPTION sub_$tag CONNECTION '$SRC' PUBLICATION bench_pub WITH (enabled = false, copy_data = false)"
  psrc -c "SELECT pg_create_logical_replication_slot('recv_$tag', 'pgoutput')" >/dev/null
  for s in bh jsonl parquet; do
    psrc -c "SELECT pg_create_logical_replication_slot('sl_${s}_$tag', 'pgoutput')" >/dev/null
  done
  psrc -c "$sql"
  local end; end=$(psrc -c "SELECT pg_current_wal_insert_lsn()")
  psrc -c "SELECT pg_switch_wal()" >/dev/null  # make everything before END flushed and sendable

  # (a) native subscription: enable and time until its slot has confirmed END.
  local t0 t1 native recv
  t0=$(now)
  pdst -c "ALTER SUBSCRIPTION sub_$tag ENABLE"
  until [ "$(psrc -c "SELECT confirmed_flush_lsn >= '$end' FROM pg_replication_slots WHERE slot_name = 'sub_$tag'")" = t ]; do sleep 0.05; done
  t1=$(now)
  native=$(python3 -c "print($rows/($t1-$t0))")
  report "$name" "native subscription" "$t0" "$t1" "$rows" "$native" "" "-"
  pdst -c "ALTER SUBSCRIPTION sub_$tag DISABLE"

  # (b) pg_recvlogical to /dev/null.
  t0=$(now)
  "$BIN/pg_recvlogical" -d "$SRC" --slot "recv_$tag" --start --endpos "$end" -o proto_version=1 -o publication_names=bench_pub -f /dev/null
  t1=$(now)
  recv=$(python3 -c "print($rows/($t1-$t0))")
  report "$name" "pg_recvlogical" "$t0" "$t1" "$rows" "$native" "$recv" "-"

  # (c) sluice into blackhole, jsonl, parquet.
  for s in bh jsonl parquet; do
    local body
    case $s in
      bh) body="  type: blackhole" ;;
      jsonl) body="  type: files
  format: jsonl
  path: $WORK/out-jsonl-$tag" ;;
      parquet) body="  type: files
  format: parquet
  path: $WORK/out-parquet-$tag" ;;
    esac
    local p; p=$(sluice_pipeline "${s}_$tag" "sl_${s}_$tag" "$body" never)
    t0=$(now)
    SLUICE_LOG=warn "$SLUICE" run "$p" --until-caught-up 2> "$WORK/sluice-$s-$tag.log"
    t1=$(now)
    local rss; rss=$(grep -o 'peak RSS [0-9]*' "$WORK/sluice-$s-$tag.log" | awk '{print $3}')
    report "$name" "sluice → $s" "$t0" "$t1" "$rows" "$native" "$recv" "$rss"
    rm -rf "$WORK/out-jsonl-$tag" "$WORK/out-parquet-$tag"
  done
  psrc -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name LIKE '%_$tag' AND NOT active" >/dev/null
}

report() { # workload consumer t0 t1 rows native recv rss
  python3 - "$@" <<'PY' | tee -a "$RESULTS"
import sys
w, c, t0, t1, rows, native, recv, rss = sys.argv[1:9]
secs = float(t1) - float(t0); rate = float(rows) / secs
vn = f"{rate/float(native):.2f}x" if native else "-"
vr = f"{rate/float(recv):.2f}x" if recv else "-"
print(f"{w:<14} {c:<22} {secs:10.2f} {rate:12.0f} {vn:>9} {vr:>9} {rss:>8}")
PY
}

PER_TX=$((ROWS / TXS))
INSERTS="DO \$\$ BEGIN FOR t IN 0..$((TXS - 1)) LOOP
  INSERT INTO bench (id, v, s, n) SELECT g, g % 1000, 'row ' || g, g * 0.01 FROM generate_series(t * $PER_TX + 1, (t + 1) * $PER_TX) g;
  COMMIT; END LOOP; END \$\$"
run_workload inserts "$INSERTS" "$ROWS"

UPDATES="DO \$\$ BEGIN FOR t IN 0..$((TXS - 1)) LOOP
  FOR i IN t * $PER_TX + 1 .. (t + 1) * $PER_TX LOOP UPDATE bench SET v = v + 1 WHERE id = i; END LOOP;
  COMMIT; END LOOP; END \$\$"
psrc -c "TRUNCATE bench" -c "INSERT INTO bench (id, v, s, n) SELECT g, g % 1000, 'row ' || g, g * 0.01 FROM generate_series(1, $ROWS) g"
pdst -c "TRUNCATE bench" -c "INSERT INTO bench (id, v, s, n) SELECT g, g % 1000, 'row ' || g, g * 0.01 FROM generate_series(1, $ROWS) g"
run_workload updates "$UPDATES" "$ROWS"

psrc -c "TRUNCATE bench"
run_workload one-big-tx "INSERT INTO bench (id, v, s, n) SELECT g, g % 1000, 'row ' || g, g * 0.01 FROM generate_series(1, $ROWS) g" "$ROWS"

# Snapshot: COPY to /dev/null vs sluice's initial snapshot into blackhole.
t0=$(now); psrc -c "COPY bench TO STDOUT" > /dev/null; t1=$(now)
copy=$(python3 -c "print($ROWS/($t1-$t0))")
report snapshot "COPY TO STDOUT" "$t0" "$t1" "$ROWS" "$copy" "" "-"
p=$(sluice_pipeline snap sluice_snap "  type: blackhole" initial)
t0=$(now); SLUICE_LOG=warn "$SLUICE" run "$p" --until-caught-up 2> "$WORK/snap.log"; t1=$(now)
report snapshot "sluice → blackhole" "$t0" "$t1" "$ROWS" "$copy" "" "$(grep -o 'peak RSS [0-9]*' "$WORK/snap.log" | awk '{print $3}')"
echo "(snapshot rows: vs_native column = ratio to COPY)"
