-- Nothing is granted to PUBLIC; a role granted only EXECUTE on ingest can ingest
-- (the function is SECURITY DEFINER) but cannot read or write the tables itself.
BEGIN;
SET client_min_messages = warning;
\ir 00_helpers.inc
SELECT plan(7);

CREATE ROLE cs_test_ingest;
CREATE ROLE cs_test_nobody;
GRANT USAGE ON SCHEMA cohortsync TO cs_test_ingest, cs_test_nobody;
GRANT EXECUTE ON FUNCTION cohortsync.ingest(jsonb) TO cs_test_ingest;
GRANT EXECUTE ON FUNCTION pg_temp.page(text, text, text, text[], int, int, text, text) TO cs_test_ingest, cs_test_nobody;

SET ROLE cs_test_nobody;
SELECT throws_ok($$SELECT cohortsync.ingest(pg_temp.page('add_members', 'r1', 's', ARRAY['a']))$$,
                 '42501', NULL, 'PUBLIC may not call ingest');
SELECT throws_ok($$SELECT * FROM cohortsync.members$$, '42501', NULL, 'PUBLIC may not read members');
RESET ROLE;

SET ROLE cs_test_ingest;
SELECT is(cohortsync.ingest(pg_temp.page('add_members', 'r1', 's', ARRAY['a'])) ->> 'status', 'success',
          'an ingest-only role can ingest');
SELECT throws_ok($$SELECT * FROM cohortsync.membership_changes$$, '42501', NULL, 'but cannot read the history');
SELECT throws_ok($$INSERT INTO cohortsync.members (project_id, cohort_id, distinct_id, properties)
                   VALUES ('1001', 'r1', 'forged', '{}')$$, '42501', NULL, 'nor write members directly');
SELECT throws_ok($$SELECT cohortsync.explain_swap('1001', 'r1', 's')$$, '42501', NULL, 'nor call owner-only functions');
RESET ROLE;

SELECT is(pg_temp.members_of('r1'), ARRAY['a'], 'the page was applied as the owner');

SELECT * FROM finish();
ROLLBACK;
