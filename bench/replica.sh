#!/usr/bin/env bash
# Replica sinks against the databases' own tools, in one run on this machine.
#
# Postgres → Postgres catch-up: slots are created *before* each load, then the
# same WAL range is applied by
#   (a) Postgres's own logical replication (a subscription on the target
#       cluster, created disabled before the load, enabled and timed until its
#       slot has confirmed the end of the load), and
#   (b) sluice run --until-caught-up with a postgres sink into another
#       database of the same target cluster.
# Workloads: INSERTS rows in 50 transactions; UPDATES single-row UPDATE
# transactions (one row each); the same updates replayed by psql in
# autocommit, as a floor.
# Snapshot: a SNAP-row table, `psql COPY TO STDOUT (FORMAT binary) | psql COPY
# FROM STDIN (FORMAT binary)` vs sluice's initial snapshot into a postgres sink.
# Every sluice result is checked with `sluice verify` before it is reported.
#
# Usage: bench/replica.sh [INSERTS] [UPDATES] [SNAP]   (default 500000 200000 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
INSERTS=${1:-500000}
UPDATES=${2:-200000}
SNAP=${3:-1000000}
TXS=50
WORK=$(mktemp -d /tmp/sluice-bench-replica.XXXXXX)
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
SL="postgresql://postgres@127.0.0.1:$PORT_dst/sl"
psrc() { psql -X -q -v ON_ERROR_STOP=1 -At "$SRC" "$@"; }
pdst() { psql -X -q -v ON_ERROR_STOP=1 -At "$DST" "$@"; }
psl() { psql -X -q -v ON_ERROR_STOP=1 -At "$SL" "$@"; }
export PGOPTIONS='-c client_min_messages=warning'
pdst -c "CREATE DATABASE sl"

TABLE_DDL="CREATE TABLE bench (id bigint PRIMARY KEY, v int NOT NULL, s text NOT NULL, n numeric(12,2), ts timestamptz NOT NULL DEFAULT now())"
LOAD="INSERT INTO bench (id, v, s, n) SELECT g, g % 1000, 'row ' || g, g * 0.01 FROM generate_series(1, $UPDATES) g"
psrc -c "$TABLE_DDL" -c "CREATE PUBLICATION bench_pub FOR TABLE bench"
pdst -c "$TABLE_DDL"
psl -c "$TABLE_DDL"

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
rate() { python3 -c "print($1/($3-$2))"; }

pipeline() { # name slot snapshot-mode [sink url]
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
  mode: $3
  parallelism: 4
sink:
  type: postgres
  url: ${4:-$SL}
  batch:
    max_rows: 20000
    max_delay_ms: 500
checkpoint:
  path: $WORK/state-$1
YAML
  echo "$WORK/$1.yaml"
}

verify() { # pipeline file
  if ! "$SLUICE" verify "$1" > "$WORK/verify.out" 2>&1; then
    cat "$WORK/verify.out"
    echo "verify failed: the replica differs from the source" >&2
    exit 1
  fi
}

run_workload() { # name sql count
  local name=$1 sql=$2 n=$3 tag=${1//-/_}
  pdst -c "DROP SUBSCRIPTION IF EXISTS sub_$tag"
  pdst -c "CREATE SUBSCRIPTION sub_$tag CONNECTION '$SRC' PUBLICATION bench_pub WITH (enabled = false, copy_data = false, binary = true)"
  psrc -c "SELECT pg_create_logical_replication_slot('sl_$tag', 'pgoutput')" >/dev/null
  psrc -c "$sql"
  local end; end=$(psrc -c "SELECT pg_current_wal_insert_lsn()")
  psrc -c "SELECT pg_switch_wal()" >/dev/null

  local t0 t1 native
  t0=$(now)
  pdst -c "ALTER SUBSCRIPTION sub_$tag ENABLE"
  until [ "$(psrc -c "SELECT confirmed_flush_lsn >= '$end' FROM pg_replication_slots WHERE slot_name = 'sub_$tag'")" = t ]; do sleep 0.02; done
  t1=$(now)
  native=$(rate "$n" "$t0" "$t1")
  report "$name" "native subscription (binary)" "$t0" "$t1" "$n" "$native" "-"
  pdst -c "ALTER SUBSCRIPTION sub_$tag DISABLE"

  local p; p=$(pipeline "pg_$tag" "sl_$tag" never)
  t0=$(now)
  SLUICE_LOG=warn "$SLUICE" run "$p" --until-caught-up 2> "$WORK/sluice-$tag.log"
  t1=$(now)
  verify "$p"
  report "$name" "sluice → postgres (verified)" "$t0" "$t1" "$n" "$native" \
    "$(grep -o 'peak RSS [0-9]*' "$WORK/sluice-$tag.log" | awk '{print $3}')"
  pdst -c "DROP SUBSCRIPTION sub_$tag"
  psrc -c "SELECT pg_drop_replication_slot('sl_$tag')" >/dev/null
}

# Inserts: INSERTS rows in TXS transactions (rows/s).
PER_TX=$((INSERTS / TXS))
run_workload inserts "DO \$\$ BEGIN FOR t IN 0..$((TXS - 1)) LOOP
  INSERT INTO bench (id, v, s, n) SELECT 10000000 + g, g % 1000, 'row ' || g, g * 0.01 FROM generate_series(t * $PER_TX + 1, (t + 1) * $PER_TX) g;
  COMMIT; END LOOP; END \$\$" "$INSERTS"

# Single-row update transactions (transactions/s), on the same starting rows everywhere.
for db in psrc pdst psl; do $db -c "TRUNCATE bench" -c "$LOAD"; done
run_workload updates "DO \$\$ BEGIN FOR i IN 1..$UPDATES LOOP UPDATE bench SET v = v + 1 WHERE id = i; COMMIT; END LOOP; END \$\$" "$UPDATES"

# The floor: the same updates replayed by psql in autocommit.
seq 1 "$UPDATES" | awk '{print "UPDATE bench SET v = v + 1 WHERE id = " $1 ";"}' > "$WORK/updates.sql"
t0=$(now); psql -X -q -At "$DST" -f "$WORK/updates.sql" >/dev/null; t1=$(now)
report updates "psql autocommit replay" "$t0" "$t1" "$UPDATES" "" "-"

# Snapshot: COPY binary piped between the clusters vs sluice's initial snapshot.
psrc -c "DROP PUBLICATION bench_pub" -c "DROP TABLE bench" -c "$TABLE_DDL" -c "CREATE PUBLICATION bench_pub FOR TABLE bench" \
  -c "INSERT INTO bench (id, v, s, n) SELECT g, g % 1000, 'row ' || g, g * 0.01 FROM generate_series(1, $SNAP) g" -c "VACUUM ANALYZE bench"
pdst -c "TRUNCATE bench"
t0=$(now)
psql -X -q "$SRC" -c "COPY bench TO STDOUT (FORMAT binary)" | psql -X -q "$DST" -c "COPY bench FROM STDIN (FORMAT binary)"
t1=$(now)
copy=$(rate "$SNAP" "$t0" "$t1")
report snapshot "COPY binary | COPY binary" "$t0" "$t1" "$SNAP" "$copy" "-"
pdst -c "CREATE DATABASE snap"
p=$(pipeline snap sluice_snap initial "postgresql://postgres@127.0.0.1:$PORT_dst/snap")
t0=$(now)
SLUICE_LOG=warn "$SLUICE" run "$p" --until-caught-up 2> "$WORK/snap.log"
t1=$(now)
verify "$p"
report snapshot "sluice → postgres (verified)" "$t0" "$t1" "$SNAP" "$copy" "$(grep -o 'peak RSS [0-9]*' "$WORK/snap.log" | awk '{print $3}')"
echo "(vs_native: ratio to the native subscription in the same run; for the snapshot, to COPY | COPY)"
