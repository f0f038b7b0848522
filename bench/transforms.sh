#!/usr/bin/env bash
# The transform stage's cost: the same WAL range drained by Sluice with and
# without transforms (a filter keeping 90% of rows, a sha256 mask and a
# rename), in-process and with the filter pushed down into the publication.
# The issue's target: with transforms, at least 0.8x the rate without.
#
# Usage: bench/transforms.sh [ROWS]     (default 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-1000000}
TXS=100
WORK=$(mktemp -d /tmp/sluice-bench-xf.XXXXXX)
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
psrc -c "CREATE TABLE bench (id bigint PRIMARY KEY, v int NOT NULL, s text NOT NULL, n numeric(12,2), ts timestamptz NOT NULL DEFAULT now())"
psrc -c "ALTER TABLE bench REPLICA IDENTITY FULL"

TRANSFORMS='transforms:
  - filter:
      where: "v >= 100"
  - mask:
      columns: [s]
      with: sha256
      salt: bench
  - rename:
      to: "analytics.{table}"'

pipeline() { # name sink-body transforms pushdown
  cat > "$WORK/$1.yaml" <<YAML
version: 1
name: $1
source:
  type: postgres
  url: $SRC
  pushdown: $4
tables:
  include: ["public.bench"]
snapshot:
  mode: never
sink:
$2
checkpoint:
  path: $WORK/state-$1
$3
YAML
  echo "$WORK/$1.yaml"
}

jsonl() { printf '  type: files\n  format: jsonl\n  path: %s' "$WORK/out-$1"; }
declare -A P
P[plain_bh]=$(pipeline plain_bh "  type: blackhole" "" false)
P[xf_bh]=$(pipeline xf_bh "  type: blackhole" "$TRANSFORMS" false)
P[plain_jsonl]=$(pipeline plain_jsonl "$(jsonl plain)" "" false)
P[xf_jsonl]=$(pipeline xf_jsonl "$(jsonl xf)" "$TRANSFORMS" false)
P[xfpush_jsonl]=$(pipeline xfpush_jsonl "$(jsonl xfpush)" "$TRANSFORMS" true)
ORDER="plain_bh xf_bh plain_jsonl xf_jsonl xfpush_jsonl"
# Each pipeline creates its slot and publication before the load.
for n in $ORDER; do SLUICE_LOG=warn "$SLUICE" run "${P[$n]}" --until-caught-up 2>/dev/null; done

: > "$RESULTS"
printf '%-12s %-34s %9s %12s %9s\n' workload consumer seconds rows/s vs_plain | tee -a "$RESULTS"
PER_TX=$((ROWS / TXS))
psrc -c "DO \$\$ BEGIN FOR t IN 0..$((TXS - 1)) LOOP
  INSERT INTO bench (id, v, s, n) SELECT g, g % 1000, 'row ' || g, g * 0.01 FROM generate_series(t * $PER_TX + 1, (t + 1) * $PER_TX) g;
  COMMIT; END LOOP; END \$\$"
psrc -c "SELECT pg_switch_wal()" >/dev/null

declare -A RATE
measure() { # workload rows
  local n t0 t1 base label
  for n in $ORDER; do
    t0=$(now)
    SLUICE_LOG=warn "$SLUICE" run "${P[$n]}" --until-caught-up 2> "$WORK/$n.log"
    t1=$(now)
    RATE[$n]=$(python3 -c "print($2/($t1-$t0))")
    case $n in
      plain_*) base="" ;;
      xf*_bh) base=${RATE[plain_bh]} ;;
      *) base=${RATE[plain_jsonl]} ;;
    esac
    case $n in
      plain_bh) label="sluice → blackhole" ;;
      xf_bh) label="sluice + transforms → blackhole" ;;
      plain_jsonl) label="sluice → jsonl" ;;
      xf_jsonl) label="sluice + transforms → jsonl" ;;
      xfpush_jsonl) label="  (filter pushed down) → jsonl" ;;
    esac
    report "$1" "$label" "$t0" "$t1" "$2" "$base"
  done
}
measure inserts "$ROWS"
kept=$(cat "$WORK"/out-xf/*/*.jsonl | wc -l)

# Updates with whole old rows (REPLICA IDENTITY FULL): the filter tests old
# and new row of every update.
psrc -c "DO \$\$ BEGIN FOR t IN 0..$((TXS - 1)) LOOP
  UPDATE bench SET v = (v + 7) % 1000 WHERE id BETWEEN t * $PER_TX + 1 AND (t + 1) * $PER_TX;
  COMMIT; END LOOP; END \$\$"
psrc -c "SELECT pg_switch_wal()" >/dev/null
measure updates "$ROWS"
echo "(inserts: the transformed runs keep $kept of $ROWS rows, the filter drops v < 100; updates move rows in and out)"
