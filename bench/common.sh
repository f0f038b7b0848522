# Shared helpers for the benchmark scripts: throwaway Postgres clusters and
# the result table. Source it after setting WORK (a scratch directory).
# (bench/run.sh, replica.sh, kafka.sh and transforms.sh use it.)

BIN=$(pg_config --bindir 2>/dev/null || ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }

start_cluster() { # name -> sets PORT_<name>
  local name=$1 dir=$WORK/$1 port
  port=$(free_port)
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$dir"
  as_pg "$BIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C --no-sync >/dev/null
  cat >> "$dir/data/postgresql.conf" <<CONF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
wal_level = logical
max_wal_senders = 20
max_replication_slots = 20
max_logical_replication_workers = 8
shared_buffers = '512MB'
max_wal_size = '8GB'
synchronous_commit = off
fsync = off
full_page_writes = off
wal_retrieve_retry_interval = '100ms'
logical_decoding_work_mem = '64MB'
autovacuum = off
CONF
  as_pg "$BIN/pg_ctl" -D "$dir/data" -l "$dir/log" -w start >/dev/null
  eval "PORT_$name=$port"
}

stop_clusters() {
  for d in "$WORK"/*/data; do [ -d "$d" ] && as_pg "$BIN/pg_ctl" -D "$d" -m immediate stop >/dev/null 2>&1 || true; done
  rm -rf "$WORK"
}

report() { # workload consumer t0 t1 rows baseline-rate label
  python3 - "$@" <<'PY' | tee -a "$RESULTS"
import sys
w, c, t0, t1, rows, base = sys.argv[1:7]
secs = float(t1) - float(t0); rate = float(rows) / secs
vb = f"{rate/float(base):.2f}x" if base else "-"
print(f"{w:<12} {c:<34} {secs:9.2f} {rate:12.0f} {vb:>9}")
PY
}

# ---------------------------------------------------------------------------
# Fair comparisons. Every consumer of a workload is a shell function taking
# the sample number (1 or 2); it sets ELAPSED (seconds), DELIVERED (counted
# from the consumer's output or target, never from Sluice's own counters
# unless there is no output, as for the blackhole) and RSS (MB or "-").
# `abba F1 F2 ... Fn` runs F1..Fn, then Fn..F1 (A B B A), checks every
# sample delivered $EXPECTED, and keeps each consumer's best sample in
# BEST[F] / BEST_RSS[F]; SAMPLES[F] lists both.
declare -A BEST BEST_RSS SAMPLES
abba() {
  local fns=("$@") i
  for ((i = 0; i < ${#fns[@]}; i++)); do take_sample "${fns[i]}" 1; done
  for ((i = ${#fns[@]} - 1; i >= 0; i--)); do take_sample "${fns[i]}" 2; done
}
take_sample() { # fn n
  ELAPSED="" DELIVERED="" RSS="-"
  "$1" "$2"
  if [ "$DELIVERED" != "$EXPECTED" ]; then
    echo "bench: $1 (sample $2) delivered $DELIVERED, expected $EXPECTED" >&2
    exit 1
  fi
  SAMPLES[$1]="${SAMPLES[$1]:-}${SAMPLES[$1]:+ / }$(printf '%.2f' "$ELAPSED")"
  if [ -z "${BEST[$1]:-}" ] || python3 -c "import sys; sys.exit(0 if $ELAPSED < ${BEST[$1]} else 1)"; then
    BEST[$1]=$ELAPSED
    BEST_RSS[$1]=$RSS
  fi
}
reset_samples() { BEST=() BEST_RSS=() SAMPLES=(); }
# Time a command into ELAPSED.
# Returns the command's status, so `timed cmd || handle` works.
timed() { local t0 t1 rc=0; t0=$(now); "$@" || rc=$?; t1=$(now); ELAPSED=$(python3 -c "print($t1 - $t0)"); return $rc; }
# Print a failed consumer's log (the work dir is removed at exit) and stop.
failed() { echo "bench: $1 failed; its log:" >&2; tail -30 "$2" >&2; exit 1; }
# Peak RSS (MB) that sluice logged at exit.
sluice_rss() { grep -o 'peak RSS [0-9]*' "$1" | awk '{print $3}' | tail -1; }
# Rate of a consumer's best sample, and its ratio to a baseline consumer.
best_rate() { python3 -c "print($EXPECTED / ${BEST[$1]})"; }
ratio() { python3 -c "print(f'{${BEST[$2]} / ${BEST[$1]}:.2f}x')"; } # consumer baseline
# Block (one session, 5 ms polls) until a slot has confirmed LSN.
# Gives up after 10 minutes (a subscriber whose apply fails never gets there).
wait_slot() { # url slot lsn
  psql -X -q -At "$1" -c "DO \$\$ DECLARE deadline timestamptz := clock_timestamp() + interval '10 minutes'; BEGIN
    WHILE NOT coalesce((SELECT confirmed_flush_lsn >= '$3' FROM pg_replication_slots WHERE slot_name = '$2'), false)
    LOOP
      IF clock_timestamp() > deadline THEN RAISE EXCEPTION 'slot $2 did not reach $3 in 10 minutes'; END IF;
      PERFORM pg_sleep(0.005);
    END LOOP; END \$\$"
}
# Row count and checksum of a table (key column `id`), to compare copies.
table_checksum() { echo "SELECT count(*) || ':' || coalesce(md5(string_agg(b::text, ',' ORDER BY id)), '') FROM $1 b"; }
# One sample of Postgres's own subscription sub_${TAG}_N (the script defines
# psrc/pdst, TAG, END, RESET and EXPECTED): the subscriber's TABLES are reset
# to their state before the load, the subscription enabled and timed until
# its slot confirmed END, then every table is compared with the source's.
native_sample() { # n table...
  local n=$1 t src="" dst=""
  shift
  pdst -c "TRUNCATE $(IFS=,; echo "$*")" ${RESET:+-c "$RESET"}
  timed eval 'pdst -c "ALTER SUBSCRIPTION sub_${TAG}_$n ENABLE"; wait_slot "$SRC" "sub_${TAG}_$n" "$END"'
  pdst -c "ALTER SUBSCRIPTION sub_${TAG}_$n DISABLE"
  for t in "$@"; do
    src+=$(psrc -c "$(table_checksum "$t")") dst+=$(pdst -c "$(table_checksum "$t")")
  done
  [ "$src" = "$dst" ] && DELIVERED=$EXPECTED || DELIVERED="a table that differs from the source"
}
# Lines of the JSONL files a files sink wrote (its visible data files only).
jsonl_rows() { find "$1" -name '*.jsonl' -not -name '.*' -print0 | xargs -0 cat | wc -l; }
# Rows of the Parquet files a files sink wrote (its visible data files only),
# read back with DuckDB from PyPI (the venv .ci/run uses).
DUCKDB_VENV=${DUCKDB_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice/duckdb-2.0.1}
parquet_rows() { # dir
  if [ ! -x "$DUCKDB_VENV/bin/python" ]; then
    python3 -m venv "$DUCKDB_VENV" && "$DUCKDB_VENV/bin/pip" install -q duckdb==2.0.1 >&2
  fi
  "$DUCKDB_VENV/bin/python" - "$1" <<'PY'
import sys, glob, os, duckdb
files = [f for f in glob.glob(os.path.join(sys.argv[1], "**", "*.parquet"), recursive=True)
         if not os.path.basename(f).startswith(".")]
print(duckdb.sql(f"SELECT count(*) FROM read_parquet({files!r})").fetchall()[0][0] if files else 0)
PY
}
# Rows of the Arrow IPC files a files sink wrote (visible files only), read
# back with pyarrow from PyPI (a venv of its own; benchmarks only).
PYARROW_VENV=${PYARROW_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice/pyarrow-26.0.1}
arrow_rows() { # dir
  if [ ! -x "$PYARROW_VENV/bin/python" ]; then
    python3 -m venv "$PYARROW_VENV" && "$PYARROW_VENV/bin/pip" install -q pyarrow==26.0.1 >&2
  fi
  "$PYARROW_VENV/bin/python" - "$1" <<'PY'
import sys, glob, os, pyarrow.ipc as ipc
n = 0
for f in glob.glob(os.path.join(sys.argv[1], "**", "*.arrow"), recursive=True):
    if not os.path.basename(f).startswith("."):
        with ipc.open_file(f) as r:
            n += sum(r.get_batch(i).num_rows for i in range(r.num_record_batches))
print(n)
PY
}
