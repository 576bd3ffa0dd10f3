-- Every way a page can be the sender's fault gets a 400 failure answer naming what is
-- wrong and where, and writes nothing.
SET client_min_messages = warning;

CREATE FUNCTION pg_temp.page(action text, params jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT jsonb_build_object('action', action, 'parameters', params) $$;

CREATE FUNCTION pg_temp.params(members jsonb DEFAULT '[]', page_info jsonb DEFAULT NULL)
RETURNS jsonb LANGUAGE sql AS $$
  SELECT jsonb_strip_nulls(jsonb_build_object(
    'mixpanel_project_id', '1001', 'mixpanel_cohort_id', '77',
    'mixpanel_cohort_name', 'Bad pages', 'mixpanel_session_id', 's-bad',
    'page_info', page_info, 'members', members))
$$;

-- not an object
SELECT cohortsync.ingest('[]');
SELECT cohortsync.ingest('"members"');
SELECT cohortsync.ingest('null');
-- action
SELECT cohortsync.ingest('{"parameters": {}}');
SELECT cohortsync.ingest('{"action": 7, "parameters": {}}');
SELECT cohortsync.ingest(pg_temp.page('foo', pg_temp.params()));
SELECT cohortsync.ingest(pg_temp.page(repeat('x', 500), pg_temp.params()));
-- parameters
SELECT cohortsync.ingest('{"action": "members"}');
SELECT cohortsync.ingest('{"action": "members", "parameters": [1]}');
-- ids: missing, empty, wrong type, absurdly long
SELECT cohortsync.ingest(pg_temp.page('add_members', pg_temp.params() - 'mixpanel_project_id'));
SELECT cohortsync.ingest(pg_temp.page('add_members', pg_temp.params() || '{"mixpanel_cohort_id": ""}'));
SELECT cohortsync.ingest(pg_temp.page('add_members', pg_temp.params() - 'mixpanel_session_id'));
SELECT cohortsync.ingest(pg_temp.page('add_members', pg_temp.params() || '{"mixpanel_session_id": null}'));
SELECT cohortsync.ingest(pg_temp.page('add_members', pg_temp.params() || '{"mixpanel_cohort_id": {"id": 1}}'));
SELECT cohortsync.ingest(pg_temp.page('add_members',
       pg_temp.params() || jsonb_build_object('mixpanel_project_id', repeat('p', 1025))));
SELECT cohortsync.ingest(pg_temp.page('add_members', pg_temp.params() || '{"mixpanel_cohort_name": ["x"]}'));
-- ids within 1024 bytes each, but too long together for the tables' keys
SELECT cohortsync.ingest(pg_temp.page('add_members', pg_temp.params() || jsonb_build_object(
       'mixpanel_project_id', repeat('p', 1000), 'mixpanel_cohort_id', repeat('c', 1000),
       'mixpanel_session_id', repeat('s', 601))));
SELECT cohortsync.ingest(pg_temp.page('members',
       pg_temp.params(jsonb_build_array(jsonb_build_object('mixpanel_distinct_id', repeat('d', 1024))))
       || jsonb_build_object('mixpanel_project_id', repeat('p', 1000), 'mixpanel_cohort_id', repeat('c', 1000))));
-- members
SELECT cohortsync.ingest(pg_temp.page('add_members', pg_temp.params() - 'members'));
SELECT cohortsync.ingest(pg_temp.page('add_members', pg_temp.params('{"a": 1}')));
SELECT cohortsync.ingest(pg_temp.page('add_members', pg_temp.params('[{"mixpanel_distinct_id": "a"}, 42]')));
SELECT cohortsync.ingest(pg_temp.page('add_members', pg_temp.params(
       (SELECT jsonb_agg(jsonb_build_object('mixpanel_distinct_id', 'u' || i)) FROM generate_series(0, 16) i)
       || '[{"email": "no-id@example.com"}]')));
SELECT cohortsync.ingest(pg_temp.page('add_members', pg_temp.params('[{"mixpanel_distinct_id": ""}]')));
SELECT cohortsync.ingest(pg_temp.page('add_members', pg_temp.params('[{"mixpanel_distinct_id": true}]')));
SELECT cohortsync.ingest(pg_temp.page('add_members',
       pg_temp.params(jsonb_build_array(jsonb_build_object('mixpanel_distinct_id', repeat('d', 1025))))));
SELECT cohortsync.ingest(pg_temp.page('add_members', pg_temp.params('[{"mixpanel_distinct_id": "a", "email": {"x": 1}}]')));
-- page numbers
SELECT cohortsync.ingest(pg_temp.page('members', pg_temp.params(page_info => '{"total_pages": 4, "page_count": 5}')));
SELECT cohortsync.ingest(pg_temp.page('members', pg_temp.params(page_info => '{"total_pages": 4, "page_count": 0}')));
SELECT cohortsync.ingest(pg_temp.page('members', pg_temp.params(page_info => '{"total_pages": 4, "page_count": -1}')));
SELECT cohortsync.ingest(pg_temp.page('members', pg_temp.params(page_info => '{"total_pages": 4, "page_count": 1.5}')));
SELECT cohortsync.ingest(pg_temp.page('members', pg_temp.params(page_info => '{"total_pages": "four", "page_count": 1}')));
SELECT cohortsync.ingest(pg_temp.page('members', pg_temp.params(page_info => '{"total_pages": 1e10, "page_count": 1}')));
SELECT cohortsync.ingest(pg_temp.page('members', pg_temp.params(page_info => '{"total_pages": 4}')));
SELECT cohortsync.ingest(pg_temp.page('members', pg_temp.params(page_info => '{"page_count": 1, "total_pages": null}')));
SELECT cohortsync.ingest(pg_temp.page('members', pg_temp.params(page_info => '"1 of 4"')));

-- and nothing at all was written
SELECT (SELECT count(*) FROM cohortsync.cohorts) AS cohorts,
       (SELECT count(*) FROM cohortsync.members) AS members,
       (SELECT count(*) FROM cohortsync.membership_changes) AS changes,
       (SELECT count(*) FROM cohortsync.sync_sessions) AS sessions,
       (SELECT count(*) FROM cohortsync.sync_pages) AS pages,
       (SELECT count(*) FROM cohortsync.staged_members) AS staged;

-- server-side trouble is an ordinary error, not a 400: NULL is not a page
SELECT cohortsync.ingest(NULL) IS NULL AS strict_null;
