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
