-- Data for bench/ingest.sh. Variables: :runs, :pages (per run), :dir (COPY files).
SET client_min_messages = warning;

-- The cohort every page goes to already holds 1,000,000 members.
INSERT INTO cohortsync.cohorts (project_id, cohort_id, name, member_count)
VALUES ('1001', 'big', 'Bench big', 1000000);
INSERT INTO cohortsync.members (project_id, cohort_id, distinct_id, email, phone, first_name, last_name, properties)
SELECT '1001', 'big', 'm' || i, 'm' || i || '@example.com', '+1 555 0100000', 'First' || i, 'Last' || i,
       jsonb_build_object('mixpanel_distinct_id', 'm' || i, 'email', 'm' || i || '@example.com',
                          'first_name', 'First' || i, 'last_name', 'Last' || i, '$CleverTap_user_id', 'ct-m' || i)
  FROM generate_series(1, 1000000) i;

-- Pages for every peer, kind and run, each with members no other page has.
CREATE TABLE bench.pages (peer text, kind text, run int, n int, body jsonb, PRIMARY KEY (peer, kind, run, n));
INSERT INTO bench.pages
SELECT peer, kind, run, n,
       bench.make_page(CASE kind WHEN 'add' THEN 'add_members' ELSE 'members' END, 'big',
                       format('%s-%s-%s', peer, kind, run), format('%s%s%s-', peer, kind, run),
                       n, CASE kind WHEN 'add' THEN :pages ELSE 100000 END, n * 1000)
  FROM unnest(ARRAY['c', 'sql', 'copy']) peer, unnest(ARRAY['add', 'members']) kind,
       generate_series(1, :runs) run, generate_series(1, :pages) n;

-- The COPY peer reads the same rows from files: for 'add' the members and their
-- change rows, for 'members' the staged rows.
DO $$
DECLARE r record;
BEGIN
  FOR r IN SELECT * FROM bench.pages WHERE peer = 'copy' LOOP
    IF r.kind = 'add' THEN
      EXECUTE format($q$COPY (SELECT '1001', 'big', e->>'mixpanel_distinct_id', e->>'email', e->>'phone_number',
                                    e->>'first_name', e->>'last_name', e
                               FROM jsonb_array_elements(%L::jsonb -> 'parameters' -> 'members') e)
                       TO %L (FORMAT csv)$q$, r.body, format('%s/copy-add-%s-%s-members.csv', current_setting('bench.dir'), r.run, r.n));
      EXECUTE format($q$COPY (SELECT '1001', 'big', e->>'mixpanel_distinct_id', 'added', 'copy', e
                               FROM jsonb_array_elements(%L::jsonb -> 'parameters' -> 'members') e)
                       TO %L (FORMAT csv)$q$, r.body, format('%s/copy-add-%s-%s-changes.csv', current_setting('bench.dir'), r.run, r.n));
    ELSE
      EXECUTE format($q$COPY (SELECT '1001', 'big', 'copy-' || %s, %s, e->>'mixpanel_distinct_id', e->>'email', e->>'phone_number',
                                    e->>'first_name', e->>'last_name', e
                               FROM jsonb_array_elements(%L::jsonb -> 'parameters' -> 'members') e)
                       TO %L (FORMAT csv)$q$, r.run, r.n, r.body, format('%s/copy-members-%s-%s-staged.csv', current_setting('bench.dir'), r.run, r.n));
    END IF;
  END LOOP;
END $$;

-- One sequence per (peer, kind, run) hands pgbench the next page number.
DO $$
DECLARE r record;
BEGIN
  FOR r IN SELECT DISTINCT peer, kind, run FROM bench.pages LOOP
    EXECUTE format('CREATE SEQUENCE bench.%I', format('seq_%s_%s_%s', r.peer, r.kind, r.run));
  END LOOP;
END $$;

VACUUM ANALYZE;
CHECKPOINT;
