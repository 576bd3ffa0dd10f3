-- The cost of one add_members page against COPY, for bench/ingest.sh part 3 (issue #11,
-- item 6). Variables: :runs, :pages (pages per run); bench.dir: where the COPY files go.
--
-- Four peers, each filling a cohort (or table) of its own from empty, one 1000-member
-- page per transaction:
--   c         cohortsync.ingest
--   sql       bench.ingest_sql, the plain-SQL peer of bench/peer_ingest.sql
--   copy      COPY of the page's 1000 rows into bench.copy_members, a table shaped like
--             cohortsync.members with its primary key and nothing else
--   copy_all  COPY of everything an add_members page of new members must write: those
--             1000 rows, and their 1000 history rows into bench.copy_changes, shaped like
--             cohortsync.membership_changes with its two indexes (no trigger)
-- They run in one backend, page by page, the order rotating every page, so that load on
-- a shared machine falls on all of them alike. A page's time is measured in the server:
-- "exec" up to its COMMIT, "total" with the COMMIT (the WAL flush) included.
SET client_min_messages = warning;

CREATE TABLE bench.copy_members (LIKE cohortsync.members INCLUDING ALL);
CREATE TABLE bench.copy_members_all (LIKE cohortsync.members INCLUDING ALL);
CREATE TABLE bench.copy_changes (LIKE cohortsync.membership_changes INCLUDING ALL);
CREATE TABLE bench.cost_pages (run int, n int, body jsonb, PRIMARY KEY (run, n));
CREATE TABLE bench.cost_lat (peer text, run int, n int, exec_ms float8, total_ms float8);

INSERT INTO bench.cost_pages
SELECT run, n, bench.make_page('add_members', 'cost', 'cost-' || run, format('cost%s-', run),
                               n, :pages, n * 1000)
  FROM generate_series(1, :runs) run, generate_series(1, :pages) n;

-- The COPY peers' rows, two files per page: members, and their history rows.
DO $$
DECLARE r record;
BEGIN
  FOR r IN SELECT * FROM bench.cost_pages LOOP
    EXECUTE format($q$COPY (SELECT '1001', 'copy-' || %s, e->>'mixpanel_distinct_id', e->>'email',
                                  e->>'phone_number', e->>'first_name', e->>'last_name', e
                             FROM jsonb_array_elements(%L::jsonb -> 'parameters' -> 'members') e)
                     TO %L (FORMAT csv)$q$,
                   r.run, r.body, format('%s/cost-%s-%s-members.csv', current_setting('bench.dir'), r.run, r.n));
    EXECUTE format($q$COPY (SELECT '1001', 'copy-' || %s, e->>'mixpanel_distinct_id', 'added', 'cost-' || %s, e
                             FROM jsonb_array_elements(%L::jsonb -> 'parameters' -> 'members') e)
                     TO %L (FORMAT csv)$q$,
                   r.run, r.run, r.body, format('%s/cost-%s-%s-changes.csv', current_setting('bench.dir'), r.run, r.n));
  END LOOP;
END $$;

-- The pages of one run: every peer's page n, then n + 1, the peers' order rotating.
CREATE PROCEDURE bench.cost_run(run int, pages int, dir text)
LANGUAGE plpgsql AS $$
DECLARE
  peers text[] := ARRAY['c', 'sql', 'copy', 'copy_all'];
  peer text;
  body jsonb;
  file text;
  t0 timestamptz;
  t1 timestamptz;
  lat_peer text[] := '{}';
  lat_n int[] := '{}';
  lat_exec float8[] := '{}';
  lat_total float8[] := '{}';
BEGIN
  FOR i IN 1..pages LOOP
    FOR k IN 0..3 LOOP
      peer := peers[(i + k) % 4 + 1];
      SELECT p.body INTO body FROM bench.cost_pages p WHERE p.run = cost_run.run AND p.n = i;
      body := jsonb_set(body, '{parameters,mixpanel_cohort_id}', to_jsonb(format('cost-%s-%s', peer, run)));
      file := format('%s/cost-%s-%s', dir, run, i);
      COMMIT;
      t0 := clock_timestamp();
      IF peer = 'c' THEN
        PERFORM cohortsync.ingest(body);
      ELSIF peer = 'sql' THEN
        PERFORM bench.ingest_sql(body);
      ELSIF peer = 'copy' THEN
        EXECUTE format('COPY bench.copy_members (project_id, cohort_id, distinct_id, email, phone,'
                       ' first_name, last_name, properties) FROM %L (FORMAT csv)', file || '-members.csv');
      ELSE
        EXECUTE format('COPY bench.copy_members_all (project_id, cohort_id, distinct_id, email, phone,'
                       ' first_name, last_name, properties) FROM %L (FORMAT csv)', file || '-members.csv');
        EXECUTE format('COPY bench.copy_changes (project_id, cohort_id, distinct_id, change, session_id,'
                       ' properties) FROM %L (FORMAT csv)', file || '-changes.csv');
      END IF;
      t1 := clock_timestamp();
      COMMIT;
      lat_peer := lat_peer || peer;
      lat_n := lat_n || i;
      lat_exec := lat_exec || extract(epoch FROM t1 - t0)::float8 * 1000;
      lat_total := lat_total || extract(epoch FROM clock_timestamp() - t0)::float8 * 1000;
    END LOOP;
  END LOOP;
  INSERT INTO bench.cost_lat
  SELECT u.peer, run, u.n, u.e, u.t FROM unnest(lat_peer, lat_n, lat_exec, lat_total) u(peer, n, e, t);
END $$;

-- Per peer: the median page (exec and total), on the first three pages of a cohort and
-- on the later ones, and each median divided by COPY's.
CREATE VIEW bench.cost_summary AS
WITH m AS (
  SELECT peer,
         count(*) AS pages,
         percentile_cont(0.5) WITHIN GROUP (ORDER BY total_ms) AS total,
         percentile_cont(0.5) WITHIN GROUP (ORDER BY exec_ms) AS exec,
         percentile_cont(0.5) WITHIN GROUP (ORDER BY exec_ms) FILTER (WHERE n <= 3) AS exec_first,
         percentile_cont(0.5) WITHIN GROUP (ORDER BY exec_ms) FILTER (WHERE n > 3) AS exec_later
    FROM bench.cost_lat GROUP BY peer)
SELECT m.peer, m.pages,
       round(m.total::numeric, 2) AS total_ms, round((m.total / c.total)::numeric, 2) AS total_vs_copy,
       round(m.exec::numeric, 2) AS exec_ms, round((m.exec / c.exec)::numeric, 2) AS exec_vs_copy,
       round(m.exec_first::numeric, 2) AS first3_ms, round(m.exec_later::numeric, 2) AS later_ms,
       round((m.exec_later / c.exec_later)::numeric, 2) AS later_vs_copy
  FROM m CROSS JOIN (SELECT * FROM m WHERE peer = 'copy') c
 ORDER BY array_position(ARRAY['c', 'sql', 'copy', 'copy_all'], m.peer);
