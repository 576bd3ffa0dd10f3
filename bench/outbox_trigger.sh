#!/usr/bin/env bash
# The outbox trigger's cost: a 100,000-member first sync (100,000 'added' changes in
# one statement) with one CleverTap destination connected, queued by the current
# _queue_changes() and by the one of BASE (a git revision, default main), run
# alternately on the same throwaway cluster, RUNS times each (each in a transaction
# rolled back). Checks first that both queue the same records, byte for byte.
#
#   bench/outbox_trigger.sh              RUNS=5 N=100000 BASE=main
source "$(dirname "$0")/../scripts/lib.sh"

RUNS=${RUNS:-5}
N=${N:-100000}
BASE=${BASE:-main}

cs_install_deps
cs_build
cs_workdir
cs_tmp_install
cs_start_cluster <<'CONF'
shared_buffers = 512MB
max_wal_size = 8GB
CONF
export PGDATABASE=postgres

# BASE's trigger function, as bench.queue_changes_base()
git -C "$CS_TOP" show "$BASE:sql/cohortsync.sql" | python3 -c '
import sys
s = sys.stdin.read()
a = s.index("CREATE FUNCTION cohortsync._queue_changes()")
b = s.index("$$;\n", s.index("AS $$", a)) + 4
print(s[a:b].replace("cohortsync._queue_changes()", "bench.queue_changes_base()", 1))
' > "$CS_WORK/base_trigger.sql"
chmod 644 "$CS_WORK/base_trigger.sql"

cs_psql <<SQL
CREATE EXTENSION cohortsync;
CREATE SCHEMA bench;
\i $CS_WORK/base_trigger.sql
CREATE TRIGGER bench_base AFTER INSERT ON cohortsync.membership_changes
    REFERENCING NEW TABLE AS new_changes
    FOR EACH STATEMENT EXECUTE FUNCTION bench.queue_changes_base();
SELECT cohortsync.connect_clevertap('ct', 'ACC', 'cs-secret-bench', 'eu1', 'http://127.0.0.1:9');
INSERT INTO cohortsync.cohorts (project_id, cohort_id, name) VALUES ('1', '7', 'Power users');
-- the members as Mixpanel sends them: names and email always, a phone for a third
-- (half of those not E.164), \$CleverTap_user_id for half
CREATE TABLE bench.changes AS
SELECT '1'::text AS project_id, '7'::text AS cohort_id, 'u' || i AS distinct_id, 'added'::text AS change,
       's1'::text AS session_id,
       jsonb_strip_nulls(jsonb_build_object(
           'mixpanel_distinct_id', 'u' || i, 'email', 'u' || i || '@example.com',
           'first_name', 'F' || i, 'last_name', 'L' || i,
           'phone_number', CASE WHEN i % 3 = 0 THEN CASE WHEN i % 2 = 0 THEN '+1 555 010 ' || lpad((i % 10000)::text, 4, '0')
                                                         ELSE '555-01' END END,
           '\$CleverTap_user_id', CASE WHEN i % 2 = 0 THEN 'ct-' || i END)) AS properties
  FROM generate_series(1, $N) i;
SQL

run() {   # variant (base|new) -> milliseconds of the INSERT
  local off=queue_changes
  [ "$1" = new ] && off=bench_base
  cs_psql -At <<SQL | tail -1
BEGIN;
ALTER TABLE cohortsync.membership_changes DISABLE TRIGGER $off;
SET cohortsync.queue_changes = on;
SELECT clock_timestamp() AS t0 \gset
INSERT INTO cohortsync.membership_changes (project_id, cohort_id, distinct_id, change, session_id, properties)
SELECT * FROM bench.changes;
SELECT round(extract(epoch FROM clock_timestamp() - :'t0'::timestamptz) * 1000);
ROLLBACK;
SQL
}

cs_log "same records from both"
cs_psql -At <<'SQL'
BEGIN;
SET cohortsync.queue_changes = on;
INSERT INTO cohortsync.membership_changes (project_id, cohort_id, distinct_id, change, session_id, properties)
SELECT * FROM bench.changes;
-- each change queued twice, once by each trigger: every (change, record) twice
SELECT CASE WHEN count(*) = 0 THEN 'identical records' ELSE count(*) || ' records differ' END
  FROM (SELECT destination, identity, record::text, change_id, phone_dropped, count(*) AS n
          FROM cohortsync.outbox GROUP BY 1, 2, 3, 4, 5) x
 WHERE n <> 2;
SELECT count(*) / 2 || ' records queued by each' FROM cohortsync.outbox;
ROLLBACK;
SQL

cs_log "$RUNS runs of $N changes each, alternately (ms)"
base=(); new=()
for r in $(seq 1 "$RUNS"); do
  b=$(run base); n=$(run new)
  base+=("$b"); new+=("$n")
  printf 'run %d: base %s ms, new %s ms\n' "$r" "$b" "$n"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
printf 'median: base %s ms, new %s ms\n' "$(median "${base[@]}")" "$(median "${new[@]}")"
