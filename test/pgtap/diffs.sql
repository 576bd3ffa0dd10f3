-- add_members / remove_members: applied page by page, idempotently.
BEGIN;
SET client_min_messages = warning;
\ir 00_helpers.inc
SELECT plan(28);

SELECT is(pg_temp.ingest(pg_temp.page('add_members', 'c2', 'd1', ARRAY['a', 'b'])), 'success', 'add a, b');
SELECT is(pg_temp.ingest(pg_temp.page('add_members', 'c2', 'd2', ARRAY['b', 'c'])), 'success', 'add b (again), c');
SELECT is(pg_temp.changes_of('c2'), ARRAY['added:a', 'added:b', 'added:c'], 'adding a member twice records one change');
SELECT is(pg_temp.ingest(pg_temp.page('remove_members', 'c2', 'd3', ARRAY['a', 'x'])), 'success', 'remove a and non-member x');
SELECT is(pg_temp.changes_of('c2'), ARRAY['added:a', 'added:b', 'added:c', 'removed:a'],
          'removing a non-member records nothing');
SELECT is(pg_temp.ingest(pg_temp.page('remove_members', 'c2', 'd3', ARRAY['a', 'x'])), 'success', 'the same page again');
SELECT is((SELECT count(*) FROM cohortsync.membership_changes WHERE cohort_id = 'c2'), 4::bigint, 're-sent page records nothing');
SELECT is(pg_temp.members_of('c2'), ARRAY['b', 'c'], 'membership');
SELECT is((SELECT member_count FROM cohortsync.cohorts WHERE cohort_id = 'c2'), 2::bigint, 'member count');

-- A page whose last member (in id order) is stored already: the new ones before it are
-- inserted once, with one change each, and the stored one is left as it was.
SELECT is(pg_temp.ingest(pg_temp.page('add_members', 'c2', 'd3b', ARRAY['a2', 'a3', 'c'])), 'success',
          'add a2, a3 and c (stored, last in id order)');
SELECT is(pg_temp.changes_of('c2'), ARRAY['added:a', 'added:b', 'added:c', 'removed:a', 'added:a2', 'added:a3'],
          'only the new members are recorded, in id order');
SELECT is(pg_temp.members_of('c2'), ARRAY['a2', 'a3', 'b', 'c'], 'membership after a partly new page');
SELECT is((SELECT member_count FROM cohortsync.cohorts WHERE cohort_id = 'c2'), 4::bigint,
          'member count after a partly new page');
SELECT is(pg_temp.ingest(pg_temp.page('remove_members', 'c2', 'd3c', ARRAY['a2', 'a3'])), 'success', 'remove a2, a3');

-- Any other error while the page's members are inserted is raised as it is, not taken for
-- a stored member (and the page not applied the other way instead).
CREATE FUNCTION pg_temp.refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'refused %', NEW.distinct_id USING ERRCODE = 'P0001';
END $$;
CREATE TRIGGER refuse BEFORE INSERT ON cohortsync.members
    FOR EACH ROW WHEN (NEW.distinct_id = 'refused') EXECUTE FUNCTION pg_temp.refuse();
SELECT throws_ok($$SELECT cohortsync.ingest(pg_temp.page('add_members', 'c3', 'r1', ARRAY['a', 'refused']))$$,
                 'P0001', 'refused refused', 'an error inserting a new member is raised as it is');
DROP TRIGGER refuse ON cohortsync.members;
SELECT is(pg_temp.members_of('c3'), '{}'::text[], 'nothing of that page was written');

-- A re-add refreshes stored fields without recording a change.
SELECT is(pg_temp.ingest(jsonb_set(pg_temp.page('add_members', 'c2', 'd4', ARRAY['b']),
                          '{parameters,members,0,phone_number}', '"+44 20 7946 0000"')), 'success', 're-add b with a phone');
SELECT is((SELECT phone FROM cohortsync.members WHERE cohort_id = 'c2' AND distinct_id = 'b'), '+44 20 7946 0000', 'phone refreshed');
SELECT is((SELECT count(*) FROM cohortsync.membership_changes WHERE cohort_id = 'c2'), 8::bigint, 'no change row for a refresh');

-- Empty calls (Mixpanel sends them when nothing changed) are valid and change nothing.
SELECT is(pg_temp.ingest(pg_temp.page('add_members', 'c2', 'd5', '{}')), 'success', 'empty add_members');
SELECT is(pg_temp.ingest(pg_temp.page('remove_members', 'c2', 'd5', '{}')), 'success', 'empty remove_members');
SELECT is((SELECT count(*) FROM cohortsync.membership_changes WHERE cohort_id = 'c2'), 8::bigint, 'empty calls record nothing');

-- Numbers for ids and page numbers, no page_info, duplicates inside one page, extra properties.
SELECT is(cohortsync.ingest('{"action": "add_members", "parameters": {"mixpanel_project_id": 7, "mixpanel_cohort_id": 8,
  "mixpanel_session_id": 9, "members": [{"mixpanel_distinct_id": 12345, "phone_number": 15550100},
  {"mixpanel_distinct_id": "u1", "email": "old@example.com"}, {"mixpanel_distinct_id": "u1", "email": "new@example.com",
   "$CleverTap_user_id": "ct-1", "plan": "pro"}]}}') ->> 'status', 'success', 'numeric ids, no page_info');
SELECT is(pg_temp.members_of('8', '7'), ARRAY['12345', 'u1'], 'numbers stored as their text; duplicate collapsed');
SELECT is((SELECT properties FROM cohortsync.members WHERE cohort_id = '8' AND distinct_id = 'u1'),
          '{"mixpanel_distinct_id": "u1", "email": "new@example.com", "$CleverTap_user_id": "ct-1", "plan": "pro"}'::jsonb,
          'the last duplicate wins and every property is kept');
SELECT is((SELECT phone FROM cohortsync.members WHERE cohort_id = '8' AND distinct_id = '12345'), '15550100', 'numeric phone kept as text');

-- Renames are picked up from every page.
SELECT is(pg_temp.ingest(pg_temp.page('add_members', 'c2', 'd6', '{}', name => 'Renamed')), 'success', 'empty page, new name');
SELECT is((SELECT name FROM cohortsync.cohorts WHERE cohort_id = 'c2'), 'Renamed', 'cohort name refreshed');

SELECT * FROM finish();
ROLLBACK;
