-- Full syncs ('members'): staged until every page has arrived, then swapped in.
-- The swap runs in the background (apply_pending.sql tests that); here
-- cohortsync.apply_pending() applies it at once after the last page.
BEGIN;
SET client_min_messages = warning;
\ir 00_helpers.inc
SELECT plan(32);

-- A three-page session delivered out of order, with page 2 twice.
SELECT is(pg_temp.ingest(pg_temp.page('members', 'c1', 's1', ARRAY['g', 'h', 'i'], 3, 3)), 'success', 'page 3 of 3 first');
SELECT is(pg_temp.members_of('c1'), '{}', 'nothing applied while pages are missing');
SELECT is(pg_temp.ingest(pg_temp.page('members', 'c1', 's1', ARRAY['d', 'e', 'f'], 2, 3)), 'success', 'page 2');
SELECT is(pg_temp.ingest(pg_temp.page('members', 'c1', 's1', ARRAY['d', 'e', 'f'], 2, 3)), 'success', 'page 2 again');
SELECT is(pg_temp.members_of('c1'), '{}', 'still nothing applied after a duplicated page');
SELECT is((SELECT count(*) FROM cohortsync.staged_members WHERE session_id = 's1'), 6::bigint,
          'the duplicated page was staged once');
SELECT is((SELECT times_received FROM cohortsync.sync_pages WHERE session_id = 's1' AND page_count = 2), 2,
          'the duplicate is counted');
SELECT is(pg_temp.ingest(pg_temp.page('members', 'c1', 's1', ARRAY['a', 'b', 'c'], 1, 3)), 'success', 'page 1 last');
SELECT cohortsync.apply_pending();
SELECT is(pg_temp.members_of('c1'), ARRAY['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i'], 'all pages applied at once');
SELECT is(pg_temp.changes_of('c1'),
          ARRAY['added:a', 'added:b', 'added:c', 'added:d', 'added:e', 'added:f', 'added:g', 'added:h', 'added:i'],
          'one added change per member, none for the duplicate');
SELECT is((SELECT count(*) FROM cohortsync.staged_members), 0::bigint, 'staging is emptied');
SELECT results_eq($$SELECT state, pages_received, total_pages, members_added FROM cohortsync.sync_sessions WHERE session_id = 's1'$$,
                  $$VALUES ('completed', 3, 3, 9::bigint)$$, 'the session is completed');
SELECT is((SELECT member_count FROM cohortsync.cohorts WHERE cohort_id = 'c1'), 9::bigint, 'member count');

-- A page of the completed session arriving late changes nothing.
SELECT is(pg_temp.ingest(pg_temp.page('members', 'c1', 's1', ARRAY['zzz'], 1, 3)), 'success', 'late page answered');
SELECT is(pg_temp.members_of('c1'), ARRAY['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i'], 'late page of a completed session ignored');

-- A second full sync that removes members and adds one; fields of a stayer change.
SELECT is(pg_temp.ingest(pg_temp.page('members', 'c1', 's2', ARRAY['a', 'c', 'e', 'z'], 1, 2)), 'success', 's2 page 1');
SELECT is(pg_temp.ingest(jsonb_set(pg_temp.page('members', 'c1', 's2', ARRAY['g', 'i'], 2, 2),
                          '{parameters,members,0,email}', '"new-g@example.com"')), 'success', 's2 page 2');
SELECT cohortsync.apply_pending();
SELECT is(pg_temp.members_of('c1'), ARRAY['a', 'c', 'e', 'g', 'i', 'z'], 'membership replaced by the snapshot');
SELECT bag_eq($$SELECT change, distinct_id FROM cohortsync.membership_changes WHERE session_id = 's2'$$,
              $$VALUES ('removed', 'b'), ('removed', 'd'), ('removed', 'f'), ('removed', 'h'), ('added', 'z')$$,
              'only the difference is recorded');
SELECT is((SELECT email FROM cohortsync.members WHERE cohort_id = 'c1' AND distinct_id = 'g'), 'new-g@example.com',
          'a stayer''s fields are refreshed without a change row');
SELECT is((SELECT properties ->> 'email' FROM cohortsync.membership_changes WHERE session_id = 's2' AND distinct_id = 'b'),
          'b@example.com', 'a removed change carries the member as stored');
SELECT is((SELECT member_count FROM cohortsync.cohorts WHERE cohort_id = 'c1'), 6::bigint, 'member count follows');

-- A new session supersedes an unfinished one; its late pages are ignored.
SELECT is(pg_temp.ingest(pg_temp.page('members', 'c1', 's3', ARRAY['q'], 1, 2)), 'success', 's3 page 1 (never finished)');
SELECT is(pg_temp.ingest(pg_temp.page('members', 'c1', 's4', ARRAY['a'], 1, 1)), 'success', 's4 (single page) supersedes s3');
SELECT cohortsync.apply_pending();
SELECT is(pg_temp.ingest(pg_temp.page('members', 'c1', 's3', ARRAY['r'], 2, 2)), 'success', 's3 page 2 arrives late');
SELECT is(pg_temp.members_of('c1'), ARRAY['a'], 'the superseded session never applies');
SELECT results_eq($$SELECT session_id COLLATE "default", state FROM cohortsync.sync_sessions WHERE session_id IN ('s3', 's4') ORDER BY 1$$,
                  $$VALUES ('s3', 'superseded'), ('s4', 'completed')$$, 'session states');

-- A member sent in two pages of one session counts once, with the fields of the higher page.
SELECT is(pg_temp.ingest(jsonb_set(pg_temp.page('members', 'c2', 'd1', ARRAY['x', 'y'], 2, 2),
                          '{parameters,members,0,email}', '"page2-x@example.com"')), 'success', 'd1 page 2 first');
SELECT is(pg_temp.ingest(pg_temp.page('members', 'c2', 'd1', ARRAY['w', 'x'], 1, 2)), 'success', 'd1 page 1 completes it');
SELECT cohortsync.apply_pending();
SELECT results_eq($$SELECT distinct_id COLLATE "default", email FROM cohortsync.members WHERE cohort_id = 'c2' ORDER BY 1$$,
                  $$VALUES ('w', 'w@example.com'), ('x', 'page2-x@example.com'), ('y', 'y@example.com')$$,
                  'x is a member once, as page 2 sent it');
SELECT is(pg_temp.changes_of('c2'), ARRAY['added:w', 'added:x', 'added:y'], 'one added change per member');

-- Deleting a cohort removes its members and staged rows (the cascade, set-based).
SELECT pg_temp.ingest(pg_temp.page('members', 'c1', 's5', ARRAY['p'], 1, 2));
DELETE FROM cohortsync.cohorts WHERE cohort_id = 'c1';
SELECT is((SELECT count(*) FROM cohortsync.members WHERE cohort_id = 'c1')
          + (SELECT count(*) FROM cohortsync.staged_members WHERE cohort_id = 'c1'), 0::bigint,
          'deleting a cohort deletes its members and staged rows');

SELECT * FROM finish();
ROLLBACK;
