#!/usr/bin/env bash
# Staging a full sync's pages, on one cluster: stage_page's heap multi-inserts against the
# stage_members statement (which a user's no-op statement trigger on staged_members
# forces), in rounds that alternate which goes first. Only the ingest calls are timed;
# each round stages PAGES pages of a new 1000-page session, then drops it (untimed).
#
#   ROUNDS=6 PAGES=1000 bench/stage_ab.sh
source "$(dirname "$0")/../scripts/lib.sh"
cd "$CS_TOP"
ROUNDS=${ROUNDS:-5}; PAGES=${PAGES:-300}
cs_build; cs_workdir; cs_tmp_install
cs_start_cluster <<'EOC'
fsync = on
shared_buffers = 1GB
max_wal_size = 16GB
checkpoint_timeout = 30min
autovacuum = off
EOC
export PGDATABASE=postgres
cs_psql -c "CREATE EXTENSION cohortsync" -f bench/peer_ingest.sql -f bench/make_page.sql
cs_psql <<'EOS'
CREATE TABLE bench.ab (mode text, round int, n int, ms float8);
CREATE FUNCTION public.ab_noop() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
CREATE PROCEDURE bench.stage(mode text, round int, pages int)
LANGUAGE plpgsql AS $$
DECLARE body jsonb; t0 timestamptz;
BEGIN
  FOR n IN 1..pages LOOP
    body := bench.make_page('members', mode || round, mode || round, 'u', n, 1000, (n - 1) * 1000 + 1);
    t0 := clock_timestamp();
    PERFORM cohortsync.ingest(body);
    INSERT INTO bench.ab VALUES (mode, round, n, extract(epoch FROM clock_timestamp() - t0) * 1000);
    COMMIT;
  END LOOP;
END $$;
EOS
for r in $(seq 1 "$ROUNDS"); do
  order="fast stmt"; [ $((r % 2)) = 0 ] && order="stmt fast"
  for mode in $order; do
    [ $mode = stmt ] && cs_psql -c "CREATE TRIGGER ab_noop AFTER INSERT ON cohortsync.staged_members FOR EACH STATEMENT EXECUTE FUNCTION public.ab_noop()"
    cs_psql -c "CALL bench.stage('$mode', $r, $PAGES)"
    [ $mode = stmt ] && cs_psql -c "DROP TRIGGER ab_noop ON cohortsync.staged_members"
    cs_psql -c "DELETE FROM cohortsync.cohorts" -c "VACUUM cohortsync.staged_members" -c "CHECKPOINT"
  done
done
cs_as_user psql -X -c "SELECT round, mode, count(*), round(sum(ms)::numeric/1000, 2) AS s, round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 2) AS p50_ms FROM bench.ab GROUP BY 1, 2 ORDER BY 1, 2"
cs_as_user psql -X -c "SELECT mode, round(sum(ms)::numeric/1000, 2) AS s, round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 2) AS p50_ms FROM bench.ab GROUP BY 1 ORDER BY 1"
cs_stop_cluster
