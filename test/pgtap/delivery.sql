-- Delivery to CleverTap: destinations, the records the outbox gets, the
-- worker's claim and outcome statements, passcode secrecy.
BEGIN;
SET client_min_messages = warning;
SELECT plan(50);

-- a webhook page of one cohort; members are objects as Mixpanel sends them
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

-- the hint of the error a statement raises
CREATE FUNCTION pg_temp.hint_of(sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE h text;
BEGIN
  EXECUTE sql;
  RETURN NULL;
EXCEPTION WHEN others THEN
  GET STACKED DIAGNOSTICS h = PG_EXCEPTION_HINT;
  RETURN h;
END $$;

-- the epoch second of a member's last change
CREATE FUNCTION pg_temp.ts_of(member text) RETURNS bigint LANGUAGE sql AS $$
  SELECT floor(extract(epoch FROM max(changed_at)))::bigint
    FROM cohortsync.membership_changes WHERE distinct_id = member
$$;

-------------------------------------------------------------------------------
-- connect_clevertap
-------------------------------------------------------------------------------
SELECT throws_ok($$SELECT cohortsync.connect_clevertap('x', 'ACC', 'cs-secret-x', 'xx9')$$,
                 '22023', 'unknown CleverTap region "xx9"', 'a bad region is refused');
SELECT is(pg_temp.hint_of($$SELECT cohortsync.connect_clevertap('x', 'ACC', 'cs-secret-x', 'xx9')$$),
          'The region is one of eu1, in1, sg1, us1, aps3, mec1: the first label of your CleverTap dashboard''s host name.',
          'the error lists the regions');
SELECT throws_ok($$SELECT cohortsync.connect_clevertap('x', 'ACC', '', 'eu1')$$,
                 '22023', NULL, 'an empty passcode is refused');
SELECT throws_ok($$SELECT cohortsync.connect_clevertap('x', 'ACC', 'cs-secret-x', 'eu1', 'ftp://h')$$,
                 '22023', NULL, 'api_url must be http(s)');
SELECT lives_ok($$SELECT cohortsync.connect_clevertap('ct', 'ACC', 'cs-secret-pass-1', 'us1')$$,
                'connect a destination');
SELECT throws_ok($$SELECT cohortsync.connect_clevertap('ct', 'ACC', 'cs-secret-pass-1', 'us1')$$,
                 '42710', 'destination "ct" already exists', 'names are unique');
SELECT results_eq(
  $$SELECT account_id, region, api_url, identity_property, event_name, cohorts_property, state
      FROM cohortsync.destinations WHERE name = 'ct'$$,
  $$VALUES ('ACC', 'us1', NULL::text, '$CleverTap_user_id', 'Partner Sync', 'Mixpanel Cohorts', 'active')$$,
  'defaults: identity $CleverTap_user_id, event Partner Sync, property Mixpanel Cohorts, active');
SELECT is(cohortsync._clevertap_base_url('us1', NULL), 'https://us1.api.clevertap.com', 'region decides the host');
SELECT is(cohortsync._clevertap_base_url('eu1', NULL), 'https://api.clevertap.com', 'eu1 is the bare documented host');
SELECT is(cohortsync._clevertap_base_url('in1', 'http://127.0.0.1:8080/'), 'http://127.0.0.1:8080',
          'api_url replaces https://<host>');

-------------------------------------------------------------------------------
-- the records an add and a remove queue
-------------------------------------------------------------------------------
SELECT pg_temp.page('add_members', 's1', '[
  {"mixpanel_distinct_id": "u1", "$CleverTap_user_id": "ct-1", "email": "a@example.com",
   "first_name": "Ada", "last_name": "Lovelace", "phone_number": "+44 (20) 7946-0958"},
  {"mixpanel_distinct_id": "u2", "email": "b@example.com", "phone_number": "555-1234"},
  {"mixpanel_distinct_id": "u3", "$CleverTap_user_id": ""}
]');

SELECT results_eq(
  $$SELECT record FROM cohortsync.outbox WHERE identity = 'ct-1' ORDER BY record ->> 'type'$$,
  $$VALUES
    (jsonb_build_object('identity', 'ct-1', 'type', 'event', 'ts', pg_temp.ts_of('u1'),
       'evtName', 'Partner Sync',
       'evtData', jsonb_build_object('Partner Segment Name', 'Power users', 'Action', 'Added',
                                     'Partner Segment ID', '4242', 'CT Source', 'Mixpanel',
                                     'Partner Name', 'Mixpanel'))),
    (jsonb_build_object('identity', 'ct-1', 'type', 'profile', 'ts', pg_temp.ts_of('u1'),
       'profileData', jsonb_build_object('Mixpanel Cohorts', '{"$add": ["Power users"]}'::jsonb,
                                         'Email', 'a@example.com', 'Phone', '+442079460958',
                                         'Name', 'Ada Lovelace')))$$,
  'added: Partner Sync event and profile with $add, Email, normalised Phone, Name');

SELECT is((SELECT count(*) FROM cohortsync.outbox WHERE identity = 'u2'), 2::bigint,
          'a member without $CleverTap_user_id falls back to mixpanel_distinct_id');
SELECT is((SELECT record -> 'profileData' FROM cohortsync.outbox
            WHERE identity = 'u2' AND record ->> 'type' = 'profile'),
          '{"Mixpanel Cohorts": {"$add": ["Power users"]}, "Email": "b@example.com"}'::jsonb,
          'a phone that is not E.164 is left out of the profile');
SELECT is((SELECT count(*) FILTER (WHERE phone_dropped) FROM cohortsync.outbox WHERE identity = 'u2'),
          1::bigint, '... and counted');
SELECT is((SELECT count(*) FROM cohortsync.outbox WHERE identity = 'u3'), 2::bigint,
          'an empty identity property falls back too');
SELECT is((SELECT count(*) FROM cohortsync.outbox), 6::bigint, 'two records per change');

SELECT pg_temp.page('remove_members', 's2', '[{"mixpanel_distinct_id": "u1"}]');
SELECT results_eq(
  $$SELECT record FROM cohortsync.outbox
     WHERE identity = 'ct-1' AND record -> 'evtData' ->> 'Action' = 'Removed'
        OR identity = 'ct-1' AND record -> 'profileData' ? 'Mixpanel Cohorts'
                             AND record -> 'profileData' -> 'Mixpanel Cohorts' ? '$remove'
     ORDER BY record ->> 'type'$$,
  $$VALUES
    (jsonb_build_object('identity', 'ct-1', 'type', 'event', 'ts', pg_temp.ts_of('u1'),
       'evtName', 'Partner Sync',
       'evtData', jsonb_build_object('Partner Segment Name', 'Power users', 'Action', 'Removed',
                                     'Partner Segment ID', '4242', 'CT Source', 'Mixpanel',
                                     'Partner Name', 'Mixpanel'))),
    (jsonb_build_object('identity', 'ct-1', 'type', 'profile', 'ts', pg_temp.ts_of('u1'),
       'profileData', '{"Mixpanel Cohorts": {"$remove": ["Power users"]}}'::jsonb))$$,
  'removed: the stored member''s identity, a Removed event and $remove only');

-------------------------------------------------------------------------------
-- per-destination settings; a paused destination keeps accumulating
-------------------------------------------------------------------------------
SELECT cohortsync.connect_clevertap('plain', 'ACC2', 'cs-secret-pass-2', 'in1', 'http://127.0.0.1:9');
UPDATE cohortsync.destinations SET cohorts_property = NULL, event_name = 'Cohort Changed',
       identity_property = 'email' WHERE name = 'plain';
SELECT lives_ok($$SELECT cohortsync.pause_destination('ct')$$, 'pause a destination');
SELECT pg_temp.page('add_members', 's3', '[{"mixpanel_distinct_id": "u4", "email": "d@example.com"}]');
SELECT pg_temp.page('remove_members', 's4', '[{"mixpanel_distinct_id": "u2"}]');
SELECT is((SELECT count(*) FROM cohortsync.outbox WHERE destination = 'ct' AND change_id >
            (SELECT max(id) FROM cohortsync.membership_changes WHERE distinct_id = 'u1')),
          4::bigint, 'the paused destination still gets the new changes');
SELECT results_eq(
  $$SELECT record ->> 'identity', record ->> 'evtName', record -> 'profileData'
      FROM cohortsync.outbox WHERE destination = 'plain' ORDER BY id$$,
  $$VALUES ('d@example.com', 'Cohort Changed'::text, NULL::jsonb),
           ('d@example.com', NULL, '{"Email": "d@example.com"}'::jsonb),
           ('b@example.com', 'Cohort Changed', NULL)$$,
  'NULL cohorts_property: no multi-value property, no profile record on a remove');
SELECT is((SELECT state || ': ' || state_reason FROM cohortsync.destination_status WHERE name = 'ct'),
          'paused: paused by user', 'the status view shows paused and why');

-------------------------------------------------------------------------------
-- the worker's claim: per-identity exclusion and order
-------------------------------------------------------------------------------
SELECT cohortsync.resume_destination('ct');
CREATE TEMP TABLE c1 AS SELECT * FROM cohortsync._claim('ct', 2, '1 minute');
SELECT results_eq($$SELECT id FROM c1$$,
                  $$SELECT id FROM cohortsync.outbox WHERE destination = 'ct' ORDER BY id LIMIT 2$$,
                  'a claim takes the oldest records, in id order');
CREATE TEMP TABLE c2 AS SELECT * FROM cohortsync._claim('ct', 1000, '1 minute');
SELECT is((SELECT count(*) FROM c2 JOIN cohortsync.outbox o USING (id)
            WHERE o.identity IN (SELECT o1.identity FROM c1 JOIN cohortsync.outbox o1 USING (id))),
          0::bigint, 'no second claim carries an identity already in flight');
SELECT results_eq($$SELECT id FROM c2$$,
          $$SELECT id FROM cohortsync.outbox o
             WHERE destination = 'ct'
               AND identity NOT IN (SELECT o1.identity FROM c1 JOIN cohortsync.outbox o1 USING (id))
               AND change_id = (SELECT min(x.change_id) FROM cohortsync.outbox x
                                 WHERE x.destination = 'ct' AND x.identity = o.identity)
             ORDER BY id$$,
          'every other identity''s oldest change is claimed (event and profile), later changes wait');
SELECT is((SELECT in_flight FROM cohortsync.destination_status WHERE name = 'ct'),
          (SELECT count(*) FROM c1) + (SELECT count(*) FROM c2),
          'the status view counts them in flight');

-------------------------------------------------------------------------------
-- outcomes
-------------------------------------------------------------------------------
-- c2's records, as the request sent them: 1-based positions in "d"
CREATE TEMP TABLE sent AS SELECT row_number() OVER (ORDER BY id) AS pos, id FROM c2;
SELECT is(cohortsync._record_outcome('ct', (SELECT array_agg(id ORDER BY id) FROM c2), 200,
            format('{"status": "partial", "processed": %s, "unprocessed": [
                     {"status": "fail", "code": 516, "error": "Profile data is incorrect. Phone number is not valid.Skipped record number : 2", "record": {}},
                     {"status": "fail", "code": 555, "error": "Internal server error. Please retry.Skipped record number : 3", "record": {}}]}',
                   (SELECT count(*) - 2 FROM c2)),
            NULL, '3 days', '1 minute'),
          'requeued', 'a partial answer is settled; the 555 record stays queued (requeued)');
SELECT results_eq($$SELECT id, code, message FROM cohortsync.failed_records$$,
                  $$SELECT id, 516, 'Profile data is incorrect. Phone number is not valid.' FROM sent WHERE pos = 2$$,
                  'the refused record is in failed_records with code and message');
SELECT results_eq($$SELECT id, attempts, next_attempt_at > now(), lease_until IS NULL FROM cohortsync.outbox
                     WHERE id IN (SELECT id FROM c2)$$,
                  $$SELECT id, 1, true, true FROM sent WHERE pos = 3$$,
                  'code 555 is kept for a retry, later');
SELECT is((SELECT delivered FROM cohortsync.destination_status WHERE name = 'ct'),
          (SELECT count(*) - 2 FROM c2), 'the rest is delivered');
SELECT is((SELECT count(*) FROM cohortsync._claim('ct', 1000, '1 minute') c
             JOIN cohortsync.outbox o USING (id)
            WHERE o.identity IN (SELECT o2.identity FROM sent JOIN cohortsync.outbox o2 USING (id) WHERE pos = 3
                                 UNION SELECT o1.identity FROM c1 JOIN cohortsync.outbox o1 USING (id))),
          0::bigint,
          'nothing of an identity in flight, or of one whose record waits for its retry, is claimable');

SELECT is(cohortsync._record_outcome('ct', (SELECT array_agg(id ORDER BY id) FROM c1), 503,
            '{"status":"fail","error":"Service unavailable","code":503}', NULL, '3 days', '1 minute'),
          'retry', 'a 503 is retried');
SELECT results_eq($$SELECT attempts, last_error, lease_until IS NULL FROM cohortsync.outbox WHERE id IN (SELECT id FROM c1)$$,
                  $$VALUES (1, 'HTTP 503: Service unavailable', true), (1, 'HTTP 503: Service unavailable', true)$$,
                  '... with the error on the rows, released, none lost');
UPDATE cohortsync.outbox SET next_attempt_at = now() WHERE destination = 'ct';

CREATE TEMP TABLE c3 AS SELECT * FROM cohortsync._claim('ct', 1000, '1 minute');
SELECT is(cohortsync._record_outcome('ct', (SELECT array_agg(id ORDER BY id) FROM c3), 401,
            '{"status":"fail","error":"Account ID is not valid","code":401}', NULL, '3 days', '1 minute'),
          'retry', 'a 401 keeps the records');
SELECT results_eq($$SELECT state, state_reason FROM cohortsync.destination_status WHERE name = 'ct'$$,
                  $$VALUES ('paused', 'CleverTap answered HTTP 401: Account ID is not valid (check the account id, passcode and region, then resume the destination)')$$,
                  '... and pauses the destination, visibly');
SELECT is((SELECT count(*) FROM cohortsync.outbox WHERE id IN (SELECT id FROM c3) AND lease_until IS NULL),
          (SELECT count(*) FROM c3), '... with every record kept and released');

-- a 400 on several records asks for a split; on one, the record fails
CREATE TEMP TABLE c4 AS SELECT * FROM cohortsync._claim('plain', 1000, '1 minute');
SELECT is(cohortsync._record_outcome('plain', (SELECT array_agg(id ORDER BY id) FROM c4), 400,
            '{"status":"fail","error":"Malformed request","code":400}', NULL, '3 days', '1 minute'),
          'split', 'a 400 on several records is split');
SELECT is(cohortsync._record_outcome('plain', (SELECT array_agg(id) FROM (SELECT min(id) AS id FROM c4) x), 400,
            '{"status":"fail","error":"Malformed request","code":400}', NULL, '3 days', '1 minute'),
          'done', 'a 400 on one record settles it');
SELECT results_eq($$SELECT code, message FROM cohortsync.failed_records WHERE destination = 'plain'$$,
                  $$VALUES (400, 'HTTP 400: Malformed request')$$, '... as failed, code 400');

-- too old to retry
UPDATE cohortsync.outbox SET created_at = now() - interval '4 days', lease_until = now() + interval '1 minute'
 WHERE id = (SELECT max(id) FROM c4);
SELECT is(cohortsync._record_outcome('plain', ARRAY[(SELECT max(id) FROM c4)], 0, NULL,
            'Timeout was reached', '3 days', '1 minute'), 'retry', 'a timeout is retried ...');
SELECT matches((SELECT message FROM cohortsync.failed_records WHERE id = (SELECT max(id) FROM c4)),
               '^not delivered within cohortsync.max_retry_age \(3 days\); last error: Timeout was reached$',
               '... unless the record is older than max_retry_age');

SELECT is(cohortsync.replay_failed('plain'), 2::bigint, 'replay_failed queues failed records again');
SELECT is((SELECT count(*) FROM cohortsync.failed_records WHERE destination = 'plain'), 0::bigint,
          '... and takes them out of failed_records');

-------------------------------------------------------------------------------
-- a member whose fields change without joining or leaving: a profile update
-------------------------------------------------------------------------------
SELECT pg_temp.page('add_members', 's9', '[{"mixpanel_distinct_id": "u3", "$CleverTap_user_id": "",
                                             "email": "new@example.com", "first_name": "Neo"}]');
SELECT results_eq(
  $$SELECT destination, record FROM cohortsync.outbox WHERE change_id IS NULL ORDER BY destination$$,
  $$VALUES ('ct', jsonb_build_object('identity', 'u3', 'type', 'profile',
                                     'ts', floor(extract(epoch FROM now()))::bigint,
                                     'profileData', '{"Email": "new@example.com", "Name": "Neo"}'::jsonb)),
           ('plain', jsonb_build_object('identity', 'new@example.com', 'type', 'profile',
                                     'ts', floor(extract(epoch FROM now()))::bigint,
                                     'profileData', '{"Email": "new@example.com", "Name": "Neo"}'::jsonb))$$,
  'changed Email/Name of a member: a profile update with the current values, no event');
SELECT pg_temp.page('add_members', 's10', '[{"mixpanel_distinct_id": "u3", "$CleverTap_user_id": "",
                                              "email": "new@example.com", "first_name": "Neo"}]');
SELECT is((SELECT count(*) FROM cohortsync.outbox WHERE change_id IS NULL), 2::bigint,
          'the same fields again queue nothing');

-------------------------------------------------------------------------------
-- passcodes are secrets
-------------------------------------------------------------------------------
UPDATE cohortsync.outbox SET lease_until = now() + interval '1 minute'
 WHERE id = (SELECT min(id) FROM cohortsync.outbox WHERE destination = 'plain');
SELECT is(cohortsync._record_outcome('plain', ARRAY[(SELECT min(id) FROM cohortsync.outbox WHERE destination = 'plain')],
            -- the echo is built from the table, not typed: a statement holding the
            -- passcode would itself put it in the log (test/scan_logs.py)
            502, '<html>bad gateway; you sent X-CleverTap-Passcode: '
                 || (SELECT passcode FROM cohortsync.destination_secrets WHERE name = 'plain')
                 || '</html>', NULL,
            '3 days', '1 minute'), 'retry', 'a 502 is retried');
SELECT is((SELECT last_error FROM cohortsync.destination_status WHERE name = 'plain'),
          'HTTP 502: <html>bad gateway; you sent X-CleverTap-Passcode: [passcode]</html>',
          'an answer that echoes the passcode is scrubbed before it is stored');
CREATE ROLE cs_tap_reader;
GRANT USAGE ON SCHEMA cohortsync TO cs_tap_reader;
GRANT SELECT ON cohortsync.destination_status, cohortsync.destinations TO cs_tap_reader;
SET ROLE cs_tap_reader;
SELECT throws_ok($$SELECT passcode FROM cohortsync.destination_secrets$$, '42501',
                 'permission denied for table destination_secrets',
                 'another role cannot read the passcodes');
SELECT is((SELECT count(*) FROM cohortsync.destination_status s
            WHERE row_to_json(s)::text LIKE '%SECRET-PASS%'), 0::bigint,
          'the status view does not show them');
SELECT throws_ok($$SELECT cohortsync.set_clevertap_passcode('ct', 'x')$$, '42501', NULL,
                 'nor can it call the functions');
RESET ROLE;
SELECT throws_ok($$SELECT cohortsync.set_clevertap_passcode('nope', 'cs-secret-pass-3')$$, '42704',
                 'destination "nope" does not exist', 'an error never shows the passcode');
SELECT * FROM finish();
ROLLBACK;
