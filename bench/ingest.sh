#!/usr/bin/env bash
# Ingest benchmarks, on a throwaway cluster, printing tables:
#
#  1. Page ingest: 1000-member add_members and members pages into a cohort that already
#     holds 1,000,000 members. cohortsync.ingest (C) next to two peers in the same run:
#     bench/peer_ingest.sql (the same handling in PL/pgSQL with jsonb_to_recordset and
#     set-based INSERT ... ON CONFLICT) and COPY of the same rows into the same tables.
#     Each page is one transaction; each (peer, kind) is run RUNS times, interleaved.
#  2. Full sync end to end: a 1,000,000-member cohort arriving as 1000 pages, then a
#     second full sync with 1% churn (10,000 leave, 10,000 join), its swap measured twice:
#     with fresh statistics and with statistics that are stale on purpose (autovacuum
#     off, staging analyzed while empty). BENCH_10M=1 adds the 10,000,000-member case.
#     The last page only queues the swap; the apply worker runs it. Reported: from the
#     first page to the swap's commit (sync_sessions.started_at to completed_at), the
#     last page's answer, and the swap (apply_duration). The peak private memory
#     (RssAnon) of the sending backend and of the apply worker is sampled throughout.
#
#     Next to the first sync, the ceiling of its writes: COPY of the same 1,000,000
#     members into a table shaped like cohortsync.members with its primary key, and of
#     their 1,000,000 history rows into one shaped like membership_changes with its
#     indexes, in one transaction, on the same cluster (same WAL settings).
#  3. One page's cost (issue #11, item 6): 1000-member add_members pages into a cohort
#     filled from empty, C next to the plain-SQL peer, COPY of the same 1000 rows into a
#     table shaped like cohortsync.members with its primary key, and COPY of everything
#     the page writes (those rows and their history rows); see bench/page_cost.sql.
#
#   bench/ingest.sh                 RUNS=5 PAGES=40
#   RUNS=3 PAGES=20 bench/ingest.sh quicker
#   PARTS=2 bench/ingest.sh         only part 2 (PARTS="1 2 3" is the default)
#   FS_RUNS=3                       repeats of the 1M full-sync case (median and spread)
#   COST_RUNS=5 COST_PAGES=20       part 3: runs, and pages per run (each run a new cohort)
#   BENCH_10M=1 BENCH_10M_CHURN=0   the 10M first sync only, without its two churn syncs
source "$(dirname "$0")/../scripts/lib.sh"

RUNS=${RUNS:-5}
PAGES=${PAGES:-40}
BENCH_10M=${BENCH_10M:-0}
BENCH_10M_CHURN=${BENCH_10M_CHURN:-1}
PARTS=${PARTS:-1 2 3}
FS_RUNS=${FS_RUNS:-3}
COST_RUNS=${COST_RUNS:-5}
COST_PAGES=${COST_PAGES:-20}
part() { [[ " $PARTS " == *" $1 "* ]]; }

cs_install_deps
cs_build
cs_workdir
cs_tmp_install
cs_start_cluster <<'EOF'
fsync = on
shared_buffers = 1GB
max_wal_size = 16GB
checkpoint_timeout = 30min
EOF
export PGDATABASE=postgres
cs_psql -c "CREATE EXTENSION cohortsync"
cs_psql -f "$CS_TOP/bench/peer_ingest.sql" -f "$CS_TOP/bench/make_page.sql"
if part 1 || part 2; then
  cs_log "preparing: 1M members, $((RUNS * PAGES * 6)) pages, COPY files"
  cs_psql -v runs="$RUNS" -v pages="$PAGES" -c "SET bench.dir = '$CS_WORK'" -f "$CS_TOP/bench/ingest_prep.sql"
fi

if part 3; then
# --- 3. one page's cost against COPY (run first: it is short) ----------------------------
cs_log "part 3: $COST_RUNS runs x $COST_PAGES add_members pages, C, SQL, COPY"
cs_psql -v runs="$COST_RUNS" -v pages="$COST_PAGES" -c "SET bench.dir = '$CS_WORK'" -f "$CS_TOP/bench/page_cost.sql"
cs_psql -c "VACUUM ANALYZE" -c "CHECKPOINT"
for run in $(seq 1 "$COST_RUNS"); do
  cs_psql -c "CALL bench.cost_run($run, $COST_PAGES, '$CS_WORK')"
done
echo
echo "3. One add_members page of 1000 new members, into a cohort filled from empty ($COST_RUNS runs x $COST_PAGES pages,"
echo "   peers interleaved page by page). Median ms; exec = up to the COMMIT, total = with it; vs copy = ÷ COPY's median."
echo "   copy: the page's 1000 rows into a members-shaped table with its primary key;"
echo "   copy_all: those rows and their 1000 history rows (membership_changes-shaped, its two indexes)."
cs_as_user psql -X -P footer=off -c "SELECT * FROM bench.cost_summary"
fi

if part 1; then
# --- 1. page ingest -------------------------------------------------------------------
script() {   # peer kind run -> a pgbench script file
  local peer=$1 kind=$2 run=$3 f=$CS_WORK/$1-$2-$3.pgb
  {
    echo "SELECT nextval('bench.seq_${peer}_${kind}_${run}') AS n \\gset"
    case $peer in
      c)   echo "SELECT cohortsync.ingest(body) FROM bench.pages WHERE peer = 'c' AND kind = '$kind' AND run = $run AND n = :n;";;
      sql) echo "SELECT bench.ingest_sql(body) FROM bench.pages WHERE peer = 'sql' AND kind = '$kind' AND run = $run AND n = :n;";;
      copy)
        echo "BEGIN;"
        if [ "$kind" = add ]; then
          echo "COPY cohortsync.members (project_id, cohort_id, distinct_id, email, phone, first_name, last_name, properties) FROM '$CS_WORK/copy-add-$run-:n-members.csv' (FORMAT csv);"
          echo "COPY cohortsync.membership_changes (project_id, cohort_id, distinct_id, change, session_id, properties) FROM '$CS_WORK/copy-add-$run-:n-changes.csv' (FORMAT csv);"
        else
          echo "COPY cohortsync.staged_members (project_id, cohort_id, session_id, page_count, distinct_id, email, phone, first_name, last_name, properties) FROM '$CS_WORK/copy-members-$run-:n-staged.csv' (FORMAT csv);"
        fi
        echo "END;";;
    esac
  } >"$f"
  chmod 644 "$f"
  echo "$f"
}

results=$CS_WORK/page-results.txt
: >"$results"
for run in $(seq 1 "$RUNS"); do
  for kind in add members; do
    for peer in c sql copy; do
      f=$(script $peer $kind "$run")
      # Each run of 'members' pages starts a new full sync of the cohort, which supersedes
      # the unfinished one before it and deletes its staged rows. Left alone, the first
      # page of a run would pay for deleting the rows another peer staged; so the earlier
      # sessions are retired here, untimed, and every timed page does the same work.
      if [ "$kind" = members ]; then
        cs_psql -c "UPDATE cohortsync.sync_sessions SET state = 'superseded', superseded_at = now()
                     WHERE cohort_id = 'big' AND action = 'members' AND state = 'receiving'" \
                -c "DELETE FROM cohortsync.staged_members WHERE cohort_id = 'big'"
      fi
      ( cd "$CS_WORK" && cs_as_user pgbench -n -c 1 -t "$PAGES" -f "$f" -l --log-prefix="lat-$peer-$kind-$run" ) >"$CS_WORK/pgbench.out" 2>&1 \
        || { cat "$CS_WORK/pgbench.out"; exit 1; }
      tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$CS_WORK/pgbench.out" | head -1)
      echo "$peer $kind $run $tps" >>"$results"
    done
  done
done

# median and spread (min-max) of pages/s over runs, p50/p99 latency over all pages
summarise() {  # peer kind
  local peer=$1 kind=$2
  local tps lat
  tps=$(awk -v p="$peer" -v k="$kind" '$1 == p && $2 == k {print $4}' "$results" | sort -n)
  lat=$(cat "$CS_WORK"/lat-"$peer"-"$kind"-*.* | awk '{print $3 / 1000}' | sort -n)
  local n med min max p50 p99
  n=$(wc -l <<<"$tps"); med=$(sed -n "$(( (n + 1) / 2 ))p" <<<"$tps"); min=$(head -1 <<<"$tps"); max=$(tail -1 <<<"$tps")
  local m; m=$(wc -l <<<"$lat")
  p50=$(sed -n "$(( (m + 1) / 2 ))p" <<<"$lat"); p99=$(sed -n "$(( (m * 99 + 99) / 100 ))p" <<<"$lat")
  echo "$peer $kind $med $min $max $p50 $p99"
}

echo
echo "1. Page ingest: 1000-member pages into a 1,000,000-member cohort ($RUNS runs x $PAGES pages, one transaction per page)"
printf '%-8s %-8s %12s %19s %13s %10s %10s %14s\n' kind peer pages/s "spread (min-max)" rows/s "p50 ms" "p99 ms" "vs C"
for kind in add members; do
  c_tps=$(summarise c $kind | awk '{print $3}')
  for peer in c sql copy; do
    read -r _ _ med min max p50 p99 < <(summarise $peer $kind)
    printf '%-8s %-8s %12.1f %9.1f - %-7.1f %13.0f %10.2f %10.2f %13.2fx\n' \
      "$kind" "$peer" "$med" "$min" "$max" "$(echo "$med * 1000" | bc)" "$p50" "$p99" "$(echo "scale=4; $c_tps / $med" | bc)"
  done
done
echo "(vs C: C's pages/s divided by the peer's; above 1 means C is faster)"

fi

# --- 2. full sync end to end ------------------------------------------------------------
cs_psql <<'EOF'
CREATE TABLE bench.fs_lat (label text, n int, ms float8);
-- Deliver a whole full sync, one transaction per page, timing only the ingest calls.
CREATE PROCEDURE bench.full_sync(label text, cohort text, session text, pages int, first int,
                                 analyze_before_last boolean DEFAULT false)
LANGUAGE plpgsql AS $$
DECLARE
  body jsonb;
  t0 timestamptz;
BEGIN
  FOR n IN 1..pages LOOP
    body := bench.make_page('members', cohort, session, 'u', n, pages, first + (n - 1) * 1000);
    IF n = pages AND analyze_before_last THEN
      ANALYZE cohortsync.staged_members;
      ANALYZE cohortsync.members;
    END IF;
    t0 := clock_timestamp();
    PERFORM cohortsync.ingest(body);
    INSERT INTO bench.fs_lat VALUES (label, n, extract(epoch FROM clock_timestamp() - t0) * 1000);
    COMMIT;
  END LOOP;
END $$;
EOF

# The ceiling of a first sync's writes (part 2): the same 1,000,000 members, and their
# history rows, as COPY writes them into tables of the same shapes, in one transaction.
if part 2; then
  cs_log "preparing: COPY files of 1,000,000 members and their history rows"
  cs_psql <<EOF
CREATE TABLE bench.ceil_members (LIKE cohortsync.members INCLUDING ALL);
CREATE TABLE bench.ceil_changes (LIKE cohortsync.membership_changes INCLUDING ALL);
CREATE TABLE bench.ceil_lat (label text, members_s float8, total_s float8);
CREATE TEMP TABLE ceil_rows AS
SELECT e FROM generate_series(0, 999) k,
       jsonb_array_elements(bench.make_page('members', 'c', 's', 'u', 1, 1, k * 1000 + 1) -> 'parameters' -> 'members') e;
COPY (SELECT '1001', 'ceiling', e->>'mixpanel_distinct_id', e->>'email', e->>'phone_number',
             e->>'first_name', e->>'last_name', e FROM ceil_rows)
  TO '$CS_WORK/ceil-members.csv' (FORMAT csv);
COPY (SELECT '1001', 'ceiling', e->>'mixpanel_distinct_id', 'added', 'ceiling', e FROM ceil_rows)
  TO '$CS_WORK/ceil-changes.csv' (FORMAT csv);
CREATE PROCEDURE bench.copy_ceiling(label text, dir text)
LANGUAGE plpgsql AS \$\$
DECLARE
  t0 timestamptz;
  t1 timestamptz;
BEGIN
  TRUNCATE bench.ceil_members, bench.ceil_changes;
  COMMIT;
  t0 := clock_timestamp();
  EXECUTE format('COPY bench.ceil_members (project_id, cohort_id, distinct_id, email, phone,'
                 ' first_name, last_name, properties) FROM %L (FORMAT csv)', dir || '/ceil-members.csv');
  t1 := clock_timestamp();
  EXECUTE format('COPY bench.ceil_changes (project_id, cohort_id, distinct_id, change, session_id,'
                 ' properties) FROM %L (FORMAT csv)', dir || '/ceil-changes.csv');
  COMMIT;
  INSERT INTO bench.ceil_lat VALUES (label, extract(epoch FROM t1 - t0),
                                     extract(epoch FROM clock_timestamp() - t0));
END \$\$;
EOF
fi

# run LABEL SQL: run SQL (a full sync of session LABEL) in a backend, then wait until
# the apply worker has completed the session; the private memory of both is sampled
# every 0.2 s
peak_kb=0
rss_kb() { awk '/^RssAnon:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
run_sampled() {
  local label=$1 sql=$2
  cs_as_user env PGAPPNAME="bench-$label" psql -X -q -v ON_ERROR_STOP=1 -c "$sql" >"$CS_WORK/fs.out" 2>&1 &
  local psql_pid=$! pid="" worker peak=0 kb state="" proc
  worker=$(cs_as_user psql -X -qAt -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'cohortsync apply'")
  while [ -z "$pid" ] && kill -0 $psql_pid 2>/dev/null; do
    pid=$(cs_as_user psql -X -qAt -c "SELECT pid FROM pg_stat_activity WHERE application_name = 'bench-$label'")
    sleep 0.05
  done
  while kill -0 $psql_pid 2>/dev/null || [ "$state" != completed ]; do
    for proc in $pid $worker; do
      kb=$(rss_kb "$proc")
      [ -n "$kb" ] && [ "$kb" -gt "$peak" ] && peak=$kb
    done
    sleep 0.2
    kill -0 $psql_pid 2>/dev/null ||
      state=$(cs_as_user psql -X -qAt -c "SELECT state FROM cohortsync.sync_sessions WHERE session_id = '$label'")
  done
  wait $psql_pid || { cat "$CS_WORK/fs.out"; exit 1; }
  peak_kb=$peak
}

fs_vals() {  # label -> "total last swap added removed" (seconds)
  local label=$1
  cs_as_user psql -X -qAt -F ' ' -c \
    "SELECT round(extract(epoch FROM completed_at - started_at)::numeric, 2),
            (SELECT round((max(ms) FILTER (WHERE n = (SELECT max(n) FROM bench.fs_lat WHERE label = '$label')))::numeric / 1000, 3)
               FROM bench.fs_lat WHERE label = '$label'),
            round(extract(epoch FROM apply_duration)::numeric, 2), members_added, members_removed
       FROM cohortsync.sync_sessions WHERE session_id = '$label'"
}

# median and min-max of column $2 of file $1
med() { sort -n <<<"$(awk -v c="$2" '{print $c}' "$1")" | awk '{v[NR] = $1} END {printf "%.2f %.2f-%.2f", v[int((NR + 1) / 2)], v[1], v[NR]}'; }

fs_case() {  # members pages tag runs [churn]: each run is a new cohort, synced three times (once if churn is 0)
  local m=$1 p=$2 tag=$3 runs=$4 churn=${5:-1} r c
  for r in $(seq 1 "$runs"); do
    c="fs$tag-$r"
    cs_log "full sync of $m members ($p pages), then 1% churn, stale and fresh statistics (run $r of $runs)"
    run_sampled "$c-1" "CALL bench.full_sync('$c-1', '$c', '$c-1', $p, 1)"
    echo "$(fs_vals "$c-1") $peak_kb" >>"$CS_WORK/fs-$tag-first.txt"
    [ "$churn" = 0 ] && continue
    if [ "$m" = 1000000 ]; then
      cs_log "the COPY ceiling of the first sync's writes (run $r of $runs)"
      cs_psql -c "CALL bench.copy_ceiling('$c', '$CS_WORK')"
      cs_as_user psql -X -qAt -F ' ' -c "SELECT s.total, c.total_s, c.members_s,
             round(extract(epoch FROM s.apply_duration)::numeric, 2)
        FROM bench.ceil_lat c,
             LATERAL (SELECT round(extract(epoch FROM completed_at - started_at)::numeric, 2) AS total, apply_duration
                        FROM cohortsync.sync_sessions WHERE session_id = '$c-1') s
       WHERE c.label = '$c'" >>"$CS_WORK/fs-$tag-ceiling.txt"
    fi
    # stale: statistics taken while staging was empty, autovacuum kept away
    cs_psql -c "ALTER TABLE cohortsync.staged_members SET (autovacuum_enabled = off)" \
            -c "ALTER TABLE cohortsync.members SET (autovacuum_enabled = off)" \
            -c "ANALYZE cohortsync.staged_members" -c "ANALYZE cohortsync.members"
    run_sampled "$c-2" "CALL bench.full_sync('$c-2', '$c', '$c-2', $p, $(( m / 100 + 1 )))"
    echo "$(fs_vals "$c-2") $peak_kb" >>"$CS_WORK/fs-$tag-stale.txt"
    cs_psql -c "ALTER TABLE cohortsync.staged_members RESET (autovacuum_enabled)" \
            -c "ALTER TABLE cohortsync.members RESET (autovacuum_enabled)"
    run_sampled "$c-3" "CALL bench.full_sync('$c-3', '$c', '$c-3', $p, 1, true)"
    echo "$(fs_vals "$c-3") $peak_kb" >>"$CS_WORK/fs-$tag-fresh.txt"
    # untimed: the next run starts from tables of the same size
    cs_psql -c "DELETE FROM cohortsync.cohorts WHERE cohort_id = '$c'" -c "VACUUM cohortsync.members"
  done
  local k f
  for k in first stale fresh; do
    f=$CS_WORK/fs-$tag-$k.txt
    [ -f "$f" ] || continue
    printf '%-24s %10s %8s %8s %18s %18s %18s %8s\n' "$(case $k in first) echo "first sync";; stale) echo "1% churn, stale stats";; fresh) echo "1% churn, fresh stats";; esac)" \
      "$m" "$(head -1 "$f" | awk '{print $4}')" "$(head -1 "$f" | awk '{print $5}')" \
      "$(med "$f" 1)" "$(med "$f" 2)" "$(med "$f" 3)" "$(awk '{if ($6 > p) p = $6} END {printf "%d", p / 1024}' "$f")"
  done
}

if part 2; then
  echo
  echo "2. Full sync end to end (one transaction per page; the last page queues the swap, the apply worker runs it)"
  echo "   median and min-max over FS_RUNS=$FS_RUNS runs (10M: 1 run); total = first page to the swap's commit;"
  echo "   peak MB = the largest RssAnon of the sending backend and of the apply worker"
  printf '%-24s %10s %8s %8s %18s %18s %18s %8s\n' case members added removed "total s (spread)" "last page s" "swap s (spread)" "peak MB"
  fs_case 1000000 1000 1m "$FS_RUNS"
  f=$CS_WORK/fs-1m-ceiling.txt
  echo
  echo "   The ceiling of the 1M first sync's writes, per run: first sync total s, its swap s; COPY of the 1M"
  echo "   members (members-shaped, with its primary key) and of their 1M history rows (membership_changes-shaped,"
  echo "   its indexes), one transaction, s; first sync ÷ ceiling; share of the first sync above the ceiling"
  awk '{printf "   run %d: first sync %.2f s, swap %.2f s; COPY ceiling %.2f s (members %.2f s); %.2fx; %.0f%% above\n",
              NR, $1, $4, $2, $3, $1 / $2, 100 * ($1 - $2) / $1}' "$f"
  if [ "$BENCH_10M" = 1 ]; then fs_case 10000000 10000 10m 1 "$BENCH_10M_CHURN"; fi
  echo
  echo "   The pages' own time, per full sync: the ingest calls alone as bench.full_sync times them"
  echo "   (total s less the swap also holds building the pages in PL/pgSQL and the apply worker's wait)"
  cs_as_user psql -X -qAt -F ' ' -c "SELECT label, count(*), round(sum(ms)::numeric / 1000, 2),
         round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 2),
         round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 2)
    FROM bench.fs_lat GROUP BY label ORDER BY label" |
    awk '{printf "   %-12s %5d pages: %7.2f s, per page p50 %.2f ms, p99 %.2f ms\n", $1, $2, $3, $4, $5}'
fi
cs_stop_cluster
