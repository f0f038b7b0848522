#!/usr/bin/env bash
# Kafka sink throughput: ROWS inserts (in 50 transactions) from Postgres into
# Kafka (tansu 0.6.0, in-memory storage) with zstd, per format (json,
# json_schema, avro through bench/registry.py, a schema-registry stand-in), against the
# same backlog into the blackhole sink, in the same run. Slots are created
# before the load; each run is `sluice run --until-caught-up` (process start
# and the final checkpoint included). Every Kafka run is checked: the broker
# must have acknowledged exactly ROWS messages (the final checkpoint waits for
# every delivery report). The end-to-end read-back is in tests/cases/kafka.rs.
#
# Usage: bench/kafka.sh [ROWS]   (default 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-1000000}
TXS=50
PER_TX=$((ROWS / TXS))
WORK=$(mktemp -d /tmp/sluice-bench-kafka.XXXXXX)
chmod 755 "$WORK"
SLUICE=$PWD/target/release/sluice
TANSU=${SLUICE_TANSU:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice/tansu-0.6.0/bin/tansu}
[ -x "$TANSU" ] || { echo "tansu not found at $TANSU (bash .ci/run installs it)"; exit 1; }
cargo build --release --quiet

# shellcheck source=bench/common.sh
. bench/common.sh
start_cluster pg
PORT=$PORT_pg
KPORT=$(free_port)
mkdir -p "$WORK/kafka"
(cd "$WORK/kafka" && exec env -i PATH="$PATH" "$TANSU" broker --listener-url "tcp://127.0.0.1:$KPORT" \
  --advertised-listener-url "tcp://127.0.0.1:$KPORT" --storage-engine memory://tansu/ >/dev/null 2>"$WORK/kafka/log") &
TANSU_PID=$!
RPORT=$(free_port)
python3 bench/registry.py "$RPORT" &
REG_PID=$!
cleanup() {
  kill "$TANSU_PID" "$REG_PID" 2>/dev/null || true
  stop_clusters
}
trap cleanup EXIT
SRC="postgresql://postgres@127.0.0.1:$PORT/postgres"
psrc() { psql -X -q -v ON_ERROR_STOP=1 -At "$SRC" "$@"; }
export PGOPTIONS='-c client_min_messages=warning'
psrc -c "CREATE TABLE bench (id bigint PRIMARY KEY, v int NOT NULL, s text NOT NULL, n numeric(12,2), ts timestamptz NOT NULL DEFAULT now())" \
  -c "CREATE PUBLICATION bench_pub FOR TABLE bench"

pipeline() { # name sink-body
  cat > "$WORK/$1.yaml" <<YAML
version: 1
name: $1
source:
  type: postgres
  url: $SRC
  slot: sl_$1
  publication: bench_pub
tables:
  include: ["public.bench"]
snapshot:
  mode: never
sink:
$2
checkpoint:
  path: $WORK/state-$1
YAML
  echo "$WORK/$1.yaml"
}
kafka_sink() { # format topic-prefix
  printf '  type: kafka\n  brokers: 127.0.0.1:%s\n  topic: "%s.{schema}.{table}"\n  format: %s\n  schema_registry: http://127.0.0.1:%s\n  partitions: 4\n  producer:\n    compression.type: zstd\n    linger.ms: 20\n' "$KPORT" "$2" "$1" "$RPORT"
}
NAMES=(bh json jsonschema avro)
declare -A BODY=([bh]="  type: blackhole" [json]="$(kafka_sink json kj)" [jsonschema]="$(kafka_sink json_schema ks)" [avro]="$(kafka_sink avro ka)")
for n in "${NAMES[@]}"; do
  psrc -c "SELECT pg_create_logical_replication_slot('sl_$n', 'pgoutput')" >/dev/null
done
psrc -c "DO \$\$ BEGIN FOR t IN 0..$((TXS - 1)) LOOP
  INSERT INTO bench (id, v, s, n) SELECT g, g % 1000, 'row ' || g, g * 0.01 FROM generate_series(t * $PER_TX + 1, (t + 1) * $PER_TX) g;
  COMMIT; END LOOP; END \$\$"

printf '%-12s %9s %12s %8s\n' sink seconds rows_per_s vs_bh
base=""
for n in "${NAMES[@]}"; do
  p=$(pipeline "$n" "${BODY[$n]}")
  t0=$(now)
  if [ -n "${BENCH_PERF:-}" ] && [ "$n" = "$BENCH_PERF" ]; then
    perf record -F 999 -g -o /tmp/sluice-kafka.perf -- "$SLUICE" run "$p" --until-caught-up 2>"$WORK/$n.log" || { cat "$WORK/$n.log"; exit 1; }
  else
    "$SLUICE" run "$p" --until-caught-up 2>"$WORK/$n.log" || { cat "$WORK/$n.log"; exit 1; }
  fi
  t1=$(now)
  rate=$(python3 -c "print($ROWS/($t1-$t0))")
  [ -z "$base" ] && base=$rate
  if [ "$n" != bh ]; then
    produced=$(grep -o '[0-9]* messages produced' "$WORK/$n.log" | awk '{print $1}')
    [ "$produced" = "$ROWS" ] || { echo "$n: $produced messages produced, want $ROWS"; cat "$WORK/$n.log"; exit 1; }
  fi
  python3 -c "print(f'{\"$n\":<12} {$t1-$t0:9.2f} {$rate:12.0f} {$rate/$base:7.2f}x')"
done
