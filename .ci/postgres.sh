# shellcheck shell=bash
# A throwaway PostgreSQL server for the production-instance tests, sourced by .ci/run:
#   ci_postgres_start   initialise a cluster in a temp dir and start it on 127.0.0.1 and a free port
#                       (as `nobody` when running as root: PostgreSQL refuses to run as root), then
#                       export SEGMENT_PIPELINE_TEST_POSTGRES_URL for the tests and stop the server by
#                       its own pid when the calling script exits, also on failure or Ctrl-C.
# Without PostgreSQL's server programs it explains and returns 0: the tests then skip, or fail
# under CI=true. The server programs are found on PATH, through pg_config, or in Debian's
# /usr/lib/postgresql/<version>/bin (newest first); .ci/system-packages installs them.

ci_pg_bindir() {
  local dir candidates=()
  if command -v initdb >/dev/null 2>&1; then candidates+=("$(dirname "$(readlink -f "$(command -v initdb)")")"); fi
  if command -v pg_config >/dev/null 2>&1; then candidates+=("$(pg_config --bindir 2>/dev/null)"); fi
  if [ -d /usr/lib/postgresql ]; then
    while IFS= read -r dir; do candidates+=("$dir"); done < <(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5,5 -rn)
  fi
  for dir in "${candidates[@]}"; do
    if [ -x "$dir/initdb" ] && [ -x "$dir/postgres" ] && [ -x "$dir/pg_isready" ]; then echo "$dir"; return 0; fi
  done
  return 1
}

ci_postgres_stop() {
  if [ -n "${CI_PG_PID:-}" ] && kill -0 "$CI_PG_PID" 2>/dev/null; then
    kill -INT "$CI_PG_PID" 2>/dev/null || true  # fast shutdown
    for _ in $(seq 1 120); do kill -0 "$CI_PG_PID" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$CI_PG_PID" 2>/dev/null || true
  fi
  CI_PG_PID=""
  if [ -n "${CI_PG_DIR:-}" ]; then rm -rf "$CI_PG_DIR"; CI_PG_DIR=""; fi
}

ci_postgres_start() {
  local bindir as_user=() started password port attempt
  started=$(date +%s.%N)
  if ! bindir=$(ci_pg_bindir); then
    echo "ci: PostgreSQL's server (initdb, postgres) not found; the production-instance tests skip (fail under CI=true)"
    return 0
  fi
  CI_PG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/segment-pipeline-ci-pg.XXXXXX")
  trap ci_postgres_stop EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  if [ "$(id -u)" = "0" ]; then
    chown nobody: "$CI_PG_DIR"
    as_user=(setpriv --reuid="$(id -u nobody)" --regid="$(id -g nobody)" --clear-groups env HOME="$CI_PG_DIR")
  fi
  password=$(python3 -c 'import secrets; print(secrets.token_urlsafe(18))')
  (umask 077 && printf '%s\n' "$password" > "$CI_PG_DIR/pwfile")
  if [ "$(id -u)" = "0" ]; then chown nobody: "$CI_PG_DIR/pwfile"; fi
  (cd "$CI_PG_DIR" && "${as_user[@]}" "$bindir/initdb" -D "$CI_PG_DIR/data" -U segment_pipeline \
    --pwfile "$CI_PG_DIR/pwfile" --auth=scram-sha-256 -E UTF8 --locale=C --no-sync >"$CI_PG_DIR/initdb.log" 2>&1) \
    || { cat "$CI_PG_DIR/initdb.log" >&2; echo "ci: initdb failed" >&2; return 1; }
  rm -f "$CI_PG_DIR/pwfile"
  for attempt in 1 2 3 4 5; do
    port=$(python3 -c 'from segment_pipeline_tests.waiting import free_port; print(free_port())')
    # exec'd (setpriv does not fork): $! is the postmaster's own pid
    (cd "$CI_PG_DIR" && exec "${as_user[@]}" "$bindir/postgres" -D "$CI_PG_DIR/data" -h 127.0.0.1 -p "$port" \
      -k "$CI_PG_DIR" -c fsync=off -c synchronous_commit=off -c full_page_writes=off) >"$CI_PG_DIR/server.log" 2>&1 &
    CI_PG_PID=$!
    for _ in $(seq 1 600); do
      kill -0 "$CI_PG_PID" 2>/dev/null || break
      "$bindir/pg_isready" -q -h 127.0.0.1 -p "$port" && break
      sleep 0.1
    done
    if kill -0 "$CI_PG_PID" 2>/dev/null && "$bindir/pg_isready" -q -h 127.0.0.1 -p "$port"; then
      export SEGMENT_PIPELINE_TEST_POSTGRES_URL="postgresql://segment_pipeline:${password}@127.0.0.1:${port}/postgres"
      echo "ci: PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') ready on 127.0.0.1:$port" \
        "(pid $CI_PG_PID) in $(python3 -c "import time; print(f'{time.time() - $started:.1f}')")s"
      return 0
    fi
    if grep -qi "already in use" "$CI_PG_DIR/server.log" && [ "$attempt" -lt 5 ]; then
      ci_postgres_stop_server_only
      continue
    fi
    cat "$CI_PG_DIR/server.log" >&2
    echo "ci: PostgreSQL did not start" >&2
    return 1
  done
}

ci_postgres_stop_server_only() {
  if [ -n "${CI_PG_PID:-}" ]; then
    kill -KILL "$CI_PG_PID" 2>/dev/null || true
    wait "$CI_PG_PID" 2>/dev/null || true
  fi
  CI_PG_PID=""
}
