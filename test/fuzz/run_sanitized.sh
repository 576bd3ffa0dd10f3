#!/usr/bin/env bash
# Run the fuzzers against a server under valgrind (memcheck); not part of CI.
#
#   test/fuzz/run_sanitized.sh            1,000 SQL cases, 500 HTTP bodies, the protocol cases
#   SQL_CASES=20000 HTTP_CASES=5000 FUZZ_SEED=x test/fuzz/run_sanitized.sh
#
# Every server process runs under valgrind (--trace-children=yes; jit off, which
# valgrind makes crawl), the extension built with -O0 -g. Errors whose stack goes through cohortsync.so or libmicrohttpd
# are reported; PostgreSQL's own are left out (it is not built with USE_VALGRIND, so
# its memory contexts are opaque to memcheck and it reports false positives). So this
# finds invalid reads and writes of malloc'd memory (libmicrohttpd's buffers, libc),
# uses of uninitialised values and wild accesses; an overrun inside a palloc'd block
# goes unseen.
#
# Why not AddressSanitizer: with libasan preloaded (gcc 12's or clang 14's), the
# server binary of Debian's postgresql-15 hangs at start (even "postgres -V").
#
# Exit status 1 when a fuzzer failed or valgrind reported an error in our code;
# KEEP=1 keeps the logs.
source "$(dirname "$0")/../../scripts/lib.sh"

SQL_CASES=${SQL_CASES:-1000}
HTTP_CASES=${HTTP_CASES:-500}
SEED=${FUZZ_SEED:-cohortsync-valgrind}

cs_install_deps
if ! command -v valgrind >/dev/null; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo apt-get install -y -qq valgrind >/dev/null
fi
cs_build
cs_workdir
cs_tmp_install
cp -a "$CS_TOP/test/fuzz" "$CS_WORK/fuzz"
[ "$(id -u)" -eq 0 ] && chown -R "$CS_OS_USER" "$CS_WORK/fuzz"

cs_log "building cohortsync with -O0 -g for valgrind"
mkdir -p "$CS_WORK/vg-src"
cp -a "$CS_TOP/Makefile" "$CS_TOP/cohortsync.control" "$CS_TOP/src" "$CS_TOP/sql" "$CS_WORK/vg-src/"
rm -f "$CS_WORK"/vg-src/src/*.o "$CS_WORK"/vg-src/src/*.bc "$CS_WORK"/vg-src/*.so
make -s -C "$CS_WORK/vg-src" PG_CONFIG="$(cs_pg_config)" with_llvm=no \
  PG_CFLAGS='-O0 -g -fno-omit-frame-pointer -Wno-unused-parameter' >/dev/null
make -s -C "$CS_WORK/vg-src" PG_CONFIG="$CS_BIN/pg_config" with_llvm=no install >/dev/null

# make the cluster, then start its postmaster again under valgrind
HTTP_PORT=$(cs_free_port)
cs_start_cluster <<CONF
cohortsync.http_listen = '127.0.0.1:$HTTP_PORT'
cohortsync.http_require_auth = off
cohortsync.http_log_level = 'debug1'
jit = off
CONF
cs_stop_cluster
mkdir -p "$CS_WORK/vg"
[ "$(id -u)" -eq 0 ] && chown "$CS_OS_USER" "$CS_WORK/vg"
cs_log "starting the server under valgrind"
cs_as_user valgrind --quiet --trace-children=yes --error-limit=no --num-callers=40 \
  --log-file="$CS_WORK/vg/%p.log" "$CS_BIN/postgres" -D "$CS_PGDATA" \
  >>"$CS_WORK/server.log" 2>&1 &
VG_PID=$!
for _ in $(seq 1 180); do
  cs_as_user pg_isready -q -h "$CS_SOCK" -p "$CS_PORT" && break
  sleep 1
done

cs_psql -d postgres -c "CREATE EXTENSION cohortsync" \
  -c "SELECT cohortsync.connect_clevertap('fz', 'ACC', 'PASS', 'eu1', 'http://127.0.0.1:9')" \
  -c "SELECT cohortsync.pause_destination('fz', 'fuzzing')" \
  -c "SELECT cohortsync.add_webhook_user('mixpanel', 'vg-horse')" >/dev/null
cs_psql -d postgres -f "$CS_WORK/fuzz/fuzz_case.sql" >/dev/null

rc=0
FUZZ="$CS_WORK/fuzz/fuzz.py"

cs_log "SQL: $SQL_CASES cases (seed $SEED)"
python3 "$FUZZ" sql --seed "$SEED" --cases "$SQL_CASES" --batch 50 |
  cs_as_user psql -X -At -v ON_ERROR_STOP=1 -d postgres >"$CS_WORK/sql.out" || rc=1
awk '/^batch/ {a += $3; r += $4; i += $5} END {printf "accepted %d, rejected %d, not JSON %d\n", a, r, i}' "$CS_WORK/sql.out"
if grep -E '^-?[0-9]+\|[EWS]\|' "$CS_WORK/sql.out"; then rc=1; fi

# the listener needs a while to start under valgrind
for _ in $(seq 1 120); do
  curl -s -o /dev/null "http://127.0.0.1:$HTTP_PORT/healthz" && break
  sleep 1
done
cs_log "HTTP bodies: $HTTP_CASES cases"
python3 "$FUZZ" http --seed "$SEED" --cases "$HTTP_CASES" --port "$HTTP_PORT" --timeout 120 \
  --failures "$CS_WORK/failures" || rc=1

cs_log "HTTP protocol"
cs_psql -d postgres -c "ALTER SYSTEM SET cohortsync.http_require_auth = on" -c "SELECT pg_reload_conf()" >/dev/null
sleep 3
python3 "$FUZZ" proto --seed "$SEED" --cases 50 --port "$HTTP_PORT" --timeout 120 \
  --auth mixpanel:vg-horse --failures "$CS_WORK/failures" || rc=1

cs_as_user pg_ctl -D "$CS_PGDATA" -m fast -w -t 300 stop >/dev/null || true
wait "$VG_PID" 2>/dev/null || true
if grep -E 'terminated by signal|was terminated' "$CS_WORK/server.log"; then rc=1; fi
# An error report runs from "==PID== <message>" to the next "==PID== " line alone.
# Ours: cohortsync or libmicrohttpd among its three innermost frames. (PostgreSQL's
# own, e.g. WAL pages written with uninitialised padding at a commit the listener
# asked for, have our frames further down only; its valgrind.supp hides them.)
ours=$(awk '/^==[0-9]+== $/ { if (mine) print blk; blk = ""; n = 0; mine = 0; next }
            /^==[0-9]+== / { blk = blk $0 "\n"; n++
                             if (n <= 4 && $0 ~ /cohortsync\.so|libmicrohttpd|\/src\/[a-z_]+\.c:/) mine = 1 }' \
        "$CS_WORK"/vg/*.log)
if [ -n "$ours" ]; then
  cs_log "valgrind errors in cohortsync or libmicrohttpd:"
  printf '%s\n' "$ours"
  rc=1
else
  cs_log "no valgrind errors in cohortsync or libmicrohttpd ($(cat "$CS_WORK"/vg/*.log | grep -cE '^==[0-9]+== [A-Z]') report lines elsewhere)"
fi
if [ $rc -eq 0 ]; then cs_log "fuzz run under valgrind passed"; else cs_log "fuzz run under valgrind FAILED"; fi
exit $rc
