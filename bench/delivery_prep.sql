-- Objects for bench/delivery.sh. Variables: :api_url (the stand-in), :dir (work directory).
SET client_min_messages = warning;
CREATE SCHEMA bench;

-- The destination: the local stand-in, as scripts/demo connects it.
BEGIN;
SET LOCAL log_statement = 'none';
SELECT cohortsync.connect_clevertap('bench', 'BENCH-ACC', 'bench-pass', 'eu1', :'api_url');
COMMIT;

INSERT INTO cohortsync.cohorts (project_id, cohort_id, name, member_count)
VALUES ('1001', 'bench', 'Bench cohort', 0);

-- A backlog the real way: rows in membership_changes, turned into outbox rows (an event
-- and a profile record per change) by the statement-level trigger, in one statement.
-- The trigger queues only what ingest writes unless cohortsync.queue_changes is on.
CREATE FUNCTION bench.fill(tag text, n int) RETURNS bigint LANGUAGE sql
SET cohortsync.queue_changes = on AS $$
  WITH ins AS (
    INSERT INTO cohortsync.membership_changes (project_id, cohort_id, distinct_id, change, session_id, properties)
    SELECT '1001', 'bench', tag || '-' || i, 'added', tag,
           jsonb_build_object('mixpanel_distinct_id', tag || '-' || i, 'email', tag || '-' || i || '@example.com',
                              'first_name', 'First' || i, 'last_name', 'Last' || i,
                              'phone_number', '+1 555 01' || lpad((i % 100000)::text, 5, '0'),
                              '$CleverTap_user_id', 'ct-' || tag || '-' || i)
      FROM generate_series(1, n) i
    RETURNING 1)
  SELECT count(*) FROM ins
$$;

-- Latency: single-member add_members pages through cohortsync.ingest, one transaction
-- each, spaced `gap` seconds apart. The commit time is clock_timestamp() taken by the
-- statement that runs right after COMMIT returns (committed_at); before_commit is taken
-- by the last statement before COMMIT, so the true commit lies between the two.
CREATE TABLE bench.lat_commit (run int, i int, identity text, before_commit float8, committed_at float8);
CREATE TABLE bench.lat_arrival (run int, identity text, arrived_at float8);
CREATE PROCEDURE bench.latency(run int, n int, gap float8) LANGUAGE plpgsql AS $$
DECLARE
  pages jsonb[];
  t0 float8;
  t1 float8;
BEGIN
  SELECT array_agg(jsonb_build_object(
           'action', 'add_members',
           'parameters', jsonb_build_object(
             'mixpanel_project_id', '1001', 'mixpanel_cohort_id', 'lat',
             'mixpanel_cohort_name', 'Latency', 'mixpanel_session_id', 'lat-' || run || '-' || i,
             'page_info', jsonb_build_object('total_pages', 1, 'page_count', 1),
             'members', jsonb_build_array(jsonb_build_object(
                'mixpanel_distinct_id', 'lat-' || run || '-' || i,
                'email', 'lat' || i || '@example.com', 'first_name', 'Lat', 'last_name', 'Ency',
                '$CleverTap_user_id', 'ct-lat-' || run || '-' || i)))) ORDER BY i)
    INTO pages FROM generate_series(1, n) i;
  COMMIT;
  FOR i IN 1..n LOOP
    PERFORM cohortsync.ingest(pages[i]);
    t0 := extract(epoch FROM clock_timestamp());
    COMMIT;
    t1 := extract(epoch FROM clock_timestamp());
    INSERT INTO bench.lat_commit VALUES (run, i, 'ct-lat-' || run || '-' || i, t0, t1);
    COMMIT;
    PERFORM pg_sleep(gap);
  END LOOP;
END $$;
