#!/usr/bin/env bash
# Kafka sink throughput: ROWS inserts (in 50 transactions) from Postgres into
# Kafka (tansu 0.6.0, in-memory storage) with zstd, per format (json,
# json_schema, avro through bench/registry.py, a schema-registry stand-in), against the
# same backlog into the blackhole sink, in the same run. Slots are created
# before the load (two per sink); each run is `sluice run --until-caught-up`
# (process start and the final checkpoint included), twice per sink in the
# order A B … B A, best sample kept, each into its own topics. Every Kafka
# sample is checked by reading its topics back (bench/kafka_count.py, with
# kafka-python from PyPI in a cached venv; committed records only): exactly
# ROWS change records. The blackhole has no output: its count is the one
# sluice reports.
#
# Usage: bench/kafka.sh [ROWS]   (default 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-1000000}
TXS=50
PER_TX=$((ROWS / TXS))
WORK=$(mktemp -d /tmp/sluice-bench-kafka.XXXXXX)
chmod 755 "$WORK"
SLUICE=${SLUICE_BIN:-$PWD/target/release/sluice}  # SLUICE_BIN: compare another build
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

KAFKA_VENV=${XDG_CACHE_HOME:-$HOME/.cache}/sluice/kafka-python-3.0.12
if [ ! -x "$KAFKA_VENV/bin/python" ]; then
  python3 -m venv "$KAFKA_VENV" && "$KAFKA_VENV/bin/pip" install -q kafka-python==3.0.12 zstandard==0.25.0
fi

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
declare -A FORMAT=([json]=json [jsonschema]=json_schema [avro]=avro)
body() { # name sample
  if [ "$1" = bh ]; then echo "  type: blackhole"; else kafka_sink "${FORMAT[$1]}" "k$1$2"; fi
}
for n in "${NAMES[@]}"; do
  for i in 1 2; do
    psrc -c "SELECT pg_create_logical_replication_slot('sl_$n$i', 'pgoutput')" >/dev/null
  done
done
psrc -c "DO \$\$ BEGIN FOR t IN 0..$((TXS - 1)) LOOP
  INSERT INTO bench (id, v, s, n) SELECT g, g % 1000, 'row ' || g, g * 0.01 FROM generate_series(t * $PER_TX + 1, (t + 1) * $PER_TX) g;
  COMMIT; END LOOP; END \$\$"

EXPECTED=$ROWS
consumer() { # name sample
  local n=$1 i=$2 p
  p=$(pipeline "$n$i" "$(body "$n" "$i")")
  if [ -n "${BENCH_PERF:-}" ] && [ "$n" = "$BENCH_PERF" ]; then
    timed perf record -F 999 -g -o /tmp/sluice-kafka.perf -- "$SLUICE" run "$p" --until-caught-up 2>"$WORK/$n$i.log" || { cat "$WORK/$n$i.log"; exit 1; }
  else
    timed "$SLUICE" run "$p" --until-caught-up 2>"$WORK/$n$i.log" || { cat "$WORK/$n$i.log"; exit 1; }
  fi
  RSS=$(sluice_rss "$WORK/$n$i.log")
  if [ "$n" = bh ]; then
    DELIVERED=$(grep -o 'caught up: [0-9]* events' "$WORK/$n$i.log" | awk '{print $3}' || true)
  else
    DELIVERED=$("$KAFKA_VENV/bin/python" bench/kafka_count.py "127.0.0.1:$KPORT" "k$n$i.")
  fi
}
sink_bh() { consumer bh "$1"; }
sink_json() { consumer json "$1"; }
sink_jsonschema() { consumer jsonschema "$1"; }
sink_avro() { consumer avro "$1"; }
abba sink_bh sink_json sink_jsonschema sink_avro
printf '%-12s %9s %12s %8s %7s  %s\n' sink seconds rows_per_s vs_bh rss_MB samples
for n in "${NAMES[@]}"; do
  printf '%-12s %9.2f %12.0f %8s %7s  %s\n' "$n" "${BEST[sink_$n]}" "$(best_rate "sink_$n")" \
    "$(ratio "sink_$n" sink_bh)" "${BEST_RSS[sink_$n]}" "${SAMPLES[sink_$n]}"
done
echo "(best of two samples per sink, run in the order A B … B A; Kafka counts read back from the topics)"
