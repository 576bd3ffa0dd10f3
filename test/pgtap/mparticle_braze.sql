-- mParticle and Braze destinations: connecting, settings, the records queued for
-- them, and the reading of their answers.
BEGIN;
SET client_min_messages = warning;
SELECT plan(54);

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

CREATE FUNCTION pg_temp.hint_of(sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE h text;
BEGIN
  EXECUTE sql;
  RETURN NULL;
EXCEPTION WHEN others THEN
  GET STACKED DIAGNOSTICS h = PG_EXCEPTION_HINT;
  RETURN h;
END $$;

-------------------------------------------------------------------------------
-- connect_mparticle
-------------------------------------------------------------------------------
SELECT throws_ok($$SELECT cohortsync.connect_mparticle('mp', 'KEY', 'cs-secret-mp-0', 'us3')$$,
                 '22023', 'unknown mParticle pod "us3"', 'a bad pod is refused');
SELECT is(pg_temp.hint_of($$SELECT cohortsync.connect_mparticle('mp', 'KEY', 'cs-secret-mp-0', 'us3')$$),
          'The pod is one of us1, us2, eu1, au1: the one your mParticle workspace is in.',
          'the error lists the pods');
SELECT throws_ok($$SELECT cohortsync.connect_mparticle('mp', '', 'cs-secret-mp-0')$$,
                 '22023', 'an mParticle destination needs the input feed''s API key', 'the key is needed');
SELECT throws_ok($$SELECT cohortsync.connect_mparticle('mp', 'KEY', NULL)$$,
                 '22023', 'an mParticle destination needs the input feed''s API secret', 'the secret is needed');
SELECT throws_ok($$SELECT cohortsync.connect_mparticle('', 'KEY', 'cs-secret-mp-0')$$,
                 '22023', 'a destination needs a name', 'a name is needed');
SELECT throws_ok($$SELECT cohortsync.connect_mparticle('mp', 'KEY', 'cs-secret-mp-0', 'us1', 'ftp://x')$$,
                 '22023', 'api_url must start with https:// or http://', 'api_url must be http(s)');
SELECT lives_ok($$SELECT cohortsync.connect_mparticle('mp', 'KEY', 'cs-secret-mp-1')$$,
                'connect an mParticle input feed (pod us1 by default)');
SELECT throws_ok($$SELECT cohortsync.connect_mparticle('mp', 'KEY', 'cs-secret-mp-1')$$,
                 '42710', 'destination "mp" already exists', 'names are unique');
SELECT results_eq(
  $$SELECT kind, account_id, region, identity_property, settings, state,
           (SELECT base_url FROM cohortsync._delivery_targets() t WHERE t.name = d.name),
           (SELECT batch_size FROM cohortsync._delivery_targets() t WHERE t.name = d.name) <= 100
      FROM cohortsync.destinations d WHERE name = 'mp'$$,
  $$VALUES ('mparticle', 'KEY', 'us1', '$mparticle_user_id', '{"environment": "production"}'::jsonb, 'active',
            'https://s2s.mparticle.com', true)$$,
  'an mParticle destination: the key as account id, the pod, $mparticle_user_id, production, at most 100 a request');
SELECT is((SELECT count(*) FROM cohortsync.destination_secrets s WHERE s.name = 'mp'
              AND s.passcode = (SELECT 'cs-sec' || 'ret-mp-1')), 1::bigint,
          'the API secret is stored as the destination''s secret');

-------------------------------------------------------------------------------
-- connect_braze
-------------------------------------------------------------------------------
SELECT throws_ok($$SELECT cohortsync.connect_braze('bz', 'cs-secret-bz-0', 'US-09')$$,
                 '22023', 'unknown Braze instance "US-09"', 'a bad instance is refused');
SELECT throws_ok($$SELECT cohortsync.connect_braze('bz', '', 'US-01')$$,
                 '22023', 'a Braze destination needs a REST API key', 'the key is needed');
SELECT lives_ok($$SELECT cohortsync.connect_braze('bz', 'cs-secret-bz-1', 'eu-02')$$,
                'connect a Braze workspace (the instance in any case)');
SELECT results_eq(
  $$SELECT kind, account_id, region, identity_property, cohorts_property, settings,
           (SELECT base_url FROM cohortsync._delivery_targets() t WHERE t.name = d.name)
      FROM cohortsync.destinations d WHERE name = 'bz'$$,
  $$VALUES ('braze', NULL::text, 'EU-02', '$braze_external_id', 'Mixpanel Cohorts', '{}'::jsonb,
            'https://rest.fra-02.braze.eu')$$,
  'a Braze destination: no account id, the instance, $braze_external_id, "Mixpanel Cohorts"');

-------------------------------------------------------------------------------
-- configure_destination
-------------------------------------------------------------------------------
SELECT throws_ok($$SELECT cohortsync.configure_destination('mp', '{"environment": "staging"}')$$,
                 '22023', 'mParticle''s environment is production or development, not "staging"',
                 'mParticle''s environment is checked');
SELECT throws_ok($$SELECT cohortsync.configure_destination('mp', '{"event_name": "x"}')$$,
                 '22023', 'a mparticle destination has no setting ''event_name''', 'unknown settings are refused');
SELECT throws_ok($$SELECT cohortsync.configure_destination('mp', batch_size => 101)$$,
                 '22023', 'batch_size 101 is out of range for a mparticle destination',
                 'batch_size within the kind''s limit');
SELECT throws_ok($$SELECT cohortsync.configure_destination('bz', max_inflight => 16)$$,
                 '22023', 'max_inflight 16 is out of range for a braze destination',
                 'max_inflight within the kind''s limit');
SELECT throws_ok($$SELECT cohortsync.configure_destination('nope')$$, '42704',
                 'destination "nope" does not exist', 'an unknown destination');
SELECT lives_ok($$SELECT cohortsync.configure_destination('mp', '{"environment": "development"}', 40, 3)$$,
                'set mParticle''s environment, batch_size and max_inflight');
SELECT results_eq($$SELECT batch_size, max_inflight FROM cohortsync._delivery_targets() WHERE name = 'mp'$$,
                  $$VALUES (40, 3)$$, '... the worker gets them');
SELECT lives_ok($$SELECT cohortsync.configure_destination('mp', '{"environment": "production"}', 0, 0)$$,
                '0 returns to the GUCs');
SELECT results_eq($$SELECT batch_size, max_inflight, settings FROM cohortsync.destinations WHERE name = 'mp'$$,
                  $$VALUES (NULL::integer, NULL::integer, '{"environment": "production"}'::jsonb)$$, '... stored as NULL');

-------------------------------------------------------------------------------
-- mParticle records: one batch per change; the MPID exactly, else customer_id
-------------------------------------------------------------------------------
SELECT pg_temp.page('add_members', 's1', '[
  {"mixpanel_distinct_id": "m1", "$mparticle_user_id": -1},
  {"mixpanel_distinct_id": "m2", "$mparticle_user_id": "9223372036854775807"},
  {"mixpanel_distinct_id": "m3", "$mparticle_user_id": 9223372036854775807},
  {"mixpanel_distinct_id": "m4", "$mparticle_user_id": "9223372036854775808"},
  {"mixpanel_distinct_id": "m5", "email": "m5@example.com"},
  {"mixpanel_distinct_id": "m6", "$mparticle_user_id": 1.5},
  {"mixpanel_distinct_id": "m7", "$mparticle_user_id": "-9223372036854775808"}]');
SELECT results_eq(
  $$SELECT identity, record FROM cohortsync.outbox WHERE destination = 'mp' ORDER BY id$$,
  $$VALUES ('-1', '{"environment": "production", "mpid": -1, "user_attributes": {"Power users": true}}'::jsonb),
           ('9223372036854775807', '{"environment": "production", "mpid": 9223372036854775807, "user_attributes": {"Power users": true}}'),
           ('9223372036854775807', '{"environment": "production", "mpid": 9223372036854775807, "user_attributes": {"Power users": true}}'),
           ('m4', '{"environment": "production", "user_identities": {"customer_id": "m4"}, "user_attributes": {"Power users": true}}'),
           ('m5', '{"environment": "production", "user_identities": {"customer_id": "m5"}, "user_attributes": {"Power users": true}}'),
           ('m6', '{"environment": "production", "user_identities": {"customer_id": "m6"}, "user_attributes": {"Power users": true}}'),
           ('-9223372036854775808', '{"environment": "production", "mpid": -9223372036854775808, "user_attributes": {"Power users": true}}')$$,
  'mParticle: one batch per member, the cohort flag true; mpid when valid, else customer_id');
SELECT results_eq(
  $$SELECT record::text FROM cohortsync.outbox WHERE destination = 'mp' AND identity IN ('-1', '9223372036854775807') ORDER BY id LIMIT 2$$,
  $$VALUES ('{"mpid": -1, "environment": "production", "user_attributes": {"Power users": true}}'),
           ('{"mpid": 9223372036854775807, "environment": "production", "user_attributes": {"Power users": true}}')$$,
  'the mpid is written as an exact JSON integer: -1 and 2^63-1, neither a string nor a float');
DELETE FROM cohortsync.outbox;
SELECT cohortsync.configure_destination('mp', '{"environment": "development"}');
SELECT pg_temp.page('remove_members', 's2', '[{"mixpanel_distinct_id": "m5"}]');
SELECT results_eq($$SELECT record FROM cohortsync.outbox WHERE destination = 'mp'$$,
                  $$VALUES ('{"environment": "development", "user_identities": {"customer_id": "m5"}, "user_attributes": {"Power users": false}}'::jsonb)$$,
                  'mParticle: leaving sets the flag false, in the configured environment');

-------------------------------------------------------------------------------
-- Braze records
-------------------------------------------------------------------------------
SELECT results_eq(
  $$SELECT identity, record FROM cohortsync.outbox WHERE destination = 'bz'$$,
  $$VALUES ('m5', '{"attributes": {"external_id": "m5", "Mixpanel Cohorts": {"remove": ["Power users"]}}}'::jsonb)$$,
  'Braze: leaving removes the cohort from "Mixpanel Cohorts", the distinct id as external id');
DELETE FROM cohortsync.outbox;
SELECT pg_temp.page('add_members', 's3', '[
  {"mixpanel_distinct_id": "b1", "$braze_external_id": "ext-1", "email": "b1@example.com",
   "phone_number": "+1 (555) 010-0001", "first_name": "Ada", "last_name": "Byron"},
  {"mixpanel_distinct_id": "b2", "phone_number": "12345"}]');
SELECT results_eq(
  $$SELECT identity, record, phone_dropped FROM cohortsync.outbox WHERE destination = 'bz' ORDER BY identity$$,
  $$VALUES ('b2', '{"attributes": {"external_id": "b2", "Mixpanel Cohorts": {"add": ["Power users"]}}}'::jsonb, true),
           ('ext-1', '{"attributes": {"external_id": "ext-1", "Mixpanel Cohorts": {"add": ["Power users"]},
                       "email": "b1@example.com", "phone": "+15550100001", "first_name": "Ada", "last_name": "Byron"}}', false)$$,
  'Braze: joining adds the cohort, with email, phone and names; $braze_external_id, else the distinct id; a bad phone dropped');
DELETE FROM cohortsync.outbox;
SELECT cohortsync.configure_destination('bz', '{"event_name": "Mixpanel Cohort Changed"}');
SELECT pg_temp.page('remove_members', 's4', '[{"mixpanel_distinct_id": "b2"}]');
SELECT results_eq(
  $$SELECT record - 'events', record #> '{events,name}', record #> '{events,properties}',
           record #>> '{events,time}' ~ '^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$'
      FROM cohortsync.outbox WHERE destination = 'bz' ORDER BY id$$,
  $$VALUES ('{"attributes": {"external_id": "b2", "Mixpanel Cohorts": {"remove": ["Power users"]}}}'::jsonb, NULL::jsonb, NULL::jsonb, NULL::boolean),
           ('{}'::jsonb, '"Mixpanel Cohort Changed"'::jsonb,
            '{"cohort_name": "Power users", "cohort_id": "4242", "action": "removed"}'::jsonb, true)$$,
  'Braze: with event_name, a custom event row too (name, ISO 8601 time, the cohort and the action)');
SELECT cohortsync.configure_destination('bz', '{"event_name": null}');
SELECT is((SELECT settings FROM cohortsync.destinations WHERE name = 'bz'), '{}'::jsonb, 'a null setting is removed');
DELETE FROM cohortsync.outbox;

-- a member's fields change without a membership change: a profile update (Braze, not mParticle)
SELECT pg_temp.page('add_members', 's5', '[{"mixpanel_distinct_id": "b1", "$braze_external_id": "ext-1",
   "email": "ada@example.com", "phone_number": "+1 (555) 010-0001", "first_name": "Ada", "last_name": "Byron"}]');
SELECT results_eq($$SELECT destination, record FROM cohortsync.outbox WHERE destination <> 'ct' ORDER BY destination$$,
                  $$VALUES ('bz', '{"attributes": {"external_id": "ext-1", "email": "ada@example.com", "phone": "+15550100001",
                                                   "first_name": "Ada", "last_name": "Byron"}}'::jsonb)$$,
                  'Braze: changed fields of a member are updated; mParticle gets nothing');

-------------------------------------------------------------------------------
-- mParticle's answers
-------------------------------------------------------------------------------
CREATE FUNCTION pg_temp.read(kind text, http integer, body text, ids bigint[])
RETURNS TABLE (verdict text, refused_ids bigint[], refused_codes integer[], refused_messages text[],
               retry_ids bigint[], error text)
LANGUAGE sql AS $$ SELECT * FROM cohortsync._read_answer(kind, http, body, ids) $$;

SELECT results_eq($$SELECT * FROM pg_temp.read('mparticle', 202, '', '{1,2}')$$,
                  $$VALUES ('accepted', '{}'::bigint[], '{}'::integer[], '{}'::text[], '{}'::bigint[], NULL::text)$$,
                  'mparticle: 202 accepts the whole request');
SELECT is((SELECT verdict FROM pg_temp.read('mparticle', 400,
             '{"errors": [{"code": "BAD_REQUEST", "message": "Required event field \"event_type\" is missing or empty."}]}', '{1,2}')),
          'split', 'mparticle: 400 names no batch: split several');
SELECT results_eq($$SELECT verdict, refused_ids, refused_codes, refused_messages FROM pg_temp.read('mparticle', 400,
                      '{"errors": [{"code": "BAD_REQUEST", "message": "Batch too large"}]}', '{2}')$$,
                  $$VALUES ('partial', '{2}'::bigint[], '{400}'::integer[], '{"HTTP 400: Batch too large"}'::text[])$$,
                  'mparticle: 400 on one batch fails it, visibly');
SELECT results_eq($$SELECT verdict, error FROM pg_temp.read('mparticle', 403, '', '{1}')$$,
                  $$VALUES ('pause', 'mParticle answered HTTP 403: authentication failed (check the API key, API secret and pod, then resume the destination)')$$,
                  'mparticle: 403 pauses');
SELECT results_eq($$SELECT verdict, retry_ids, error FROM pg_temp.read('mparticle', 429, '', '{1,2}')$$,
                  $$VALUES ('retry', '{1,2}'::bigint[], 'HTTP 429: no body')$$, 'mparticle: 429 retries');
SELECT is((SELECT verdict FROM pg_temp.read('mparticle', 503, 'Service Unavailable', '{1}')), 'retry', 'mparticle: 503 retries');
SELECT is((SELECT verdict FROM pg_temp.read('mparticle', 400, '{"errors": [{"code": "BAD_REQUEST", "message": "empty"}]}', '{}')),
          'accepted', 'mparticle: the connection test''s empty request read by mParticle: connected');
SELECT is((SELECT verdict FROM pg_temp.read('mparticle', 400, '<html>', '{}')),
          'pause', 'mparticle: a 400 that is not mParticle''s to the connection test: not connected');

-------------------------------------------------------------------------------
-- Braze's answers: failures by input_array and index, mapped to the claimed ids
-------------------------------------------------------------------------------
SELECT cohortsync.configure_destination('bz', '{"event_name": "Cohort"}');
DELETE FROM cohortsync.outbox;
SELECT pg_temp.page('add_members', 's6', '[{"mixpanel_distinct_id": "c1"}, {"mixpanel_distinct_id": "c2"},
                                            {"mixpanel_distinct_id": "c3"}]');
-- the request: attributes c1, c2, c3 and events c1, c2, c3, in id order
CREATE TEMP TABLE req AS
SELECT id, CASE WHEN record ? 'events' THEN 'events' ELSE 'attributes' END AS arr, identity
  FROM cohortsync.outbox WHERE destination = 'bz';
CREATE FUNCTION pg_temp.req_id(a text, who text) RETURNS bigint LANGUAGE sql AS $$
  SELECT id FROM req WHERE arr = a AND identity = who $$;
SELECT is((SELECT count(*) FROM req), 6::bigint, 'three attribute and three event rows claimed');
SELECT results_eq($$SELECT * FROM pg_temp.read('braze', 201,
                      '{"message": "success", "attributes_processed": 3, "events_processed": 3}',
                      (SELECT array_agg(id ORDER BY id) FROM req))$$,
                  $$VALUES ('accepted', '{}'::bigint[], '{}'::integer[], '{}'::text[], '{}'::bigint[], NULL::text)$$,
                  'braze: 201 success');
SELECT results_eq($$SELECT verdict, refused_ids, refused_codes, refused_messages, retry_ids FROM pg_temp.read('braze', 201,
                      '{"message": "success", "errors": [
                         {"type": "The value provided for the ''email'' field is not a valid email.", "input_array": "attributes", "index": 1},
                         {"type": "''name'' is required", "input_array": "events", "index": 2}]}',
                      (SELECT array_agg(id ORDER BY id) FROM req))$$,
                  $$SELECT 'partial', ARRAY[pg_temp.req_id('attributes', 'c2'), pg_temp.req_id('events', 'c3')],
                           '{201,201}'::integer[],
                           ARRAY['The value provided for the ''email'' field is not a valid email.', '''name'' is required'],
                           '{}'::bigint[]$$,
                  'braze: 201 with errors: the objects named by array and index are refused, with Braze''s type');
SELECT results_eq($$SELECT verdict, refused_ids, retry_ids FROM pg_temp.read('braze', 400,
                      '{"message": "Valid data must be provided in the ''attributes'', ''events'', or ''purchases'' fields.",
                        "errors": [{"type": "''external_id'' or ''braze_id'' or ''user_alias'' is required", "input_array": "attributes", "index": 0}]}',
                      (SELECT array_agg(id ORDER BY id) FROM req WHERE identity = 'c1'))$$,
                  $$SELECT 'partial', ARRAY[pg_temp.req_id('attributes', 'c1')], ARRAY[pg_temp.req_id('events', 'c1')]$$,
                  'braze: 400 naming objects: those are refused, the others go again (nothing was processed)');
SELECT is((SELECT verdict FROM pg_temp.read('braze', 400, '{"message": "Bad request", "errors": [{"type": "malformed"}]}',
             (SELECT array_agg(id ORDER BY id) FROM req))),
          'split', 'braze: a refusal naming no object, on several: split');
SELECT results_eq($$SELECT verdict, refused_messages FROM pg_temp.read('braze', 201, '{"message": "success", "errors": [{"type": "odd"}]}',
                      ARRAY[pg_temp.req_id('attributes', 'c1')])$$,
                  $$VALUES ('partial', '{"HTTP 201: odd"}'::text[])$$,
                  'braze: ... on one record: it fails, visibly (never counted as delivered)');
SELECT is((SELECT verdict FROM pg_temp.read('braze', 202, '{"message": "queued"}', '{1}')), 'accepted',
          'braze: 202 queued (maintenance) is accepted');
SELECT results_eq($$SELECT verdict, error FROM pg_temp.read('braze', 401, '{"message": "Invalid API key"}', '{1}')$$,
                  $$VALUES ('pause', 'Braze answered HTTP 401: Invalid API key (check the REST API key, its users.track permission and the instance, then resume the destination)')$$,
                  'braze: 401 pauses, with Braze''s message');
SELECT is((SELECT verdict FROM pg_temp.read('braze', 404, '', '{1}')), 'pause', 'braze: 404 pauses');
SELECT is((SELECT verdict FROM pg_temp.read('braze', 429, '', '{1}')), 'retry', 'braze: 429 retries');
SELECT is((SELECT verdict FROM pg_temp.read('braze', 502, '', '{1}')), 'retry', 'braze: 5xx retries');
SELECT is((SELECT verdict FROM pg_temp.read('braze', 400,
             '{"message": "Valid data must be provided in the ''attributes'', ''events'', or ''purchases'' fields."}', '{}')),
          'accepted', 'braze: the connection test''s empty request read by Braze: connected');

-- the outcome of a partial answer
SELECT is(cohortsync._record_outcome('bz', (SELECT array_agg(id ORDER BY id) FROM req), 201,
            '{"message": "success", "errors": [{"type": "bad", "input_array": "events", "index": 0}]}',
            NULL, '3 days', '1 minute'),
          'done', 'braze: a partial 201 is settled');
SELECT results_eq($$SELECT id, code, message FROM cohortsync.failed_records WHERE destination = 'bz'$$,
                  $$SELECT pg_temp.req_id('events', 'c1'), 201, 'bad'$$,
                  '... the refused object in failed_records, the others delivered');
SELECT is((SELECT delivered FROM cohortsync.destination_status WHERE name = 'bz'), 5::bigint, '... five delivered');

SELECT * FROM finish();
ROLLBACK;
