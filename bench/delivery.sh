#!/usr/bin/env bash
# Delivery benchmarks (issue #5, parts 3-5), on a throwaway cluster and the local
# CleverTap stand-in (test/standin), printing tables:
#
#  3. Throughput: records/s drained from a backlog (built while the destination is
#     paused: membership_changes rows -> outbox rows through the real trigger), timed
#     from resume_destination to the stand-in having accepted every record:
#     (a) stand-in answering at once, max_inflight 4 and 15; (b) stand-in answering
#     after 100 ms, max_inflight 15, against its ceiling max_inflight x 1000 / 0.1 s.
#     CPU% of the worker and of the stand-in during each drain shows which is the limit.
#     The backlog is ANALYZEd before the drain (fresh statistics, as autovacuum leaves
#     them shortly after a big insert). One more drain, of STALE_CHANGES changes, runs with
#     the statistics autovacuum can leave right after a drain (outbox analyzed while
#     empty but not truncated: relpages > 0, reltuples = 0), to show what they cost.
#  4. Latency: commit of a single-member add_members ingest -> the stand-in receiving
#     the request (its `_at`), p50 and p99.
#  5. Cost at rest: the worker's CPU while idle; its peak memory while draining a
#     1,000,000-record backlog; the outbox's size before/after the drain and after
#     autovacuum; anything holding back xmin.
#
# Each measurement is run RUNS times; tables show the median and the spread (min-max).
#
#   bench/delivery.sh                                  RUNS=5, the full sizes (< 10 min)
#   RUNS=3 THRU_CHANGES=20000 BACKLOG=100000 bench/delivery.sh      quicker
#
# Knobs: RUNS (5), THRU_CHANGES (changes per throughput run; 2 records each: 50000),
# BACKLOG (records of the at-rest backlog: 1000000), LAT_N (ingests per latency run: 200),
# LAT_GAP (s between them: 0.05), IDLE_S (seconds per idle sample: 6), STALE_CHANGES
# (changes of the stale-statistics drain, run once: 5000).
source "$(dirname "$0")/../scripts/lib.sh"

RUNS=${RUNS:-5}
THRU_CHANGES=${THRU_CHANGES:-50000}
BACKLOG=${BACKLOG:-1000000}
LAT_N=${LAT_N:-200}
LAT_GAP=${LAT_GAP:-0.05}
IDLE_S=${IDLE_S:-6}
STALE_CHANGES=${STALE_CHANGES:-5000}
HZ=$(getconf CLK_TCK)

cs_install_deps
cs_build
cs_workdir
cs_tmp_install

# --- the stand-in (run directly, as root; killed on exit) -----------------------------
STANDIN_PID=""
bench_cleanup() {
  local rc=$?
  if [ -n "$STANDIN_PID" ]; then kill "$STANDIN_PID" 2>/dev/null || true; wait "$STANDIN_PID" 2>/dev/null || true; fi
  (exit $rc); cs_cleanup
}
trap bench_cleanup EXIT
python3 "$CS_TOP/test/standin/clevertap_standin.py" --port 0 --port-file "$CS_WORK/standin.port" \
  --account BENCH-ACC --passcode bench-pass --log "$CS_WORK/standin.log" >"$CS_WORK/standin.out" 2>&1 &
STANDIN_PID=$!
for _ in $(seq 100); do [ -s "$CS_WORK/standin.port" ] && break; sleep 0.05; done
STANDIN_URL="http://127.0.0.1:$(cat "$CS_WORK/standin.port")"
standin() {  # METHOD PATH [JSON]
  if [ $# -ge 3 ]; then curl -sf -X "$1" -H 'Content-Type: application/json' -d "$3" "$STANDIN_URL$2"
  else curl -sf -X "$1" "$STANDIN_URL$2"; fi
}
standin_accepted() { standin GET /_stats | sed -n 's/.*"records_accepted":\([0-9]*\).*/\1/p'; }
standin_field() { standin GET /_stats | sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p"; }

cs_start_cluster <<'EOF'
fsync = on
shared_buffers = 1GB
max_wal_size = 16GB
checkpoint_timeout = 30min
autovacuum_naptime = 2s
log_autovacuum_min_duration = 0
EOF
export PGDATABASE=postgres
cs_psql -c "CREATE EXTENSION cohortsync"
cs_psql -v api_url="$STANDIN_URL" -f "$CS_TOP/bench/delivery_prep.sql" >/dev/null
q() { cs_as_user psql -X -qAt -v ON_ERROR_STOP=1 -F ' ' -c "$1"; }

# other PostgreSQL servers on the machine (e.g. other benchmarks) compete for the 2 cores
others_at_start=$(pgrep -f -- 'bin/postgres -D' | grep -vcx "$(head -1 "$CS_PGDATA/postmaster.pid")" || true)
WORKER_PID=$(q "SELECT pid FROM pg_stat_activity WHERE backend_type = 'cohortsync delivery'")
[ -n "$WORKER_PID" ] || { echo "no delivery worker in pg_stat_activity" >&2; exit 1; }
cs_log "delivery worker pid $WORKER_PID, stand-in pid $STANDIN_PID at $STANDIN_URL"

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }            # utime+stime, all threads
oncpu_ns() { awk '{print $1}' "/proc/$1/schedstat"; }           # main thread, ns
status_kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
now() { date +%s.%N; }
busy_ticks() { awk '$1 == "cpu" {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }   # user nice system irq softirq, all cores
steal_ticks() { awk '$1 == "cpu" {print $9}' /proc/stat; }
set_inflight() {
  q "ALTER SYSTEM SET cohortsync.max_inflight = $1" >/dev/null
  q "SELECT pg_reload_conf()" >/dev/null
  sleep 0.5
}
med_spread() {  # numbers on stdin -> "median min max"
  sort -g | awk '{a[NR] = $1} END {if (NR == 0) {print "- - -"; exit}
    m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2; print m, a[1], a[NR]}'
}

# drain LABEL CHANGES INFLIGHT DELAY_MS: build a backlog while paused, resume, time until
# the stand-in has every record. Appends one line to $drains:
#   label records seconds rec/s worker_cpu% standin_cpu% vmhwm_kb peak_anon_kb peak_shmem_kb max_conc requests others_cpu% steal%
drains=$CS_WORK/drains.txt
: >"$drains"
drain_seq=0
drain() {
  local label=$1 changes=$2 inflight=$3 delay=$4
  drain_seq=$((drain_seq + 1))
  q "SELECT cohortsync.pause_destination('bench')" >/dev/null
  set_inflight "$inflight"
  local records
  records=$(q "SELECT bench.fill('$label-$drain_seq', $changes)")
  records=$(q "SELECT count(*) FROM cohortsync.outbox")
  # Fresh statistics, as autovacuum leaves them a few seconds after a big insert. (The
  # stale case, statistics taken while the outbox was empty, is measured on its own.)
  [ "${STALE:-0}" = 1 ] || q "ANALYZE cohortsync.outbox" >/dev/null
  if [ -n "${DRAIN_BEFORE:-}" ]; then eval "$DRAIN_BEFORE"; fi
  standin POST /_reset >/dev/null
  # store false: the stand-in validates and answers as ever, but keeps no copy of each record
  # (its cost per record would otherwise grow with everything stored); only counts are needed
  standin POST /_control "{\"delay_ms\": $delay, \"store\": false}" >/dev/null
  echo 5 >"/proc/$WORKER_PID/clear_refs"                        # reset VmHWM
  local w0 s0 b0 st0 b1 st1 t0 t1 acc=0 anon peak_anon=0 shm peak_shm=0 deadline
  w0=$(ticks "$WORKER_PID"); s0=$(ticks "$STANDIN_PID"); b0=$(busy_ticks); st0=$(steal_ticks)
  t0=$(now)
  q "SELECT cohortsync.resume_destination('bench')" >/dev/null
  deadline=$(( $(date +%s) + 600 ))
  while :; do
    acc=$(standin_accepted)
    [ "$acc" -ge "$records" ] && break
    anon=$(status_kb "$WORKER_PID" RssAnon); [ "$anon" -gt "$peak_anon" ] && peak_anon=$anon
    shm=$(status_kb "$WORKER_PID" RssShmem); [ "$shm" -gt "$peak_shm" ] && peak_shm=$shm
    [ "$(date +%s)" -gt "$deadline" ] && { echo "drain $label: timed out at $acc of $records" >&2; exit 1; }
    sleep 0.05
  done
  t1=$(now)
  local w1 s1 hwm maxc reqs
  w1=$(ticks "$WORKER_PID"); s1=$(ticks "$STANDIN_PID"); b1=$(busy_ticks); st1=$(steal_ticks)
  hwm=$(status_kb "$WORKER_PID" VmHWM)
  anon=$(status_kb "$WORKER_PID" RssAnon); [ "$anon" -gt "$peak_anon" ] && peak_anon=$anon
  maxc=$(standin_field max_concurrent_seen); reqs=$(standin_field requests)
  # the outbox must empty too (the stand-in counts a record before the worker deletes it)
  for _ in $(seq 400); do [ "$(q "SELECT count(*) FROM cohortsync.outbox")" = 0 ] && break; sleep 0.05; done
  awk -v l="$label" -v r="$records" -v t0="$t0" -v t1="$t1" -v w="$((w1 - w0))" -v s="$((s1 - s0))" -v hz="$HZ" \
      -v h="$hwm" -v a="$peak_anon" -v sh="$peak_shm" -v mc="$maxc" -v rq="$reqs" -v b="$((b1 - b0))" -v st="$((st1 - st0))" \
      'BEGIN {d = t1 - t0; printf "%s %d %.3f %.0f %.1f %.1f %d %d %d %d %d %.1f %.1f\n", l, r, d, r / d, 100 * w / hz / d, 100 * s / hz / d,
              h, a, sh, mc, rq, 100 * (b - w - s) / hz / d, 100 * st / hz / d}' \
    >>"$drains"
  tail -1 "$drains" >&2
}

# --- 4. latency (first: the queue is empty and nothing else is going on) ----------------
set_inflight 4
standin POST /_reset >/dev/null
cs_log "latency: $RUNS runs x $LAT_N single-member ingests, ${LAT_GAP}s apart"
for run in $(seq 1 "$RUNS"); do
  cs_psql -c "CALL bench.latency($run, $LAT_N, $LAT_GAP)"
done
sleep 1
standin GET /_records >"$CS_WORK/lat-records.json"
chmod 644 "$CS_WORK/lat-records.json"
cs_psql -c "INSERT INTO bench.lat_arrival
            SELECT split_part(r ->> 'identity', '-', 3)::int, r ->> 'identity', min((r ->> '_at')::float8)
              FROM jsonb_array_elements(pg_read_file('$CS_WORK/lat-records.json')::jsonb -> 'records') r
             GROUP BY 1, 2"
lat=$CS_WORK/lat.txt
# per run: matched, ingests, p50, p99, min, max (from the post-commit stamp), p50 and p99 from
# the pre-commit stamp (an upper bound)
q "WITH l AS (SELECT c.run, a.identity AS got, (a.arrived_at - c.committed_at) * 1000 AS ms,
                     (a.arrived_at - c.before_commit) * 1000 AS ms_pre
                FROM bench.lat_commit c LEFT JOIN bench.lat_arrival a USING (run, identity))
   SELECT run, count(got), count(*),
          percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), percentile_cont(0.99) WITHIN GROUP (ORDER BY ms),
          min(ms), max(ms),
          percentile_cont(0.5) WITHIN GROUP (ORDER BY ms_pre), percentile_cont(0.99) WITHIN GROUP (ORDER BY ms_pre)
     FROM l GROUP BY run ORDER BY run" >"$lat"

# --- 5a. idle CPU ------------------------------------------------------------------------
cs_log "idle: $RUNS samples of ${IDLE_S}s"
sleep 2
idle=$CS_WORK/idle.txt
: >"$idle"
for run in $(seq 1 "$RUNS"); do
  c0=$(oncpu_ns "$WORKER_PID"); v0=$(status_kb "$WORKER_PID" voluntary_ctxt_switches); t0=$(now)
  sleep "$IDLE_S"
  c1=$(oncpu_ns "$WORKER_PID"); v1=$(status_kb "$WORKER_PID" voluntary_ctxt_switches); t1=$(now)
  awk -v c="$((c1 - c0))" -v v="$((v1 - v0))" -v t0="$t0" -v t1="$t1" \
    'BEGIN {d = t1 - t0; printf "%.4f %.3f %.2f\n", 100 * c / 1e9 / d, c / 1e6 / d, v / d}' >>"$idle"
done
idle_xmin=$(q "SELECT coalesce(backend_xmin::text, '-') || ' ' || coalesce(backend_xid::text, '-') || ' ' || coalesce(state, '-')
                 FROM pg_stat_activity WHERE pid = $WORKER_PID")

# --- 3. throughput -----------------------------------------------------------------------
cs_log "throughput: $RUNS runs each of $((THRU_CHANGES * 2)) records"
for run in $(seq 1 "$RUNS"); do
  drain a4 "$THRU_CHANGES" 4 0
  drain a15 "$THRU_CHANGES" 15 0
  drain b15 "$THRU_CHANGES" 15 100
done

# The planner trap: statistics taken while the outbox was empty but not truncated
# (relpages > 0, reltuples = 0), as autovacuum can leave them right after a drain. The
# planner then takes the outbox for empty until the next ANALYZE.
cs_log "throughput with stale statistics: $((STALE_CHANGES * 2)) records"
q "ALTER TABLE cohortsync.outbox SET (autovacuum_enabled = off)" >/dev/null
q "SELECT cohortsync.pause_destination('bench')" >/dev/null
q "SELECT bench.fill('stale-prep', $STALE_CHANGES)" >/dev/null
q "DELETE FROM cohortsync.outbox" >/dev/null
q "VACUUM (TRUNCATE false) cohortsync.outbox" >/dev/null
q "ANALYZE cohortsync.outbox" >/dev/null
stale_stats=$(q "SELECT relpages || ' pages, ' || reltuples || ' tuples' FROM pg_class WHERE oid = 'cohortsync.outbox'::regclass")
STALE=1 drain stale "$STALE_CHANGES" 15 0
q "ALTER TABLE cohortsync.outbox RESET (autovacuum_enabled)" >/dev/null

# --- 5b/c. a 1,000,000-record backlog: peak memory, outbox size, autovacuum, xmin ---------
size_row() {  # label
  cs_as_user psql -X -qAt -v ON_ERROR_STOP=1 -F '|' -c "SELECT '$1', pg_relation_size('cohortsync.outbox'), pg_indexes_size('cohortsync.outbox'),
            pg_total_relation_size('cohortsync.outbox'),
            (SELECT count(*) FROM cohortsync.outbox),
            (SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = 'cohortsync.outbox'::regclass)" >>"$CS_WORK/sizes.txt"
}
: >"$CS_WORK/sizes.txt"
cs_log "at rest: a backlog of $BACKLOG records"
q "VACUUM cohortsync.outbox" >/dev/null
size_row "before the backlog (after the throughput runs, vacuumed)"
av0=$(q "SELECT autovacuum_count FROM pg_stat_user_tables WHERE relid = 'cohortsync.outbox'::regclass")
DRAIN_BEFORE='size_row "backlog queued (destination paused)"' drain backlog $((BACKLOG / 2)) 15 0
size_row "drained"
av_during=$(q "SELECT autovacuum_count - $av0 FROM pg_stat_user_tables WHERE relid = 'cohortsync.outbox'::regclass")
log_off=$(stat -c %s "$CS_WORK/server.log")
# wait for an autovacuum of the outbox that starts after the drain (at most AV_WAIT s)
tdr=$(now)
av_done=no
for _ in $(seq $(( ${AV_WAIT:-120} * 2 ))); do
  if [ "$(q "SELECT coalesce(last_autovacuum > to_timestamp($tdr), false) FROM pg_stat_user_tables WHERE relid = 'cohortsync.outbox'::regclass")" = t ]; then
    av_done=yes; break
  fi
  sleep 0.5
done
av_wait=$(awk -v a="$tdr" -v b="$(now)" 'BEGIN {printf "%.1f", b - a}')
if [ $av_done = yes ]; then size_row "after autovacuum (it ran ${av_wait}s after the drain)"
else size_row "no autovacuum within ${av_wait}s of the drain"; fi
# INDEX_CLEANUP on: VACUUM may otherwise skip index vacuuming when few dead items are
# left, and their line pointers then keep the heap's pages from being truncated.
vac_out=$(cs_as_user psql -X -q -c "VACUUM (VERBOSE, INDEX_CLEANUP on) cohortsync.outbox" 2>&1 | grep -E 'pages: .*removed|truncat' | sed 's/^[A-Z]*: *//; s/^[ \t]*//' | head -1 || true)
size_row "after a manual VACUUM (INDEX_CLEANUP on)"
sleep 0.5   # autovacuum's log lines are written as it finishes
av_log=$(awk '/automatic vacuum of table "postgres.cohortsync.outbox"/ {f = 1; next}
              f && /tuples:/ {sub(/^[ \t]*/, ""); t = $0}
              f && /removable cutoff:/ {sub(/^[ \t]*/, ""); print "  " t "; " $0; f = 0}' \
         < <(tail -c +$((log_off + 1)) "$CS_WORK/server.log"))
xmin_holders=$(q "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND (backend_xmin IS NOT NULL OR backend_xid IS NOT NULL)")
slots=$(q "SELECT count(*) FROM pg_replication_slots")
prepared=$(q "SELECT count(*) FROM pg_prepared_xacts")

# --- tables --------------------------------------------------------------------------------
mb() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
col() { awk -v l="$1" -v c="$2" '$1 == l {print $c}' "$drains"; }
med() { col "$1" "$2" | med_spread | awk '{print $1}'; }
echo
echo "Command: RUNS=$RUNS THRU_CHANGES=$THRU_CHANGES BACKLOG=$BACKLOG LAT_N=$LAT_N LAT_GAP=$LAT_GAP IDLE_S=$IDLE_S bench/delivery.sh"
echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo); PostgreSQL $("$CS_BIN/postgres" --version | awk '{print $3}'), fsync on, shared_buffers 1GB; stand-in: test/standin, Python $(python3 -c 'import platform; print(platform.python_version())'); $(date -u '+%F %H:%M UTC')"
echo "Other PostgreSQL servers running on the machine at the start: $others_at_start (their CPU shows in the 'others' columns below)"
echo
echo "3. Throughput: a backlog of $((THRU_CHANGES * 2)) records ($THRU_CHANGES changes) drained to the stand-in, $RUNS runs each"
printf '%-30s %9s %19s %9s %7s | %7s %9s %7s %6s | %9s\n' case records/s "spread (min-max)" target "of it" worker stand-in others steal "in flight"
for l in a4 a15 b15; do
  read -r m lo hi < <(col $l 4 | med_spread)
  case $l in
    a4)  name="(a) at once, max_inflight 4";  tgt=-;;
    a15) name="(a) at once, max_inflight 15"; tgt=50000;;
    b15) name="(b) 100 ms, max_inflight 15";  tgt=135000;;
  esac
  vs=-; [ "$tgt" != - ] && vs=$(awk -v m="$m" -v t="$tgt" 'BEGIN {printf "%.0f%%", 100 * m / t}')
  printf '%-30s %9.0f %9.0f - %-7.0f %9s %7s | %6s%% %8s%% %6s%% %5s%% | %9s\n' "$name" "$m" "$lo" "$hi" "$tgt" "$vs" \
    "$(med $l 5)" "$(med $l 6)" "$(med $l 12)" "$(med $l 13)" "$(col $l 10 | med_spread | awk '{print $3}')"
done
b=$(med b15 4)
echo "(b)'s ceiling: 15 in flight x 1000 records / 0.1 s = 150000 records/s (target: 90% of it = 135000); the median reached $(awk -v m="$b" 'BEGIN {printf "%.1f%%", 100 * m / 150000}') of the ceiling."
echo "CPU during the drain, % of one core (medians; $(nproc) cores = $(( $(nproc) * 100 ))%): the worker (a single process), the stand-in (Python: one core at most"
echo "for its request handling, the GIL), everything else on the machine, and the hypervisor's steal. in flight: the stand-in's highest number of concurrent requests."
read -r _ srec ssec srate sw _ _ _ _ smc _ _ _ < <(grep '^stale ' "$drains")
printf '%-30s %9.0f %19s %9s %7s | %6s%% (one run: %d records in %.1f s; statistics: %s)\n' "(a) 15, stale statistics" "$srate" "" "" "" "$sw" "$srec" "$ssec" "$stale_stats"
echo "(Since 0.2.0 the claim (_claim_due) writes nothing and has no join back to the outbox; its plan is pinned to the index walk"
echo " with one identity probe per record, so stale statistics should cost nothing: this row checks that.)"
echo "Runs (records/s): $(for l in a4 a15 b15; do printf '%s: %s; ' "$l" "$(col $l 4 | paste -sd ' ')"; done)"
# CPU per record: what the machine's load does not change (much). 1e6 / it is what one whole
# core would drain per second if nothing else (the stand-in, other servers) needed it.
echo "CPU per record (medians over the runs), and the records/s one whole core would give at that cost:"
for l in a4 a15 b15; do
  read -r wus _ _ < <(awk -v l="$l" '$1 == l {print 1e4 * $5 * $3 / $2}' "$drains" | med_spread)
  read -r sus _ _ < <(awk -v l="$l" '$1 == l {print 1e4 * $6 * $3 / $2}' "$drains" | med_spread)
  awk -v l="$l" -v w="$wus" -v s="$sus" 'BEGIN {printf "  %-4s worker %5.1f us/record (%6.0f records/s per core); stand-in %5.1f us/record (%6.0f records/s per core)\n", l, w, 1e6 / w, s, 1e6 / s}'
done
echo
echo "4. Latency: commit of a single-member add_members ingest -> the stand-in receiving its request ($RUNS runs x $LAT_N ingests, ${LAT_GAP}s apart)"
read -r p50 p50lo p50hi < <(awk '{print $4}' "$lat" | med_spread)
read -r p99 p99lo p99hi < <(awk '{print $5}' "$lat" | med_spread)
read -r q50 q50lo q50hi < <(awk '{print $8}' "$lat" | med_spread)
read -r q99 q99lo q99hi < <(awk '{print $9}' "$lat" | med_spread)
printf '%-44s %9s %19s %9s\n' "" median "spread (min-max)" target
printf '%-44s %9.2f %9.2f - %-7.2f %9s\n' "p50 ms, from the commit's return" "$p50" "$p50lo" "$p50hi" "< 20"
printf '%-44s %9.2f %9.2f - %-7.2f %9s\n' "p99 ms, from the commit's return" "$p99" "$p99lo" "$p99hi" "-"
printf '%-44s %9.2f %9.2f - %-7.2f %9s\n' "p50 ms, from just before COMMIT (upper bound)" "$q50" "$q50lo" "$q50hi" "< 20"
printf '%-44s %9.2f %9.2f - %-7.2f %9s\n' "p99 ms, from just before COMMIT (upper bound)" "$q99" "$q99lo" "$q99hi" "-"
echo "(requests matched: $(awk '{g += $2; n += $3} END {print g "/" n}' "$lat"); from the commit's return: min $(awk 'NR == 1 || $6 < m {m = $6} END {printf "%.2f", m}' "$lat") ms, max $(awk 'NR == 1 || $7 > m {m = $7} END {printf "%.2f", m}' "$lat") ms;"
echo " a negative value means the worker delivered before the ingesting backend ran its next statement after COMMIT)"
echo
echo "5. Cost at rest"
read -r ic iclo ichi < <(awk '{print $1}' "$idle" | med_spread)
read -r ims _ _ < <(awk '{print $2}' "$idle" | med_spread)
read -r iw iwlo iwhi < <(awk '{print $3}' "$idle" | med_spread)
printf '%-46s %10s %19s %9s\n' "" median "spread (min-max)" target
printf '%-46s %10.4f %9.4f - %-7.4f %9s\n' "worker CPU idle, % of a core ($RUNS x ${IDLE_S}s)" "$ic" "$iclo" "$ichi" "~0"
printf '%-46s %10.2f %9.2f - %-7.2f %9s\n' "worker wake-ups idle (voluntary switches/s)" "$iw" "$iwlo" "$iwhi" "-"
echo "(idle CPU median: $ims ms of CPU per second; the worker's backend_xmin, backend_xid, state while idle: $idle_xmin)"
echo
read -r _ brec bsec brate bw bs bhwm banon bshm _ _ bo bst < <(grep '^backlog ' "$drains")
printf 'Draining a backlog of %d records (%d changes), max_inflight 15: %.1f s, %.0f records/s\n' "$brec" "$((BACKLOG / 2))" "$bsec" "$brate"
printf '  (CPU: worker %s%%, stand-in %s%%, others %s%%, steal %s%% of a core)\n' "$bw" "$bs" "$bo" "$bst"
printf '%-50s %9s %9s\n' "worker memory while draining it" MB target
printf '%-50s %9s %9s\n' "  peak RSS (VmHWM)" "$(mb "$bhwm")" "< 64"
printf '%-50s %9s %9s\n' "  of which, at most: private (peak RssAnon)" "$(mb "$banon")" ""
printf '%-50s %9s %9s\n' "               shared buffers (peak RssShmem)" "$(mb "$bshm")" ""
printf '%-50s %9s %9s\n' "  peak RssAnon over all the drains of this run" "$(mb "$(awk '{print $8}' "$drains" | sort -n | tail -1)")" ""
echo "(VmHWM is reset before each drain (clear_refs); RssAnon/RssShmem sampled every 50 ms.)"
echo
echo "Outbox size, MB"
printf '%-58s %8s %8s %8s %9s %9s\n' "" heap indexes total rows dead_tup
awk -F '|' '{printf "%-58s %8.1f %8.1f %8.1f %9d %9d\n", $1, $2 / 1048576, $3 / 1048576, $4 / 1048576, $5, $6}' "$CS_WORK/sizes.txt"
echo "autovacuum of the outbox: $av_during run(s) while it drained; those that ended after the drain logged:"
echo "${av_log:-  (none)}"
echo "manual VACUUM: ${vac_out:-(no truncation line)}" | paste -sd ' '
echo "(indexes keep their size: emptied btree pages are recycled for later rows, not given back; only the heap can shrink)"
echo "holding back xmin after the drain: backends with an xmin or xid: $xmin_holders, replication slots: $slots, prepared transactions: $prepared"
cs_stop_cluster
