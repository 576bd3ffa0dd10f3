-- Full syncs applied in the background (issue #11): the page that completes a
-- full sync queues its swap (session 'applying'); a diff or another full sync
-- of the same cohort arriving meanwhile queues behind it; apply_pending()
-- applies the queue in order, as if every page had been applied on arrival.
-- This database has no worker (it is not cohortsync.database), and the test is
-- one transaction, so nothing is applied behind its back.
BEGIN;
SET client_min_messages = warning;
\ir 00_helpers.inc
SELECT plan(29);

SELECT cohortsync.connect_clevertap('ct', 'ACC', 'cs-secret-apply-pending', 'eu1', 'http://127.0.0.1:9');

-- The pages of one cohort, in arrival order. Cohort 'seq' gets the same pages,
-- each applied at once (apply_pending after every page): the sequential reference.
CREATE TEMP TABLE pages (n int PRIMARY KEY, action text, session text, ids text[], page int, total int);
INSERT INTO pages VALUES
  (1, 'members',        's1', ARRAY['a', 'b'],      1, 2),
  (2, 'members',        's1', ARRAY['c'],           2, 2),  -- completes s1
  (3, 'add_members',    'd1', ARRAY['x'],           1, 1),  -- behind s1
  (4, 'remove_members', 'd2', ARRAY['a'],           1, 1),
  (5, 'members',        's2', ARRAY['a', 'b', 'y'], 1, 1),  -- a second full sync behind s1
  (6, 'add_members',    'd3', ARRAY['z', 'x'],      1, 1),
  (7, 'members',        's1', ARRAY['late'],        1, 2);  -- late page of s1

CREATE FUNCTION pg_temp.send(cohort text, upto int, first int DEFAULT 1, each_applied boolean DEFAULT false)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE p record;
BEGIN
  FOR p IN SELECT * FROM pages WHERE n BETWEEN first AND upto ORDER BY n LOOP
    PERFORM pg_temp.ingest(pg_temp.page(p.action, cohort, p.session, p.ids, p.page, p.total));
    IF each_applied THEN PERFORM cohortsync.apply_pending(); END IF;
  END LOOP;
END $$;

SELECT pg_temp.send('seq', 7, each_applied => true);

-- the page completing s1 is answered, the swap is queued, nothing is applied yet
SELECT pg_temp.send('bg', 1);
SELECT is(pg_temp.ingest(pg_temp.page('members', 'bg', 's1', ARRAY['c'], 2, 2)), 'success',
          'the last page of a full sync is answered');
SELECT results_eq($$SELECT state, applying_since IS NOT NULL, completed_at IS NULL, apply_duration IS NULL
                      FROM cohortsync.sync_sessions WHERE cohort_id = 'bg' AND session_id = 's1'$$,
                  $$VALUES ('applying', true, true, true)$$, 'it leaves the session applying');
SELECT is(pg_temp.members_of('bg'), '{}', 'membership is unchanged');
SELECT is((SELECT count(*) FROM cohortsync.staged_members WHERE cohort_id = 'bg'), 3::bigint,
          'the snapshot stays staged');
SELECT is((SELECT count(*) FROM cohortsync.apply_queue WHERE cohort_id = 'bg' AND action = 'members'), 1::bigint,
          'the swap is queued');

-- a diff arriving meanwhile is recorded but queued behind the swap
SELECT is(pg_temp.ingest(pg_temp.page('add_members', 'bg', 'd1', ARRAY['x'])), 'success', 'a diff is answered');
SELECT is(pg_temp.members_of('bg'), '{}', 'and not applied before the swap');
SELECT is((SELECT times_received FROM cohortsync.sync_pages WHERE cohort_id = 'bg' AND session_id = 'd1'), 1,
          'its page is recorded');
SELECT pg_temp.send('bg', 4, 4);

-- a second full sync completing behind the first does not supersede it
SELECT pg_temp.send('bg', 5, 5);
SELECT results_eq($$SELECT session_id COLLATE "default", state FROM cohortsync.sync_sessions
                     WHERE cohort_id = 'bg' AND action = 'members' ORDER BY 1$$,
                  $$VALUES ('s1', 'applying'), ('s2', 'applying')$$,
                  'a session applying is never superseded; the second queues behind it');
SELECT pg_temp.send('bg', 6, 6);
SELECT is((SELECT array_agg(action ORDER BY id) FROM cohortsync.apply_queue WHERE cohort_id = 'bg'),
          ARRAY['members', 'add_members', 'remove_members', 'members', 'add_members'],
          'the queue holds the cohort''s work in arrival order');
SELECT is((SELECT count(*) FROM cohortsync.membership_changes WHERE cohort_id = 'bg'), 0::bigint,
          'no change is recorded before anything is applied');

-- a cohort with nothing queued takes its diffs at once
SELECT is(pg_temp.ingest(pg_temp.page('add_members', 'other', 'o1', ARRAY['q'])), 'success', 'a diff elsewhere');
SELECT is(pg_temp.members_of('other'), ARRAY['q'], 'is applied at once');

-- a late page of the applying session changes nothing
SELECT pg_temp.send('bg', 7, 7);

SELECT is(cohortsync.apply_pending(), 5::bigint, 'apply_pending() applies the five queued entries');
SELECT is(pg_temp.members_of('bg'), ARRAY['a', 'b', 'x', 'y', 'z'], 'membership is the sequential result');
SELECT is(pg_temp.members_of('bg'), pg_temp.members_of('seq'), 'the same as applying every page on arrival');
SELECT results_eq($$SELECT change, distinct_id COLLATE "default", session_id COLLATE "default"
                      FROM cohortsync.membership_changes WHERE cohort_id = 'bg' ORDER BY id$$,
                  $$SELECT change, distinct_id COLLATE "default", session_id COLLATE "default"
                      FROM cohortsync.membership_changes WHERE cohort_id = 'seq' ORDER BY id$$,
                  'history is the same, change by change, in the same order');
SELECT is((SELECT count(*) FROM cohortsync.membership_changes WHERE cohort_id = 'bg'), 11::bigint,
          'eleven changes: three by s1, x, a, four by s2, z and x again');
SELECT results_eq($$SELECT session_id COLLATE "default", state, members_added, members_removed,
                           apply_duration IS NOT NULL, completed_at >= applying_since
                      FROM cohortsync.sync_sessions WHERE cohort_id = 'bg' ORDER BY 1$$,
                  $$VALUES ('d1', 'completed', 1::bigint, 0::bigint, false, NULL::boolean),
                           ('d2', 'completed', 0, 1, false, NULL),
                           ('d3', 'completed', 2, 0, false, NULL),
                           ('s1', 'completed', 3, 0, true, true),
                           ('s2', 'completed', 2, 2, true, true)$$,
                  'sessions completed, with their counts, when and how long the swaps took');
SELECT is((SELECT member_count FROM cohortsync.cohorts WHERE cohort_id = 'bg'), 5::bigint, 'member count');
SELECT is((SELECT count(*) FROM cohortsync.outbox o JOIN cohortsync.membership_changes c ON c.id = o.change_id
            WHERE c.cohort_id = 'bg'), 22::bigint, 'two outbox records per change, written by the applier');
SELECT is((SELECT count(*) FROM cohortsync.apply_queue) + (SELECT count(*) FROM cohortsync.staged_members),
          0::bigint, 'queue and staging are empty');

-- idempotent
SELECT is(cohortsync.apply_pending(), 0::bigint, 'apply_pending() again applies nothing');
SELECT is(pg_temp.members_of('bg'), ARRAY['a', 'b', 'x', 'y', 'z'], 'and changes nothing');
SELECT is((SELECT count(*) FROM cohortsync.membership_changes WHERE cohort_id = 'bg'), 11::bigint,
          'nor the history');

-- once the queue is empty, diffs apply at once again
SELECT is(pg_temp.ingest(pg_temp.page('remove_members', 'bg', 'd4', ARRAY['z'])), 'success', 'a diff after the swaps');
SELECT is(pg_temp.members_of('bg'), ARRAY['a', 'b', 'x', 'y'], 'is applied at once');

-- a swap whose cohort was deleted meanwhile leaves nothing behind
SELECT pg_temp.ingest(pg_temp.page('members', 'gone', 'g1', ARRAY['m']));
DELETE FROM cohortsync.cohorts WHERE cohort_id = 'gone';
SELECT is(cohortsync.apply_pending(), 0::bigint, 'a deleted cohort''s queue goes with it');
SELECT is((SELECT count(*) FROM cohortsync.members WHERE cohort_id = 'gone'), 0::bigint, 'and nothing is applied');

SELECT * FROM finish();
ROLLBACK;
