-- Bounded history (issue #12): members_at() answers "who was in the cohort at T"
-- exactly as a replay of the history does; prune_history() deletes old history but
-- never current membership or the outbox, and members_at() stays exact from the
-- pruning horizon on (and refuses instants before it).
BEGIN;
SET client_min_messages = warning;
\ir 00_helpers.inc
SELECT plan(32);

SELECT cohortsync.connect_clevertap('ct', 'ACC', 'cs-secret-history', 'eu1', 'http://127.0.0.1:9');
SELECT cohortsync.pause_destination('ct');

-- ingest a page as if at instant ts: its changes and its session carry that time
CREATE FUNCTION pg_temp.at(ts timestamptz, action text, cohort text, session text, ids text[])
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  before bigint := coalesce((SELECT max(id) FROM cohortsync.membership_changes), 0);
  r text;
BEGIN
  r := pg_temp.ingest(pg_temp.page(action, cohort, session, ids));
  UPDATE cohortsync.membership_changes SET changed_at = ts WHERE id > before;
  UPDATE cohortsync.sync_sessions SET started_at = ts, last_page_at = ts, completed_at = ts
   WHERE cohort_id = cohort AND session_id = session;
  RETURN r;
END $$;

SELECT pg_temp.at('2024-01-01', 'add_members', 'h', 's1', ARRAY['A', 'B', 'C']);
SELECT pg_temp.at('2024-01-01', 'add_members', 'h2', 'x1', ARRAY['X']);
SELECT pg_temp.at('2024-01-02', 'remove_members', 'h', 's2', ARRAY['B']);
SELECT pg_temp.at('2024-01-03', 'add_members', 'h', 's3', ARRAY['B', 'D']);
SELECT pg_temp.at('2024-01-04', 'remove_members', 'h', 's4', ARRAY['A', 'C']);
SELECT pg_temp.at('2024-01-05', 'add_members', 'h', 's5', ARRAY['A']);
SELECT pg_temp.at('2024-01-06', 'remove_members', 'h', 's6', ARRAY['D']);

-- the replay the answers are checked against: the whole history, walked in order
CREATE TEMP TABLE history_copy AS SELECT * FROM cohortsync.membership_changes;
CREATE FUNCTION pg_temp.replay(c text, t timestamptz) RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE s text[] := '{}'; r record;
BEGIN
  FOR r IN SELECT * FROM history_copy WHERE cohort_id = c AND changed_at <= t ORDER BY id LOOP
    s := array_remove(s, r.distinct_id::text);
    IF r.change = 'added' THEN s := s || r.distinct_id::text; END IF;
  END LOOP;
  RETURN ARRAY(SELECT x FROM unnest(s) x ORDER BY 1);
END $$;
CREATE FUNCTION pg_temp.members_at(c text, t timestamptz) RETURNS text[] LANGUAGE sql AS $$
  SELECT coalesce(array_agg(m.distinct_id ORDER BY m.distinct_id), '{}')
    FROM cohortsync.members_at('1001', c, t) m
$$;
CREATE TEMP TABLE instants (t timestamptz);
INSERT INTO instants VALUES ('2023-12-31'), ('2024-01-01'), ('2024-01-01 12:00'), ('2024-01-02'),
  ('2024-01-03'), ('2024-01-03 12:00'), ('2024-01-04'), ('2024-01-05'), ('2024-01-06'), ('2024-02-01');

SELECT is(pg_temp.members_at('h', t), pg_temp.replay('h', t), 'members_at matches the replay at ' || t)
  FROM instants ORDER BY t;
SELECT is(pg_temp.members_at('h', now()), pg_temp.members_of('h'), 'members_at(now) is the current membership');
SELECT is((SELECT properties ->> 'email' FROM cohortsync.members_at('1001', 'h', '2024-01-03') WHERE distinct_id = 'B'),
          'B@example.com', 'members_at gives the member as sent when they joined');

-------------------------------------------------------------------------------
-- prune to a horizon between the 3rd and the 4th
-------------------------------------------------------------------------------
CREATE TEMP TABLE kept AS
SELECT (SELECT md5(string_agg(m::text, ',' ORDER BY m::text)) FROM cohortsync.members m) AS members,
       (SELECT md5(string_agg(o::text, ',' ORDER BY o::text)) FROM cohortsync.outbox o) AS outbox,
       (SELECT count(*) FROM cohortsync.outbox) AS queued;

SELECT throws_ok($$SELECT cohortsync.prune_history('-1 day')$$, '22023', NULL,
                 'a negative interval is refused');
SELECT is((SELECT p::text FROM cohortsync.prune_history(now() - '2024-01-03 12:00'::timestamptz) p),
          '(2,3,3)',
          'prune_history: 2 changes (B''s superseded join and leave), sessions s1-s3 and their pages');
SELECT is((SELECT md5(string_agg(m::text, ',' ORDER BY m::text)) FROM cohortsync.members m),
          (SELECT members FROM kept), 'the members are untouched');
SELECT is((SELECT md5(string_agg(o::text, ',' ORDER BY o::text)) FROM cohortsync.outbox o),
          (SELECT outbox FROM kept), 'the outbox is untouched');
SELECT cmp_ok((SELECT queued FROM kept), '>', 0::bigint, '(it holds records)');
SELECT is(pg_temp.changes_of('h'),
          ARRAY['added:A', 'added:C', 'added:B', 'added:D', 'removed:A', 'removed:C', 'added:A', 'removed:D'],
          'of each member''s changes before the horizon, only a last join is kept');
SELECT is(pg_temp.changes_of('h2'), ARRAY['added:X'], 'a cohort without later changes keeps its join');
SELECT is((SELECT string_agg(session_id, ',' ORDER BY session_id) FROM cohortsync.sync_sessions),
          's4,s5,s6,x1', 'finished sessions before the horizon are gone, not a cohort''s last one');
SELECT is((SELECT string_agg(session_id, ',' ORDER BY session_id) FROM cohortsync.sync_pages),
          's4,s5,s6,x1', 'and so are their pages');

SELECT is(pg_temp.members_at('h', t), pg_temp.replay('h', t), 'after pruning, members_at matches at ' || t)
  FROM instants WHERE t >= '2024-01-03 12:00' ORDER BY t;
SELECT is(pg_temp.members_at('h2', '2024-01-05'), ARRAY['X'], 'and for the other cohort');
SELECT throws_ok($$SELECT * FROM cohortsync.members_at('1001', 'h', '2024-01-02')$$, '22000', NULL,
                 'members_at refuses an instant before the horizon');

SELECT is((SELECT p::text FROM cohortsync.prune_history(now() - '2024-01-03 12:00'::timestamptz) p),
          '(0,0,0)', 'pruning again to the same horizon deletes nothing');

-------------------------------------------------------------------------------
-- What the foreign keys did (0.3.0 replaced them with triggers, for pg_restore --jobs)
-------------------------------------------------------------------------------
DELETE FROM cohortsync.cohorts WHERE cohort_id = 'h';
SELECT is((SELECT count(*) FROM cohortsync.sync_sessions WHERE cohort_id = 'h')
          + (SELECT count(*) FROM cohortsync.sync_pages WHERE cohort_id = 'h'), 0::bigint,
          'deleting a cohort deletes its sessions and their pages');
UPDATE cohortsync.destinations SET name = 'ct-renamed' WHERE name = 'ct';
SELECT is((SELECT string_agg(name, ',') FROM cohortsync.destination_secrets), 'ct-renamed',
          'renaming a destination renames its passcode''s row');
SELECT cohortsync.disconnect_clevertap('ct-renamed');
SELECT is((SELECT count(*) FROM cohortsync.destination_secrets), 0::bigint,
          'disconnecting a destination deletes its passcode');

SELECT * FROM finish();
ROLLBACK;
