-- The swap of a later full sync computes the difference in one pass (a merge full join
-- of the sorted staged session with the stored cohort) and writes only the changed
-- members, by ctid. These cases pin down what that pass decides: a member sent in two
-- pages counts from the higher page, both when that makes it differ from what is stored
-- and when it makes it equal; only who differs is rewritten; one history row per real
-- change; counts.
BEGIN;
SET client_min_messages = warning;
\ir 00_helpers.inc
SELECT plan(18);

SELECT is(pg_temp.ingest(pg_temp.page('members', 'k', 'k1', ARRAY['a', 'b', 'c', 'd'])), 'success', 'first sync');
SELECT cohortsync.apply_pending();
SELECT lives_ok($$SELECT cohortsync.connect_clevertap('ct', 'ACC', 'cs-secret-pass-k', 'us1')$$,
                'a destination, so that the swap queues its changes');
CREATE TEMP TABLE before_k2 AS SELECT distinct_id, ctid AS stored FROM cohortsync.members WHERE cohort_id = 'k';

-- a: two pages, the higher one with a new email; c: the lower page differs, the higher
-- one is as stored; b stays as is; d leaves; e and f join
SELECT is(pg_temp.ingest(jsonb_set(pg_temp.page('members', 'k', 'k2', ARRAY['a', 'b', 'e'], 1, 3),
                          '{parameters,members,0,email}', '"old-a@example.com"')), 'success', 'k2 page 1');
SELECT is(pg_temp.ingest(jsonb_set(jsonb_set(pg_temp.page('members', 'k', 'k2', ARRAY['a', 'c'], 2, 3),
                          '{parameters,members,0,email}', '"new-a@example.com"'),
                          '{parameters,members,1,email}', '"lower-c@example.com"')), 'success', 'k2 page 2');
SELECT is(pg_temp.ingest(pg_temp.page('members', 'k', 'k2', ARRAY['c', 'f'], 3, 3)), 'success', 'k2 page 3');
SELECT cohortsync.apply_pending();

SELECT is(pg_temp.members_of('k'), ARRAY['a', 'b', 'c', 'e', 'f'], 'membership replaced by the snapshot');
SELECT is(pg_temp.changes_of('k'),
          ARRAY['added:a', 'added:b', 'added:c', 'added:d', 'removed:d', 'added:e', 'added:f'],
          'one history row per real change, who left before who joined');
SELECT results_eq($$SELECT members_added, members_removed, state FROM cohortsync.sync_sessions WHERE session_id = 'k2'$$,
                  $$VALUES (2::bigint, 1::bigint, 'completed'::text)$$, 'the session counts the changes');
SELECT is((SELECT member_count FROM cohortsync.cohorts WHERE cohort_id = 'k'), 5::bigint, 'member count follows');
SELECT is((SELECT email FROM cohortsync.members WHERE cohort_id = 'k' AND distinct_id = 'a'), 'new-a@example.com',
          'a member sent in two pages takes the higher page''s fields');
SELECT is((SELECT properties ->> 'email' FROM cohortsync.members WHERE cohort_id = 'k' AND distinct_id = 'a'), 'new-a@example.com',
          'and its properties');
SELECT is((SELECT email FROM cohortsync.members WHERE cohort_id = 'k' AND distinct_id = 'c'), 'c@example.com',
          'a lower page''s differing copy is ignored');
SELECT is((SELECT array_agg(b.distinct_id ORDER BY b.distinct_id) FROM before_k2 b
             JOIN cohortsync.members m ON m.cohort_id = 'k' AND m.distinct_id = b.distinct_id
            WHERE m.ctid <> b.stored), ARRAY['a'],
          'only the member that differs is rewritten');
SELECT is((SELECT count(*) FROM cohortsync.staged_members WHERE session_id = 'k2'), 0::bigint, 'staging is emptied');
SELECT bag_eq($$SELECT c.change || ':' || c.distinct_id FROM cohortsync.outbox o
                 JOIN cohortsync.membership_changes c ON c.id = o.change_id
                WHERE c.session_id = 'k2' AND o.record ->> 'type' = 'event'$$,
              $$VALUES ('removed:d'), ('added:e'), ('added:f')$$,
              'one event queued per change');
SELECT is((SELECT array_agg(record ->> 'identity') FROM cohortsync.outbox WHERE change_id IS NULL),
          ARRAY['a'], 'one profile update, for the refreshed member');

-- the same snapshot again: nothing changes, nothing is recorded
SELECT pg_temp.ingest(jsonb_set(pg_temp.page('members', 'k', 'k3', ARRAY['a', 'b', 'c', 'e', 'f']),
                      '{parameters,members,0,email}', '"new-a@example.com"'));
SELECT cohortsync.apply_pending();
SELECT results_eq($$SELECT members_added, members_removed, state FROM cohortsync.sync_sessions WHERE session_id = 'k3'$$,
                  $$VALUES (0::bigint, 0::bigint, 'completed'::text)$$, 'an unchanged snapshot changes nothing');
SELECT is((SELECT count(*) FROM cohortsync.membership_changes WHERE session_id = 'k3'), 0::bigint, 'and records nothing');

SELECT * FROM finish();
ROLLBACK;
