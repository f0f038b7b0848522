#!/usr/bin/env bash
# Sluice benchmarks against Postgres's own tools, in one run on this machine.
#
# Streaming: for each workload, slots are created *before* the load (two per
# consumer), then the same WAL range is drained by
#   (a) Postgres's own logical replication: a subscription on a second
#       cluster, created disabled before the load, enabled and timed until
#       its slot has confirmed the end of the load (polled every 5 ms from
#       one session); it also applies the rows, into a table reset to its
#       state before the load;
#   (b) pg_recvlogical (pgoutput, protocol 1) to /dev/null, up to the end;
#   (c) sluice run --until-caught-up into blackhole, jsonl and parquet.
# Snapshot: `COPY ... TO STDOUT (FORMAT binary)` to /dev/null (the format
# sluice's snapshot reads) vs sluice's initial snapshot into blackhole.
#
# Each consumer runs twice, in the order A B … B A, and keeps its best
# sample. Delivered rows are counted from each consumer's output: the
# subscriber's table must equal the source's (checksum), JSONL lines and
# Parquet rows (DuckDB) are counted; the blackhole has no output, so its
# count is the one sluice reports; pg_recvlogical stops at the end LSN.
#
# Usage: bench/run.sh [ROWS]     (default 1000000)
#        WORKLOADS="inserts updates" bench/run.sh   (any of: inserts updates one-big-tx jsonb snapshot)
# jsonb: ROWS/2 inserts in 50 transactions into a table with a jsonb column
# (id bigint PK, a int, b text, c timestamptz, d numeric(12,2), e jsonb); its
# rows/s count rows of that table.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-1000000}
WORKLOADS=${WORKLOADS:-inserts updates one-big-tx jsonb snapshot}
TXS=100
WORK=$(mktemp -d /tmp/sluice-bench.XXXXXX)
chmod 755 "$WORK"
SLUICE=${SLUICE_BIN:-$PWD/target/release/sluice}  # SLUICE_BIN: compare another build
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
export PGOPTIONS='-c client_min_messages=warning'

TABLE_DDL="CREATE TABLE bench (id bigint PRIMARY KEY, v int NOT NULL, s text NOT NULL, n numeric(12,2), ts timestamptz NOT NULL DEFAULT now())"
JSON_DDL="CREATE TABLE bench_json (id bigint PRIMARY KEY, a int, b text, c timestamptz, d numeric(12,2), e jsonb)"
LOAD="INSERT INTO bench (id, v, s, n) SELECT g, g % 1000, 'row ' || g, g * 0.01 FROM generate_series(1, $ROWS) g"
psrc -c "$TABLE_DDL" -c "$JSON_DDL" -c "CREATE PUBLICATION bench_pub FOR TABLE bench, bench_json"
pdst -c "$TABLE_DDL" -c "$JSON_DDL"

RESULTS=$WORK/results.txt
: > "$RESULTS"
printf '%-11s %-20s %8s %10s %9s %8s %7s  %s\n' workload consumer seconds rows/s vs_native vs_recv rss_MB samples | tee -a "$RESULTS"
line() { # workload fn label [no-ratios]
  local vn=- vr=-
  if [ -z "${4:-}" ]; then vn=$(ratio "$2" native); vr=$(ratio "$2" recvlogical); fi
  printf '%-11s %-20s %8.2f %10.0f %9s %9s %7s  %s\n' "$1" "$3" "${BEST[$2]}" "$(best_rate "$2")" "$vn" "$vr" \
    "${BEST_RSS[$2]}" "${SAMPLES[$2]}" | tee -a "$RESULTS"
}

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
  include: ["public.bench", "public.bench_json"]
snapshot:
  mode: $4
sink:
$3
checkpoint:
  path: $WORK/state-$1
YAML
  echo "$WORK/$1.yaml"
}

TAG="" RESET="" END=""
native() { native_sample "$1" bench bench_json; }
recvlogical() {
  timed "$BIN/pg_recvlogical" -d "$SRC" --slot "recv_${TAG}_$1" --start --endpos "$END" \
    -o proto_version=1 -o publication_names=bench_pub -f /dev/null
  DELIVERED=$EXPECTED
}
sluice_into() { # kind n
  local kind=$1 n=$2 body out="$WORK/out-$1-$TAG-$2" log="$WORK/sluice-$1-$TAG-$2.log"
  case $kind in
    bh) body="  type: blackhole" ;;
    jsonl | parquet) body="  type: files
  format: $kind
  path: $out" ;;
  esac
  local p; p=$(sluice_pipeline "${kind}_${TAG}_$n" "sl_${kind}_${TAG}_$n" "$body" never)
  timed eval 'SLUICE_LOG=warn "$SLUICE" run "$p" --until-caught-up 2> "$log"' || failed "sluice → $kind" "$log"
  RSS=$(sluice_rss "$log")
  case $kind in
    bh) DELIVERED=$(grep -o 'caught up: [0-9]* events' "$log" | awk '{print $3}' || true) ;;
    jsonl) DELIVERED=$(jsonl_rows "$out") ;;
    parquet) DELIVERED=$(parquet_rows "$out") ;;
  esac
  rm -rf "$out"
}
sluice_bh() { sluice_into bh "$1"; }
sluice_jsonl() { sluice_into jsonl "$1"; }
sluice_parquet() { sluice_into parquet "$1"; }

run_workload() { # name sql rows
  TAG=${1//-/_} EXPECTED=$3
  local i s
  # Slots first, so every consumer reads the same WAL range.
  for i in 1 2; do
    pdst -c "CREATE SUBSCRIPTION sub_${TAG}_$i CONNECTION '$SRC' PUBLICATION bench_pub WITH (enabled = false, copy_data = false)"
    for s in recv_ sl_bh_ sl_jsonl_ sl_parquet_; do
      psrc -c "SELECT pg_create_logical_replication_slot('$s${TAG}_$i', 'pgoutput')" >/dev/null
    done
  done
  psrc -c "$2"
  END=$(psrc -c "SELECT pg_current_wal_insert_lsn()")
  psrc -c "SELECT pg_switch_wal()" >/dev/null  # make everything before END flushed and sendable
  reset_samples
  abba native recvlogical sluice_bh sluice_jsonl sluice_parquet
  line "$1" native "native subscription"
  line "$1" recvlogical "pg_recvlogical"
  line "$1" sluice_bh "sluice → blackhole"
  line "$1" sluice_jsonl "sluice → jsonl"
  line "$1" sluice_parquet "sluice → parquet"
  for i in 1 2; do pdst -c "DROP SUBSCRIPTION sub_${TAG}_$i"; done
  psrc -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name LIKE '%\_${TAG}\_%' AND NOT active" >/dev/null
}

PER_TX=$((ROWS / TXS))
case " $WORKLOADS " in *" inserts "*)
  psrc -c "TRUNCATE bench"
  RESET=""
  run_workload inserts "DO \$\$ BEGIN FOR t IN 0..$((TXS - 1)) LOOP
    INSERT INTO bench (id, v, s, n) SELECT g, g % 1000, 'row ' || g, g * 0.01 FROM generate_series(t * $PER_TX + 1, (t + 1) * $PER_TX) g;
    COMMIT; END LOOP; END \$\$" "$ROWS" ;;
esac
case " $WORKLOADS " in *" updates "*)
  psrc -c "TRUNCATE bench" -c "$LOAD"
  RESET=$LOAD
  run_workload updates "DO \$\$ BEGIN FOR t IN 0..$((TXS - 1)) LOOP
    FOR i IN t * $PER_TX + 1 .. (t + 1) * $PER_TX LOOP UPDATE bench SET v = v + 1 WHERE id = i; END LOOP;
    COMMIT; END LOOP; END \$\$" "$ROWS" ;;
esac
case " $WORKLOADS " in *" one-big-tx "*)
  psrc -c "TRUNCATE bench"
  RESET=""
  run_workload one-big-tx "$LOAD" "$ROWS" ;;
esac
case " $WORKLOADS " in *" jsonb "*)
  psrc -c "TRUNCATE bench, bench_json"
  RESET=""
  JROWS=$((ROWS / 2)) JPER=$((ROWS / 2 / 50))
  run_workload jsonb "DO \$\$ BEGIN FOR t IN 0..49 LOOP
    INSERT INTO bench_json SELECT g, g % 1000, 'row ' || g, now(), g * 0.01, jsonb_build_object('id', g, 'name', 'item ' || g,
      'tags', jsonb_build_array('a', 'b', g % 7), 'price', g * 0.5, 'ok', g % 2 = 0, 'nested', jsonb_build_object('x', g % 13, 'y', 'z'))
    FROM generate_series(t * $JPER + 1, (t + 1) * $JPER) g;
    COMMIT; END LOOP; END \$\$" "$JROWS" ;;
esac
case " $WORKLOADS " in *" snapshot "*)
  psrc -c "TRUNCATE bench, bench_json" -c "$LOAD" -c "VACUUM ANALYZE bench"
  EXPECTED=$ROWS
  copy_out() {
    # Into memory (tmpfs), to count the rows afterwards.
    local out; out=$(mktemp /dev/shm/sluice-copy.XXXXXX)
    timed eval 'psql -X -q "$SRC" -c "COPY bench TO STDOUT (FORMAT binary)" > "$out"'
    # The binary COPY stream: a 19-byte header, then per row a 2-byte field count.
    DELIVERED=$(python3 - "$out" <<'PY'
import sys, struct
b = open(sys.argv[1], "rb").read(); i = 19; n = 0
while True:
    (k,) = struct.unpack_from(">h", b, i); i += 2
    if k == -1: break
    for _ in range(k):
        (l,) = struct.unpack_from(">i", b, i); i += 4 + max(l, 0)
    n += 1
print(n)
PY
)
    rm -f "$out"
  }
  sluice_snap() {
    local n=$1 log="$WORK/snap-$1.log" p
    p=$(sluice_pipeline "snap_$n" "sluice_snap_$n" "  type: blackhole" initial)
    timed eval 'SLUICE_LOG=warn "$SLUICE" run "$p" --until-caught-up 2> "$log"' || failed "sluice snapshot" "$log"
    RSS=$(sluice_rss "$log")
    DELIVERED=$(grep -o 'caught up: [0-9]* events' "$log" | awk '{print $3}' || true)
    psrc -c "SELECT pg_drop_replication_slot('sluice_snap_$n')" >/dev/null
  }
  reset_samples
  abba copy_out sluice_snap
  line snapshot copy_out "COPY binary TO STDOUT" none
  printf '%-11s %-20s %8.2f %10.0f %9s %9s %7s  %s\n' snapshot "sluice → blackhole" "${BEST[sluice_snap]}" \
    "$(best_rate sluice_snap)" "$(ratio sluice_snap copy_out)" - "${BEST_RSS[sluice_snap]}" "${SAMPLES[sluice_snap]}" | tee -a "$RESULTS"
  echo "(snapshot rows: vs_native column = ratio to COPY binary)" ;;
esac
echo "(best of two samples per consumer, run in the order A B … B A)"
