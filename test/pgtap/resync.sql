-- Every kind: resync_destination, set_destination_secret, disconnect_destination,
-- pause and resume.
BEGIN;
SET client_min_messages = warning;
SELECT plan(22);

CREATE FUNCTION pg_temp.page(action text, session text, members jsonb,
                             cohort text DEFAULT '4242', cohort_name text DEFAULT 'Power users')
RETURNS jsonb LANGUAGE sql AS $$
  SELECT cohortsync.ingest(jsonb_build_object(
    'action', action,
    'parameters', jsonb_build_object(
      'mixpanel_project_id', 1001, 'mixpanel_cohort_id', cohort,
      'mixpanel_cohort_name', cohort_name, 'mixpanel_session_id', session,
      'page_info', jsonb_build_object('total_pages', 1, 'page_count', 1),
      'members', members)))
$$;

-- members before any destination: nothing is queued
SELECT pg_temp.page('add_members', 's1', '[
  {"mixpanel_distinct_id": "a", "email": "a@example.com", "first_name": "Ann", "$mparticle_user_id": "42"},
  {"mixpanel_distinct_id": "b", "$braze_external_id": "ext-b"}]');
SELECT pg_temp.page('add_members', 's2', '[{"mixpanel_distinct_id": "a"}]', '77', 'Churn risk');
SELECT cohortsync.connect_clevertap('ct', 'ACC', 'cs-secret-resync-1', 'eu1');
SELECT cohortsync.connect_mparticle('mp', 'KEY', 'cs-secret-resync-2', 'eu1');
SELECT cohortsync.connect_braze('bz', 'cs-secret-resync-3', 'US-02');
SELECT cohortsync.configure_destination('bz', '{"event_name": "Cohort"}');
SELECT is((SELECT count(*) FROM cohortsync.outbox), 0::bigint, 'destinations connected late get nothing by themselves');

SELECT throws_ok($$SELECT cohortsync.resync_destination('nope')$$, '42704', 'destination "nope" does not exist',
                 'resync of an unknown destination');
SELECT is(cohortsync.resync_destination('ct'), 3::bigint, 'clevertap: one record per membership');
SELECT results_eq(
  $$SELECT identity, record - 'ts' FROM cohortsync.outbox WHERE destination = 'ct' ORDER BY identity, record::text$$,
  $$VALUES ('a', '{"identity": "a", "type": "profile", "profileData": {"Mixpanel Cohorts": {"$add": ["Churn risk"]}}}'::jsonb),
           ('a', '{"identity": "a", "type": "profile", "profileData": {"Mixpanel Cohorts": {"$add": ["Power users"]}, "Email": "a@example.com", "Name": "Ann"}}'),
           ('b', '{"identity": "b", "type": "profile", "profileData": {"Mixpanel Cohorts": {"$add": ["Power users"]}}}')$$,
  'clevertap: the profile records ($add, the fields), no events: idempotent at CleverTap');
SELECT is(cohortsync.resync_destination('mp', cohort_id => '4242'), 2::bigint, 'mparticle: one cohort');
SELECT results_eq(
  $$SELECT record FROM cohortsync.outbox WHERE destination = 'mp' ORDER BY identity$$,
  $$VALUES ('{"environment": "production", "mpid": 42, "user_attributes": {"Power users": true}}'::jsonb),
           ('{"environment": "production", "user_identities": {"customer_id": "b"}, "user_attributes": {"Power users": true}}')$$,
  'mparticle: the flags set true');
SELECT is(cohortsync.resync_destination('bz', '1001'), 3::bigint, 'braze: one project');
SELECT is((SELECT count(*) FROM cohortsync.outbox WHERE destination = 'bz' AND NOT record ? 'attributes'), 0::bigint,
          'braze: attributes only, not the custom event');
SELECT is(cohortsync.resync_destination('bz', '9999'), 0::bigint, 'another project: nothing');
SELECT is(cohortsync.resync_destination('mp', '1001', 'nope'), 0::bigint, 'an unknown cohort: nothing');

-- set_destination_secret
SELECT throws_ok($$SELECT cohortsync.set_destination_secret('bz', '')$$, '22023', 'a destination needs a secret',
                 'an empty secret is refused');
SELECT throws_ok($$SELECT cohortsync.set_destination_secret('nope', 'cs-secret-resync-9')$$, '42704',
                 'destination "nope" does not exist', 'an unknown destination (the secret never echoed)');
DELETE FROM cohortsync.destination_secrets WHERE name = 'bz';
SELECT matches((SELECT reason FROM cohortsync.destination_status WHERE name = 'bz'),
               'no secret is stored: call cohortsync.set_destination_secret\(\)',
               'status: a destination without its secret says how to set it');
SELECT lives_ok($$SELECT cohortsync.set_destination_secret('bz', 'cs-secret-resync-4')$$,
                'set_destination_secret stores a missing secret');
SELECT is((SELECT count(*) FROM cohortsync._delivery_targets() WHERE name = 'bz'), 1::bigint, '... and the worker sees it');
SELECT is((SELECT proconfig FROM pg_proc WHERE oid = 'cohortsync.set_destination_secret(text,text)'::regprocedure),
          ARRAY['search_path=pg_catalog, pg_temp', 'log_min_error_statement=panic', 'log_min_messages=warning'],
          'set_destination_secret logs neither its statement nor its messages');

-- pause and resume work for every kind
SELECT cohortsync.pause_destination('mp', 'maintenance');
SELECT results_eq($$SELECT state, kind FROM cohortsync.destination_status WHERE name = 'mp'$$,
                  $$VALUES ('paused', 'mparticle')$$, 'an mParticle destination pauses');
SELECT is((SELECT count(*) FROM cohortsync._delivery_targets() WHERE name = 'mp'), 0::bigint, '... and is not sent to');
SELECT cohortsync.resume_destination('mp');
SELECT is((SELECT state FROM cohortsync.destination_status WHERE name = 'mp'), 'active', '... and resumes');

-- disconnect_destination
SELECT lives_ok($$SELECT cohortsync.disconnect_destination('bz')$$, 'disconnect a Braze destination');
SELECT results_eq($$SELECT (SELECT count(*) FROM cohortsync.destinations WHERE name = 'bz'),
                           (SELECT count(*) FROM cohortsync.outbox WHERE destination = 'bz'),
                           (SELECT count(*) FROM cohortsync.destination_secrets WHERE name = 'bz'),
                           (SELECT count(*) FROM cohortsync.destination_stats WHERE destination = 'bz')$$,
                  $$VALUES (0::bigint, 0::bigint, 0::bigint, 0::bigint)$$,
                  '... its row, queue, secret and counters are gone');
SELECT throws_ok($$SELECT cohortsync.disconnect_destination('bz')$$, '42704', 'destination "bz" does not exist',
                 'disconnecting twice is an error');

SELECT * FROM finish();
ROLLBACK;
