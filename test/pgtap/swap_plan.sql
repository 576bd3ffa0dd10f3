-- The full-sync swap must not depend on luck. A just-filled staging table whose
-- statistics describe an older, tiny session leads the planner, unguarded, to a nested
-- loop whose inner side returns the whole staged session for every stored member:
-- quadratic, and over ten minutes at 200,000 members. This file sets that trap, shows
-- that it is real (the unguarded plan falls into it), and checks that the plan the
-- swap actually uses does not.
BEGIN;
SET client_min_messages = warning;
\ir 00_helpers.inc
SELECT plan(8);

-- the cohort has members already (a first fill takes a simpler path), and statistics
-- are taken while staging holds one tiny session of another cohort
SELECT pg_temp.ingest(pg_temp.page('add_members', 'big', 'd0', pg_temp.ids('old', 500)));
SELECT pg_temp.ingest(pg_temp.page('members', 'tiny', 't0', ARRAY['x'], 1, 2));
ANALYZE cohortsync.staged_members;
ANALYZE cohortsync.members;

-- then 20 of 21 pages of a 21,000-member full sync arrive
SELECT count(*) FROM generate_series(1, 20) pg,
       LATERAL pg_temp.ingest(pg_temp.page('members', 'big', 'b1', pg_temp.ids('u', 1000, pg * 1000), pg, 21)) r;

SELECT matches(cohortsync.explain_swap('1001', 'big', 'b1', guarded => false), 'Nested Loop',
               'the trap is set: unguarded, the planner picks a nested loop');
SELECT doesnt_match(cohortsync.explain_swap('1001', 'big', 'b1'), 'Nested Loop',
                    'the swap''s own plan has no nested loop');
SELECT matches(cohortsync.explain_swap('1001', 'big', 'b1'), '(Hash|Merge) Anti Join',
               'it computes the difference with a hash or merge anti join');
-- the swap of a 0.2.0 staging session: one merge full join of the sorted session with
-- the cohort, then writes by ctid (a TID scan of an array, no second join)
SELECT matches(cohortsync.explain_swap('1001', 'big', 'b1'), 'Merge Full Join',
               'the one-pass swap computes the difference with a merge full join');
SELECT matches(cohortsync.explain_swap('1001', 'big', 'b1'), 'Tid Scan',
               'and writes the changed members through their ctid');

-- and the last page completes the swap with the right result
SELECT is(pg_temp.ingest(pg_temp.page('members', 'big', 'b1', pg_temp.ids('u', 1000, 21000), 21, 21)), 'success', 'last page');
SELECT cohortsync.apply_pending();   -- the swap, at once rather than in the background
SELECT is((SELECT member_count FROM cohortsync.cohorts WHERE cohort_id = 'big'), 21000::bigint, 'all 21,000 members swapped in');
SELECT is((SELECT members_removed FROM cohortsync.sync_sessions WHERE session_id = 'b1'), 500::bigint,
          'the 500 earlier members not in the snapshot left');

SELECT * FROM finish();
ROLLBACK;
