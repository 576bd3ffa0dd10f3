#!/usr/bin/env bash
# Delivery soak (issue #13, "Delivery under stress"), on a throwaway cluster with one
# destination of each kind (CleverTap, mParticle, Braze), each at its own stand-in
# (test/standin) over HTTP.
#
# For SOAK_S seconds, DRIVERS concurrent psql sessions ingest add_members /
# remove_members pages of random members into COHORTS cohorts (bench/soak_prep.sql,
# bench.drive: through cohortsync.ingest, one transaction per page). At fixed fractions of
# the run every stand-in, all at once:
#   at 15%  answers 503 to everything for 120 s x SOAK_S/900 (an outage),
#   at 45%  answers 429 for 90 s x SOAK_S/900, with Retry-After: RETRY_AFTER (mParticle and
#           Braze; CleverTap's stand-in, like CleverTap, sends none),
#   at 75%  answers 503 while its stored records are copied (they live in its memory),
#           then is stopped (SIGTERM) for STOP_S x SOAK_S/900 s and started again on its port.
# Then the faults are cleared, ingest stops, and the queue drains. Printed per kind:
#   - changes made; records expected (what the outbox received, counted by a trigger on
#     it); destination_stats delivered + failed + what is still pending; records the
#     stand-in accepted (sum of its --log lines across restarts); and, per record, how many
#     arrived exactly once, twice or more, or not at all (the stand-ins' stored copies,
#     fetched before each stop and after the drain, against membership_changes);
#   - the requests each stand-in saw, in the whole run and in each fault window, and the
#     worker's CPU in each;
#   - the delivery worker's RSS, private memory and open file descriptors (from /proc)
#     at the start, the middle and the end;
#   - the outbox's size after the drain, and once the worker has truncated it.
#
# Knobs: SOAK_S (900), COHORTS (40), DRIVERS (ingest sessions: 3), PAGE (members drawn per
# page: 100), POOL (distinct members shared by all cohorts: 20000), PAUSE (s between a
# driver's pages: 0.2), RETRY_AFTER (s: 5), STOP_S (at full length: 30), DRAIN_MAX (s to
# wait for the drain: 900), SAMPLE_S (s between /proc samples: 5). Below SOAK_S=300 the
# windows after the restart can outlast the ingest, which then shows as the run's length.
#
#   SOAK_S=300 bench/soak.sh            # about 6 minutes
source "$(dirname "$0")/../scripts/lib.sh"

SOAK_S=${SOAK_S:-900}
COHORTS=${COHORTS:-40}
DRIVERS=${DRIVERS:-3}
PAGE=${PAGE:-100}
POOL=${POOL:-20000}
PAUSE=${PAUSE:-0.2}
RETRY_AFTER=${RETRY_AFTER:-5}
STOP_S=${STOP_S:-30}
DRAIN_MAX=${DRAIN_MAX:-900}
SAMPLE_S=${SAMPLE_S:-5}
HZ=$(getconf CLK_TCK)
KINDS=(clevertap mparticle braze)
SECRET=soak-cs-secret   # contains the marker test/scan_logs.py looks for
scaled() { awk -v s="$1" -v n="$SOAK_S" 'BEGIN {v = s * n / 900; printf "%d", v < 3 ? 3 : v}'; }
at_fraction() { awk -v f="$1" -v n="$SOAK_S" 'BEGIN {printf "%d", f * n}'; }

cs_install_deps
cs_build
cs_workdir
cs_tmp_install

# --- the stand-ins: one per kind, restartable on their port ------------------------------
declare -A STANDIN_PID STANDIN_PORT
DUMPS=0
soak_cleanup() {
  local rc=$?
  for k in "${KINDS[@]}"; do
    [ -n "${STANDIN_PID[$k]:-}" ] && { kill "${STANDIN_PID[$k]}" 2>/dev/null || true; }
  done
  [ -n "${SAMPLER_PID:-}" ] && { kill "$SAMPLER_PID" 2>/dev/null || true; }
  wait 2>/dev/null || true
  (exit $rc); cs_cleanup
}
trap soak_cleanup EXIT

standin_start() {  # KIND [PORT]
  local k=$1 port=${2:-0}
  rm -f "$CS_WORK/$k.port"
  python3 "$CS_TOP/test/standin/${k}_standin.py" --port "$port" --port-file "$CS_WORK/$k.port" \
    --account SOAK-ACC --passcode "$SECRET" --log "$CS_WORK/$k.log" >>"$CS_WORK/$k.out" 2>&1 &
  STANDIN_PID[$k]=$!
  for _ in $(seq 100); do [ -s "$CS_WORK/$k.port" ] && break; sleep 0.05; done
  [ -s "$CS_WORK/$k.port" ] || { echo "stand-in $k did not start" >&2; exit 1; }
  STANDIN_PORT[$k]=$(cat "$CS_WORK/$k.port")
}
standin_url() { echo "http://127.0.0.1:${STANDIN_PORT[$1]}"; }
control() {  # KIND JSON
  curl -sf -X POST -H 'Content-Type: application/json' -d "$2" "$(standin_url "$1")/_control" >/dev/null
}
control_all() { for k in "${KINDS[@]}"; do control "$k" "$1"; done; }
# The CleverTap stand-in sends no Retry-After (CleverTap documents none); the others do.
retry_after_all() { control mparticle "{\"retry_after\": $1}"; control braze "{\"retry_after\": $1}"; }
# Keep a copy of what a stand-in stored: its records live in its memory only.
standin_dump() {  # KIND
  DUMPS=$((DUMPS + 1))
  curl -sf --max-time 300 "$(standin_url "$1")/_records" >"$CS_WORK/$1-records-$DUMPS.json"
}
# Stop a stand-in. Copy its records first, while it answers 503 to everything, so that
# nothing is accepted between the copy and its exit.
standin_stop() {  # KIND
  kill "${STANDIN_PID[$1]}"; wait "${STANDIN_PID[$1]}" 2>/dev/null || true
  STANDIN_PID[$1]=""
}

for k in "${KINDS[@]}"; do standin_start "$k"; done

cs_start_cluster <<'EOF'
shared_buffers = 256MB
max_wal_size = 4GB
cohortsync.poll_interval = '500ms'
EOF
export PGDATABASE=postgres
cs_psql -c "CREATE EXTENSION cohortsync"
cs_psql -v secret="$SECRET" -v ct_url="$(standin_url clevertap)" -v mp_url="$(standin_url mparticle)" \
  -v bz_url="$(standin_url braze)" -f "$CS_TOP/bench/soak_prep.sql" >/dev/null
q() { cs_as_user psql -X -qAt -v ON_ERROR_STOP=1 -F ' ' -c "$1"; }

WORKER_PID=$(q "SELECT pid FROM pg_stat_activity WHERE backend_type = 'cohortsync delivery'")
[ -n "$WORKER_PID" ] || { echo "no delivery worker in pg_stat_activity" >&2; exit 1; }
cs_log "delivery worker pid $WORKER_PID; stand-ins on ports ${STANDIN_PORT[*]}"
ticks() { awk '{print $14 + $15}' "/proc/$WORKER_PID/stat"; }
now() { date +%s.%N; }

# --- samples of the worker's memory and file descriptors ---------------------------------
sampler() {
  while kill -0 "$WORKER_PID" 2>/dev/null; do
    awk -v t="$(now)" -v fds="$(ls "/proc/$WORKER_PID/fd" | wc -l)" \
        '$1 == "VmRSS:" {r = $2} $1 == "RssAnon:" {a = $2} $1 == "RssShmem:" {s = $2} END {print t, r, a, fds, s}' \
        "/proc/$WORKER_PID/status" >>"$CS_WORK/samples.txt"
    sleep "$SAMPLE_S"
  done
}
: >"$CS_WORK/samples.txt"
sampler &
SAMPLER_PID=$!

# --- the run: ingest drivers, and the faults on a schedule -------------------------------
: >"$CS_WORK/windows.txt"
window_open() { W_START=$(now); W_TICKS=$(ticks); }
window_close() { echo "$1 $W_START $(now) $W_TICKS $(ticks)" >>"$CS_WORK/windows.txt"; }
T0=$(date +%s)
sleep_until() { local d=$((T0 + $1 - $(date +%s))); [ "$d" -gt 0 ] && sleep "$d"; return 0; }

STOP_AT=$((T0 + SOAK_S))
cs_log "soak: ${SOAK_S}s, $COHORTS cohorts, $DRIVERS drivers x pages of $PAGE (pause ${PAUSE}s)"
driver_pids=()
for d in $(seq 0 $((DRIVERS - 1))); do
  cs_psql -c "CALL bench.drive($d, $DRIVERS, $COHORTS, $PAGE, $POOL, $PAUSE, $STOP_AT)" &
  driver_pids+=($!)
done
RUN_START=$(now); RUN_TICKS=$(ticks)

OUTAGE_S=$(scaled 120); R429_S=$(scaled 90); DOWN_S=$(scaled "$STOP_S")
sleep_until "$(at_fraction 0.15)"
cs_log "503 outage for ${OUTAGE_S}s"
control_all '{"status_all": 503}'; window_open
sleep "$OUTAGE_S"
control_all '{"status_all": null}'; window_close "503-outage"

sleep_until "$(at_fraction 0.45)"
cs_log "429 with Retry-After: $RETRY_AFTER for ${R429_S}s"
retry_after_all "$RETRY_AFTER"; control_all '{"status_all": 429}'; window_open
sleep "$R429_S"
control_all '{"status_all": null}'; retry_after_all 1; window_close "429-retry-after"

sleep_until "$(at_fraction 0.75)"
cs_log "stand-ins stopped for ${DOWN_S}s"
window_open
control_all '{"status_all": 503}'
for k in "${KINDS[@]}"; do standin_dump "$k"; done
window_close "503-records-copied"
window_open
for k in "${KINDS[@]}"; do standin_stop "$k"; done
sleep "$DOWN_S"
for k in "${KINDS[@]}"; do standin_start "$k" "${STANDIN_PORT[$k]}"; done
window_close "stopped"
# the first requests after the restart: how soon the worker comes back
window_open; sleep 30; window_close "30s-after-restart"

wait "${driver_pids[@]}"
echo "run $RUN_START $(now) $RUN_TICKS $(ticks)" >>"$CS_WORK/windows.txt"

# --- the drain ---------------------------------------------------------------------------
cs_log "ingest done; waiting for the queue to drain"
window_open
deadline=$(( $(date +%s) + DRAIN_MAX ))
until [ "$(q "SELECT count(*) FROM cohortsync.outbox")" = 0 ] \
      && [ "$(q "SELECT coalesce(sum(in_flight), 0) FROM cohortsync.destination_status")" = 0 ]; do
  if [ "$(date +%s)" -gt "$deadline" ]; then
    cs_log "not drained after ${DRAIN_MAX}s"; q "SELECT name, pending, in_flight, reason FROM cohortsync.destination_status"
    break
  fi
  sleep 1
done
window_close "drain"
DRAIN_S=$(awk '$1 == "drain" {printf "%.0f", $3 - $2}' "$CS_WORK/windows.txt")
outbox_size() { q "SELECT pg_size_pretty(pg_relation_size('cohortsync.outbox')) || ' heap, '
                          || pg_size_pretty(pg_indexes_size('cohortsync.outbox')) || ' indexes, '
                          || pg_size_pretty(pg_total_relation_size('cohortsync.outbox')) || ' total'"; }
size_drained=$(outbox_size)
sleep 15   # the worker truncates a drained outbox when it has nothing in flight
size_later=$(outbox_size)
for k in "${KINDS[@]}"; do standin_dump "$k"; done
sleep "$SAMPLE_S"   # one more sample of the worker, at rest

# --- the tables --------------------------------------------------------------------------
q "SELECT d.kind, d.name,
          (SELECT count(*) FROM cohortsync.membership_changes),
          (SELECT coalesce(sum(n), 0) FROM bench.queued x WHERE x.destination = d.name),
          coalesce(s.delivered, 0), coalesce(s.failed, 0),
          (SELECT count(*) FROM cohortsync.outbox o WHERE o.destination = d.name)
     FROM cohortsync.destinations d LEFT JOIN cohortsync.destination_stats s ON s.destination = d.name
    ORDER BY array_position(ARRAY['clevertap', 'mparticle', 'braze'], d.kind::text)" >"$CS_WORK/kinds.txt"
cs_as_user psql -X -qAt -F $'\t' -c "SELECT distinct_id, name, added FROM bench.expected" >"$CS_WORK/expected.tsv"
pages=$(q "SELECT count(*) || ' pages (' || count(*) FILTER (WHERE error IS NOT NULL) || ' refused), '
              || coalesce(string_agg(DISTINCT status, '/'), '-') || ' answers' FROM bench.pages")
failed_recs=$(q "SELECT count(*) FROM cohortsync.failed_records")

echo
echo "Command: SOAK_S=$SOAK_S COHORTS=$COHORTS DRIVERS=$DRIVERS PAGE=$PAGE POOL=$POOL PAUSE=$PAUSE RETRY_AFTER=$RETRY_AFTER STOP_S=$STOP_S bench/soak.sh"
echo "Machine: $(nproc) cores; PostgreSQL $("$CS_BIN/postgres" --version | awk '{print $3}'); commit $(git -C "$CS_TOP" rev-parse --short HEAD); $(date -u '+%F %H:%M UTC'); load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "Ingest: $pages; faults at 15% (503, ${OUTAGE_S}s), 45% (429, ${R429_S}s), 75% (stopped, ${DOWN_S}s); drain after ingest: ${DRAIN_S}s"
echo
python3 "$CS_TOP/bench/soak_report.py" "$CS_WORK" "$HZ"
echo
echo "failed_records: $failed_recs"
echo "Outbox after the drain: $size_drained; 15 s later: $size_later"
q "SELECT name, state, requests, consecutive_failures, coalesce(reason, '-') FROM cohortsync.destination_status ORDER BY name"
