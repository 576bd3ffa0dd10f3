-- An identity too long for a btree entry (a member's $CleverTap_user_id of a few
-- kB that does not compress) is queued under its hash, not refused: before 0.2.0
-- the outbox index made the whole page fail with an SQL error.
BEGIN;
SET client_min_messages = warning;
\ir 00_helpers.inc
SELECT plan(7);

SELECT cohortsync.connect_clevertap('long', 'ACC', 'cs-secret-long', 'eu1', 'http://127.0.0.1:9');
SELECT cohortsync.pause_destination('long', 'testing');

-- 3000 bytes of hex from a hash chain: incompressible, so TOAST cannot shrink it
CREATE TEMP TABLE long_id AS
SELECT string_agg(md5(i::text), '' ORDER BY i) AS v FROM generate_series(1, 94) i;
SELECT is((SELECT octet_length(v) FROM long_id), 3008, 'a 3008-byte identity');

SELECT is(cohortsync.ingest(jsonb_build_object('action', 'add_members', 'parameters', jsonb_build_object(
            'mixpanel_project_id', '1001', 'mixpanel_cohort_id', 'L', 'mixpanel_session_id', 's1',
            'page_info', jsonb_build_object('page_count', 1, 'total_pages', 1),
            'members', jsonb_build_array(
                jsonb_build_object('mixpanel_distinct_id', 'u1', '$CleverTap_user_id', (SELECT v FROM long_id),
                                   'email', 'u1@example.com'),
                jsonb_build_object('mixpanel_distinct_id', 'u2', '$CleverTap_user_id', 'short'))))) ->> 'status',
          'success', 'a page with it is accepted');

SELECT is((SELECT count(*) FROM cohortsync.outbox WHERE record ->> 'identity' = (SELECT v FROM long_id)),
          2::bigint, 'its event and profile are queued, carrying the identity whole');
SELECT is((SELECT DISTINCT identity FROM cohortsync.outbox WHERE record ->> 'identity' = (SELECT v FROM long_id)),
          'sha256:' || encode(sha256(convert_to((SELECT v FROM long_id), 'UTF8')), 'hex'),
          'keyed by its SHA-256');
SELECT is((SELECT DISTINCT identity FROM cohortsync.outbox WHERE record ->> 'identity' = 'short'),
          'short', 'a short identity is its own key');

-- a later change of the same member gets the same key: its order is kept
SELECT is(cohortsync.ingest(jsonb_build_object('action', 'remove_members', 'parameters', jsonb_build_object(
            'mixpanel_project_id', '1001', 'mixpanel_cohort_id', 'L', 'mixpanel_session_id', 's2',
            'page_info', jsonb_build_object('page_count', 1, 'total_pages', 1),
            'members', jsonb_build_array(jsonb_build_object('mixpanel_distinct_id', 'u1'))))) ->> 'status',
          'success', 'the member leaves');
SELECT is((SELECT count(DISTINCT identity) FROM cohortsync.outbox
            WHERE record ->> 'identity' = (SELECT v FROM long_id)), 1::bigint,
          'the join and the leave share one order key');

SELECT * FROM finish();
ROLLBACK;
