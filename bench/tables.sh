#!/usr/bin/env bash
# Cost per table (issue 15, item 5): many tables in one pipeline.
#
# A Postgres cluster holds TABLES empty tables (schema `e`) and TABLES tables
# of ROWS rows each (schema `public`), all `(id int PRIMARY KEY, v text,
# n numeric)`. Measured:
#   empty    — `tables.include: ["e.*"]`, snapshot into JSONL, against the
#              same run over one empty table: (time(N) - time(1)) / N is the
#              cost per empty table (target ≤ 3 ms);
#   snapshot — `tables.include: ["public.*"]` into JSONL, Parquet and Arrow
#              IPC: time, rows/s and peak RSS (target < 300 MB);
#   stream   — then UPDATES rounds, each updating one row of every table in
#              transactions of 500 tables (the worst case for per-table
#              state: every table has changes between any two checkpoints;
#              500, as a transaction touching 10,000 tables exceeds the
#              server's lock table), drained by the same pipelines: time
#              and peak RSS.
# Every output is read back and counted (JSONL lines, Parquet rows with
# DuckDB, Arrow rows with pyarrow); peak RSS is the one sluice logs at exit.
#
# Usage: bench/tables.sh [TABLES] [ROWS] [UPDATES]   (default 10000 1000 100)
#        FORMATS="jsonl parquet" bench/tables.sh     (any of: jsonl parquet arrow)
set -euo pipefail
cd "$(dirname "$0")/.."
TABLES=${1:-10000}
ROWS=${2:-1000}
UPDATES=${3:-100}
FORMATS=${FORMATS:-jsonl parquet arrow}
WORK=$(mktemp -d /tmp/sluice-tables.XXXXXX)
chmod 755 "$WORK"
SLUICE=${SLUICE_BIN:-$PWD/target/release/sluice}  # SLUICE_BIN: compare another build
cargo build --release --quiet

# shellcheck source=bench/common.sh
. bench/common.sh
trap stop_clusters EXIT

start_cluster src
SRC="postgresql://postgres@127.0.0.1:$PORT_src/postgres"
psrc() { psql -X -q -v ON_ERROR_STOP=1 -At "$SRC" "$@"; }
export PGOPTIONS='-c client_min_messages=warning'

echo "creating $TABLES empty tables and $TABLES tables of $ROWS rows…" >&2
psrc -c "CREATE SCHEMA e; CREATE SCHEMA one; CREATE TABLE one.t0 (id int PRIMARY KEY, v text, n numeric)"
psrc -c "DO \$\$ BEGIN FOR i IN 1..$TABLES LOOP
    EXECUTE format('CREATE TABLE e.t%s (id int PRIMARY KEY, v text, n numeric)', i);
    EXECUTE format('CREATE TABLE public.t%s (id int PRIMARY KEY, v text, n numeric)', i);
    EXECUTE format('INSERT INTO public.t%s SELECT g, ''value '' || g, g * 0.25 FROM generate_series(1, $ROWS) g', i);
    IF i % 200 = 0 THEN COMMIT; END IF;
  END LOOP; END \$\$" -c "VACUUM ANALYZE"

pipeline() { # name include sink-body
  cat > "$WORK/$1.yaml" <<YAML
version: 1
name: $1
source:
  type: postgres
  url: $SRC
  slot: $1
  publication: pub_$1
tables:
  include: ["$2"]
snapshot:
  mode: initial
sink:
$3
checkpoint:
  path: $WORK/state-$1
YAML
  echo "$WORK/$1.yaml"
}
files_body() { printf '  type: files\n  format: %s\n  path: %s\n' "$1" "$2"; }
count() { # format dir
  case $1 in jsonl) jsonl_rows "$2" ;; parquet) parquet_rows "$2" ;; arrow) arrow_rows "$2" ;; esac
}
drain() { # pipeline-file log
  local p=$1 log=$2
  timed eval 'SLUICE_LOG=warn "$SLUICE" run "$p" --until-caught-up 2> "$log"' || failed "sluice" "$log"
  RSS=$(sluice_rss "$log")
}

RESULTS=$WORK/results.txt
: > "$RESULTS"
printf '%-9s %-8s %7s %9s %10s %12s %7s\n' phase format tables seconds rows/s "ms/table" rss_MB | tee -a "$RESULTS"
row() { # phase format tables seconds rows ms-per-table rss
  printf '%-9s %-8s %7s %9.2f %10s %12s %7s\n' "$1" "$2" "$3" "$4" "$5" "$6" "$7" | tee -a "$RESULTS"
}

# Empty tables: the fixed cost of one pipeline, then the cost per table.
p=$(pipeline one "one.*" "$(files_body jsonl "$WORK/out-one")")
drain "$p" "$WORK/one.log"
T1=$ELAPSED
p=$(pipeline empty "e.*" "$(files_body jsonl "$WORK/out-empty")")
drain "$p" "$WORK/empty.log"
PER=$(python3 -c "print(f'{($ELAPSED - $T1) * 1000 / $TABLES:.2f}')")
row empty jsonl "$TABLES" "$ELAPSED" - "$PER" "$RSS"
psrc -c "SELECT pg_drop_replication_slot(s) FROM unnest(ARRAY['one', 'empty']) s" >/dev/null

# Snapshot of TABLES x ROWS, into each format.
for fmt in $FORMATS; do
  p=$(pipeline "full_$fmt" "public.*" "$(files_body "$fmt" "$WORK/out-$fmt")")
  drain "$p" "$WORK/snap-$fmt.log"
  got=$(count "$fmt" "$WORK/out-$fmt")
  [ "$got" = $((TABLES * ROWS)) ] || { echo "bench: snapshot into $fmt delivered $got rows, expected $((TABLES * ROWS))" >&2; exit 1; }
  row snapshot "$fmt" "$TABLES" "$ELAPSED" "$(python3 -c "print(round($got / $ELAPSED))")" \
    "$(python3 -c "print(f'{$ELAPSED * 1000 / $TABLES:.2f}')")" "$RSS"
done

# UPDATES rounds, each touching every table once, 500 tables a transaction.
echo "updating: $UPDATES rounds over $TABLES tables…" >&2
psrc -c "DO \$\$ BEGIN FOR r IN 1..$UPDATES LOOP
    FOR i IN 1..$TABLES LOOP
      EXECUTE format('UPDATE public.t%s SET v = v || ''+'' WHERE id = %s', i, (r - 1) % $ROWS + 1);
      IF i % 500 = 0 THEN COMMIT; END IF;
    END LOOP;
    COMMIT;
  END LOOP; END \$\$"
for fmt in $FORMATS; do
  drain "$WORK/full_$fmt.yaml" "$WORK/stream-$fmt.log"
  got=$(count "$fmt" "$WORK/out-$fmt")
  want=$((TABLES * ROWS + TABLES * UPDATES))
  [ "$got" = "$want" ] || { echo "bench: stream into $fmt: $got rows in the output, expected $want" >&2; exit 1; }
  row stream "$fmt" "$TABLES" "$ELAPSED" "$(python3 -c "print(round($TABLES * $UPDATES / $ELAPSED))")" - "$RSS"
done
