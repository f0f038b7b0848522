#!/usr/bin/env bash
# What whole rows cost: key changes of rows whose TOASTed value is unchanged
# make Sluice read that value back from the source for sinks that cannot
# merge (files, Kafka). The same WAL ranges drained by each consumer:
# single-column updates (nothing to read) and key changes (one read per
# table per batch), with the blackhole (which never reads) as reference.
#
# Usage: bench/keychange.sh [ROWS]     (default 100000)
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-100000}
TXS=100
WORK=$(mktemp -d /tmp/sluice-bench-kc.XXXXXX)
chmod 755 "$WORK"
SLUICE=$PWD/target/release/sluice
RESULTS=$WORK/results.txt
# shellcheck source=bench/common.sh
. bench/common.sh
cargo build --release --quiet
trap stop_clusters EXIT

start_cluster src
SRC="postgresql://postgres@127.0.0.1:$PORT_src/postgres"
psrc() { psql -X -q -v ON_ERROR_STOP=1 -At "$SRC" "$@"; }
psrc -c "CREATE TABLE kc (id bigint PRIMARY KEY, qty int NOT NULL, big text)"
psrc -c "ALTER TABLE kc ALTER COLUMN big SET STORAGE EXTERNAL"
psrc -c "INSERT INTO kc SELECT g, 0, repeat(md5(g::text), 100) FROM generate_series(1, $ROWS) g"

pipeline() { # name sink-body
  cat > "$WORK/$1.yaml" <<YAML
version: 1
name: $1
source:
  type: postgres
  url: $SRC
tables:
  include: ["public.kc"]
snapshot:
  mode: never
sink:
$2
checkpoint:
  path: $WORK/state-$1
YAML
  echo "$WORK/$1.yaml"
}
files() { printf '  type: files\n  format: %s\n  path: %s' "$2" "$WORK/out-$1"; }
declare -A P
P[bh]=$(pipeline bh "  type: blackhole")
P[jsonl]=$(pipeline jsonl "$(files jsonl jsonl)")
P[parquet]=$(pipeline parquet "$(files parquet parquet)")
ORDER="bh jsonl parquet"
for n in $ORDER; do SLUICE_LOG=warn "$SLUICE" run "${P[$n]}" --until-caught-up 2>/dev/null; done

: > "$RESULTS"
printf '%-12s %-34s %9s %12s %9s\n' workload consumer seconds rows/s vs_updates | tee -a "$RESULTS"
PER_TX=$((ROWS / TXS))
declare -A RATE
measure() { # workload
  local n t0 t1 base
  for n in $ORDER; do
    t0=$(now)
    SLUICE_LOG=warn "$SLUICE" run "${P[$n]}" --until-caught-up 2> "$WORK/$n-$1.log"
    t1=$(now)
    RATE[$1-$n]=$(python3 -c "print($ROWS/($t1-$t0))")
    base=""
    [ "$1" = key-changes ] && base=${RATE[updates-$n]}
    report "$1" "sluice → $n" "$t0" "$t1" "$ROWS" "$base"
  done
}
psrc -c "DO \$\$ BEGIN FOR t IN 0..$((TXS - 1)) LOOP
  UPDATE kc SET qty = qty + 1 WHERE id BETWEEN t * $PER_TX + 1 AND (t + 1) * $PER_TX;
  COMMIT; END LOOP; END \$\$"
measure updates
psrc -c "DO \$\$ BEGIN FOR t IN 0..$((TXS - 1)) LOOP
  UPDATE kc SET id = id + 1000000000, qty = qty + 1 WHERE id BETWEEN t * $PER_TX + 1 AND (t + 1) * $PER_TX;
  COMMIT; END LOOP; END \$\$"
measure key-changes
# Every key change arrives whole: the last file's rows carry the value.
missing=$(cat "$WORK"/out-jsonl/*/*.jsonl | grep -c '"op":"u"' | tr -d ' ')
whole=$(cat "$WORK"/out-jsonl/*/*.jsonl | grep '"op":"u"' | grep -c '"big":' | tr -d ' ')
echo "(jsonl: $whole of $missing update events carry big; the $ROWS key changes must all do)"
