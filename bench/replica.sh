#!/usr/bin/env bash
# Replica sinks against the databases' own tools, in one run on this machine.
#
# Postgres → Postgres catch-up: slots are created *before* each load (two per
# consumer), then the same WAL range is applied by
#   (a) Postgres's own logical replication (a subscription on the target
#       cluster with `binary = true`, created disabled before the load,
#       enabled and timed until its slot has confirmed the end of the load,
#       polled every 5 ms from one session), and
#   (b) sluice run --until-caught-up with a postgres sink into another
#       database of the same target cluster (process start included).
# Each consumer runs twice in the order A B B A, from the same target state
# (the target table is reset before every sample), and keeps its best
# sample. What each delivered is checked on the target: the native
# subscription's table must equal the source's (checksum), sluice's passes
# `sluice verify`.
# Workloads: INSERTS rows in 50 transactions; UPDATES single-row UPDATE
# transactions (one row each); the same updates replayed by psql in
# autocommit, as a floor (one sample).
# Snapshot of a SNAP-row table, same strategy on both sides where marked:
#   COPY binary | COPY binary into a table that keeps its primary key;
#   COPY binary | COPY binary into a table without indexes, the primary key
#     built afterwards (what sluice does: drop indexes, copy, rebuild) — the
#     baseline of the ratio;
#   sluice's initial snapshot into a postgres sink.
#
# Usage: bench/replica.sh [INSERTS] [UPDATES] [SNAP]   (default 500000 200000 1000000)
#        WORKLOADS="updates" bench/replica.sh ...     (any of: inserts updates snapshot)
set -euo pipefail
cd "$(dirname "$0")/.."
INSERTS=${1:-500000}
UPDATES=${2:-200000}
SNAP=${3:-1000000}
WORKLOADS=${WORKLOADS:-inserts updates snapshot}
TXS=50
WORK=$(mktemp -d /tmp/sluice-bench-replica.XXXXXX)
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
SL="postgresql://postgres@127.0.0.1:$PORT_dst/sl"
SNAPDB="postgresql://postgres@127.0.0.1:$PORT_dst/snap"
psrc() { psql -X -q -v ON_ERROR_STOP=1 -At "$SRC" "$@"; }
pdst() { psql -X -q -v ON_ERROR_STOP=1 -At "$DST" "$@"; }
psl() { psql -X -q -v ON_ERROR_STOP=1 -At "$SL" "$@"; }
export PGOPTIONS='-c client_min_messages=warning'
pdst -c "CREATE DATABASE sl" -c "CREATE DATABASE snap"

TABLE_DDL="CREATE TABLE bench (id bigint PRIMARY KEY, v int NOT NULL, s text NOT NULL, n numeric(12,2), ts timestamptz NOT NULL DEFAULT now())"
LOAD="INSERT INTO bench (id, v, s, n) SELECT g, g % 1000, 'row ' || g, g * 0.01 FROM generate_series(1, $UPDATES) g"
CHECKSUM=$(table_checksum bench)
psrc -c "$TABLE_DDL" -c "CREATE PUBLICATION bench_pub FOR TABLE bench"
pdst -c "$TABLE_DDL"
psl -c "$TABLE_DDL"

RESULTS=$WORK/results.txt
: > "$RESULTS"
printf '%-10s %-40s %9s %12s %10s %8s  %s\n' workload consumer seconds per_s vs_base rss_MB samples | tee -a "$RESULTS"

line() { # workload consumer-fn label baseline-fn
  printf '%-10s %-40s %9.2f %12.0f %10s %8s  %s\n' "$1" "$3" "${BEST[$2]}" "$(best_rate "$2")" \
    "$(ratio "$2" "$4")" "${BEST_RSS[$2]}" "${SAMPLES[$2]}" | tee -a "$RESULTS"
}

pipeline() { # name slot snapshot-mode sink-url
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
  url: $4
  batch:
    max_rows: 20000
    max_delay_ms: 500
checkpoint:
  path: $WORK/state-$1
YAML
  echo "$WORK/$1.yaml"
}

verified() { # pipeline file -> DELIVERED=EXPECTED when the replica equals the source
  if "$SLUICE" verify "$1" > "$WORK/verify.out" 2>&1; then DELIVERED=$EXPECTED; else
    cat "$WORK/verify.out" >&2
    DELIVERED="a replica that differs from the source"
  fi
}

# Streaming: the current workload's tag and the SQL that puts a target table
# back in its state before the load.
TAG="" RESET="" END=""
native() { native_sample "$1" bench; }
sluice_pg() {
  local n=$1
  psl -c "TRUNCATE bench" ${RESET:+-c "$RESET"}
  local p; p=$(pipeline "pg_${TAG}_$1" "sl_${TAG}_$1" never "$SL")
  timed eval 'SLUICE_LOG=warn ${SLUICE_WRAP:-} "$SLUICE" run "$p" --until-caught-up 2> "$WORK/sluice-$TAG-$n.log"' \
    || failed "sluice → postgres" "$WORK/sluice-$TAG-$n.log"
  RSS=$(sluice_rss "$WORK/sluice-$TAG-$1.log")
  verified "$p"
}

# The walsender alone: pg_recvlogical (pgoutput, text values) to /dev/null,
# up to the end LSN (it writes no rows: delivered is taken as the endpos).
recvlogical() {
  timed "$BIN/pg_recvlogical" -d "$SRC" --slot "rl_${TAG}_$1" --start --endpos "$END" \
    -o proto_version=1 -o publication_names=bench_pub -f /dev/null
  DELIVERED=$EXPECTED
}

run_workload() { # name sql count
  TAG=$1 EXPECTED=$3
  local i
  for i in 1 2; do
    pdst -c "CREATE SUBSCRIPTION sub_${TAG}_$i CONNECTION '$SRC' PUBLICATION bench_pub WITH (enabled = false, copy_data = false, binary = true)"
    psrc -c "SELECT pg_create_logical_replication_slot('sl_${TAG}_$i', 'pgoutput')" >/dev/null
    psrc -c "SELECT pg_create_logical_replication_slot('rl_${TAG}_$i', 'pgoutput')" >/dev/null
  done
  psrc -c "$2"
  END=$(psrc -c "SELECT pg_current_wal_insert_lsn()")
  psrc -c "SELECT pg_switch_wal()" >/dev/null
  reset_samples
  abba native sluice_pg recvlogical
  line "$1" native "native subscription (binary)" native
  line "$1" sluice_pg "sluice → postgres (verified)" native
  line "$1" recvlogical "pg_recvlogical → /dev/null" native
  for i in 1 2; do
    pdst -c "DROP SUBSCRIPTION sub_${TAG}_$i"
    psrc -c "SELECT pg_drop_replication_slot(s) FROM unnest(ARRAY['sl_${TAG}_$i', 'rl_${TAG}_$i']) s" >/dev/null
  done
}

case " $WORKLOADS " in *" inserts "*)
  # Inserts: INSERTS rows in TXS transactions (rows/s).
  PER_TX=$((INSERTS / TXS))
  psrc -c "TRUNCATE bench"
  RESET=""
  run_workload inserts "DO \$\$ BEGIN FOR t IN 0..$((TXS - 1)) LOOP
    INSERT INTO bench (id, v, s, n) SELECT 10000000 + g, g % 1000, 'row ' || g, g * 0.01 FROM generate_series(t * $PER_TX + 1, (t + 1) * $PER_TX) g;
    COMMIT; END LOOP; END \$\$" "$INSERTS" ;;
esac

case " $WORKLOADS " in *" updates "*)
  # Single-row update transactions (transactions/s), from the same starting rows everywhere.
  psrc -c "TRUNCATE bench" -c "$LOAD"
  RESET=$LOAD
  run_workload updates "DO \$\$ BEGIN FOR i IN 1..$UPDATES LOOP UPDATE bench SET v = v + 1 WHERE id = i; COMMIT; END LOOP; END \$\$" "$UPDATES"
  # The floor: the same updates replayed by psql in autocommit (one sample).
  pdst -c "TRUNCATE bench" -c "$LOAD"
  seq 1 "$UPDATES" | awk '{print "UPDATE bench SET v = v + 1 WHERE id = " $1 ";"}' > "$WORK/updates.sql"
  timed psql -X -q -At "$DST" -f "$WORK/updates.sql" >/dev/null
  printf '%-10s %-40s %9.2f %12.0f\n' updates "psql autocommit replay" "$ELAPSED" "$(python3 -c "print($UPDATES / $ELAPSED)")" | tee -a "$RESULTS" ;;
esac

case " $WORKLOADS " in *" snapshot "*)
  psrc -c "DROP PUBLICATION bench_pub" -c "DROP TABLE bench" -c "$TABLE_DDL" -c "CREATE PUBLICATION bench_pub FOR TABLE bench" \
    -c "INSERT INTO bench (id, v, s, n) SELECT g, g % 1000, 'row ' || g, g * 0.01 FROM generate_series(1, $SNAP) g" -c "VACUUM ANALYZE bench"
  EXPECTED=$SNAP
  copied() { [ "$(pdst -c "$CHECKSUM")" = "$(psrc -c "$CHECKSUM")" ] && DELIVERED=$EXPECTED || DELIVERED="a copy that differs"; }
  copy_pk() {
    pdst -c "DROP TABLE bench" -c "$TABLE_DDL"
    timed eval 'psql -X -q "$SRC" -c "COPY bench TO STDOUT (FORMAT binary)" | psql -X -q "$DST" -c "COPY bench FROM STDIN (FORMAT binary)"'
    copied
  }
  copy_index_after() {
    pdst -c "DROP TABLE bench" -c "${TABLE_DDL/ PRIMARY KEY/}"
    timed eval 'psql -X -q "$SRC" -c "COPY bench TO STDOUT (FORMAT binary)" | psql -X -q "$DST" -c "COPY bench FROM STDIN (FORMAT binary)"
      pdst -c "ALTER TABLE bench ADD PRIMARY KEY (id)"'
    copied
  }
  sluice_snap() {
    local n=$1 p; p=$(pipeline "snap_$1" "sluice_snap_$1" initial "$SNAPDB")
    psql -X -q "$SNAPDB" -c "DROP TABLE IF EXISTS bench"  # every sample into an empty database
    timed eval 'SLUICE_LOG=warn "$SLUICE" run "$p" --until-caught-up 2> "$WORK/snap-$n.log"' || failed "sluice snapshot" "$WORK/snap-$n.log"
    RSS=$(sluice_rss "$WORK/snap-$1.log")
    verified "$p"
    psrc -c "SELECT pg_drop_replication_slot('sluice_snap_$1')" >/dev/null
  }
  reset_samples
  abba copy_pk copy_index_after sluice_snap
  line snapshot copy_pk "COPY binary | COPY (PK kept)" copy_index_after
  line snapshot copy_index_after "COPY binary | COPY, PK built after" copy_index_after
  line snapshot sluice_snap "sluice → postgres (verified)" copy_index_after ;;
esac
echo "(vs_base: ratio to the native subscription in the same run; for the snapshot, to COPY | COPY with the key built afterwards;"
echo " best of two samples per consumer, run in the order A B B A)"
