-- A page that is the sender's fault gets a 400 failure answer and writes nothing,
-- whatever state the cohort is in; the backend survives every one of them.
BEGIN;
SET client_min_messages = warning;
\ir 00_helpers.inc
SELECT plan(8);

-- Some state to protect: a cohort with members and a full sync half received.
SELECT pg_temp.ingest(pg_temp.page('add_members', 'c3', 'd1', ARRAY['a', 'b']));
SELECT pg_temp.ingest(pg_temp.page('members', 'c3', 'f1', ARRAY['a'], 1, 2));

CREATE TEMP TABLE snapshot AS
SELECT (SELECT jsonb_agg(c ORDER BY project_id, cohort_id) FROM cohortsync.cohorts c) AS cohorts,
       (SELECT jsonb_agg(m ORDER BY distinct_id) FROM cohortsync.members m) AS members,
       (SELECT count(*) FROM cohortsync.membership_changes) AS changes,
       (SELECT jsonb_agg(s ORDER BY session_id, action) FROM cohortsync.sync_sessions s) AS sessions,
       (SELECT jsonb_agg(p ORDER BY session_id, action, page_count) FROM cohortsync.sync_pages p) AS pages,
       (SELECT jsonb_agg(s ORDER BY distinct_id) FROM cohortsync.staged_members s) AS staged;

CREATE TEMP TABLE bad(label text, body jsonb);
INSERT INTO bad VALUES
  ('array', '[1, 2]'), ('string', '"members"'), ('number', '42'), ('null', 'null'), ('empty object', '{}'),
  ('no action', pg_temp.page('members', 'c3', 'f1', ARRAY['z'], 2, 2) - 'action'),
  ('unknown action', jsonb_set(pg_temp.page('members', 'c3', 'f1', ARRAY['z'], 2, 2), '{action}', '"foo"')),
  ('action not a string', jsonb_set(pg_temp.page('members', 'c3', 'f1', ARRAY['z'], 2, 2), '{action}', '["members"]')),
  ('no parameters', '{"action": "members"}'),
  ('parameters not an object', '{"action": "members", "parameters": "x"}'),
  ('no project', pg_temp.page('members', 'c3', 'f1', ARRAY['z'], 2, 2) #- '{parameters,mixpanel_project_id}'),
  ('empty cohort', jsonb_set(pg_temp.page('members', 'c3', 'f1', ARRAY['z'], 2, 2), '{parameters,mixpanel_cohort_id}', '""')),
  ('no session', pg_temp.page('members', 'c3', 'f1', ARRAY['z'], 2, 2) #- '{parameters,mixpanel_session_id}'),
  ('long session', jsonb_set(pg_temp.page('members', 'c3', 'f1', ARRAY['z'], 2, 2), '{parameters,mixpanel_session_id}',
                             to_jsonb(repeat('s', 1025)))),
  ('members not an array', jsonb_set(pg_temp.page('members', 'c3', 'f1', ARRAY['z'], 2, 2), '{parameters,members}', '{"0": {}}')),
  ('member not an object', jsonb_set(pg_temp.page('members', 'c3', 'f1', ARRAY['z'], 2, 2), '{parameters,members,0}', '"z"')),
  ('member without id', pg_temp.page('members', 'c3', 'f1', ARRAY['z'], 2, 2) #- '{parameters,members,0,mixpanel_distinct_id}'),
  ('second member without id', jsonb_insert(pg_temp.page('add_members', 'c3', 'd2', ARRAY['y', 'z']),
                                 '{parameters,members,1}', '{"email": "x@example.com"}')),
  ('long member id', jsonb_set(pg_temp.page('remove_members', 'c3', 'd2', ARRAY['a']), '{parameters,members,0,mixpanel_distinct_id}',
                               to_jsonb(repeat('é', 513)))),
  ('page_count > total_pages', pg_temp.page('members', 'c3', 'f1', ARRAY['z'], 3, 2)),
  ('page_count zero', jsonb_set(pg_temp.page('members', 'c3', 'f1', ARRAY['z'], 2, 2), '{parameters,page_info,page_count}', '0')),
  ('page_count fractional', jsonb_set(pg_temp.page('members', 'c3', 'f1', ARRAY['z'], 2, 2), '{parameters,page_info,page_count}', '1.5')),
  ('page_count huge', jsonb_set(pg_temp.page('members', 'c3', 'f1', ARRAY['z'], 2, 2), '{parameters,page_info,page_count}',
                                '1e400')),
  ('total_pages negative string', jsonb_set(pg_temp.page('members', 'c3', 'f1', ARRAY['z'], 2, 2), '{parameters,page_info,total_pages}', '"-2"')),
  ('email an array', jsonb_set(pg_temp.page('add_members', 'c3', 'd2', ARRAY['z']), '{parameters,members,0,email}', '["z@x"]'));

SELECT is((SELECT count(*) FROM bad b WHERE NOT (
             cohortsync.ingest(b.body) @> '{"status": "failure", "error": {"code": 400}}'
             AND cohortsync.ingest(b.body) -> 'error' ->> 'message' <> '')), 0::bigint,
          'every bad page gets a 400 failure with a message');
SELECT is((SELECT count(*) FROM bad b WHERE cohortsync.ingest(b.body) ? 'action'), (SELECT count(*) FROM bad),
          'every answer carries an action key');

SELECT is((SELECT members FROM snapshot), (SELECT jsonb_agg(m ORDER BY distinct_id) FROM cohortsync.members m), 'members untouched');
SELECT is((SELECT changes FROM snapshot), (SELECT count(*) FROM cohortsync.membership_changes), 'no change recorded');
SELECT is((SELECT staged FROM snapshot), (SELECT jsonb_agg(s ORDER BY distinct_id) FROM cohortsync.staged_members s), 'staging untouched');
SELECT is((SELECT sessions FROM snapshot), (SELECT jsonb_agg(s ORDER BY session_id, action) FROM cohortsync.sync_sessions s), 'sessions untouched');
SELECT is((SELECT pages FROM snapshot), (SELECT jsonb_agg(p ORDER BY session_id, action, page_count) FROM cohortsync.sync_pages p), 'pages untouched');
SELECT is((SELECT cohorts FROM snapshot), (SELECT jsonb_agg(c ORDER BY project_id, cohort_id) FROM cohortsync.cohorts c), 'cohorts untouched (not even renamed)');

SELECT * FROM finish();
ROLLBACK;
