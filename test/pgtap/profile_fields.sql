-- Profile fields, every kind: an email that is not an address is left out and
-- counted; Mixpanel's reserved $email, $phone and $name stand in for email,
-- phone_number and first_name/last_name when those are absent.
BEGIN;
SET client_min_messages = warning;
SELECT plan(12);

CREATE FUNCTION pg_temp.page(action text, session text, members jsonb)
RETURNS jsonb LANGUAGE sql AS $$
  SELECT cohortsync.ingest(jsonb_build_object(
    'action', action,
    'parameters', jsonb_build_object(
      'mixpanel_project_id', 1001, 'mixpanel_cohort_id', '4242',
      'mixpanel_cohort_name', 'Power users', 'mixpanel_session_id', session,
      'page_info', jsonb_build_object('total_pages', 1, 'page_count', 1),
      'members', members)))
$$;

SELECT results_eq($q$SELECT e, cohortsync._is_email(e) FROM unnest(ARRAY['string', '1234', '$$$$$', 'a@b', 'a b@example.com',
                      'ann@example.com', 'o''brien+x@mail.example.co.uk', '']) e$q$,
                  $q$VALUES ('string', false), ('1234', false), ('$$$$$', false), ('a@b', false), ('a b@example.com', false),
                           ('ann@example.com', true), ('o''brien+x@mail.example.co.uk', true), ('', false)$q$,
                  '_is_email: Mixpanel''s example "string" and the recorded refusals are not addresses');

SELECT cohortsync.connect_clevertap('ct', 'ACC', 'cs-secret-fields-1', 'eu1');
SELECT cohortsync.connect_braze('bz', 'cs-secret-fields-2', 'US-01');
SELECT pg_temp.page('add_members', 's1', '[
  {"mixpanel_distinct_id": "u1", "email": "string", "first_name": "Una"},
  {"mixpanel_distinct_id": "u2", "$email": "ann@example.com", "$phone": "+1 555 010 0002", "$name": "Ann Lee"},
  {"mixpanel_distinct_id": "u3", "email": "doc@example.com", "$email": "res@example.com",
   "last_name": "Smith", "$name": "Res Name"}]');

SELECT results_eq(
  $$SELECT identity, record -> 'profileData' FROM cohortsync.outbox
     WHERE destination = 'ct' AND record ->> 'type' = 'profile' ORDER BY identity$$,
  $$VALUES ('u1', '{"Mixpanel Cohorts": {"$add": ["Power users"]}, "Name": "Una"}'::jsonb),
           ('u2', '{"Mixpanel Cohorts": {"$add": ["Power users"]}, "Email": "ann@example.com", "Phone": "+15550100002", "Name": "Ann Lee"}'),
           ('u3', '{"Mixpanel Cohorts": {"$add": ["Power users"]}, "Email": "doc@example.com", "Name": "Smith"}')$$,
  'clevertap: the bad email left out; $email, $phone, $name used when the documented names are absent, never over them');
SELECT results_eq($$SELECT identity, email_dropped FROM cohortsync.outbox WHERE destination = 'ct' AND email_dropped$$,
                  $$VALUES ('u1', true)$$, 'clevertap: the dropped email is flagged on the change''s event record');
SELECT results_eq(
  $$SELECT identity, (record -> 'attributes') - 'Mixpanel Cohorts', email_dropped FROM cohortsync.outbox
     WHERE destination = 'bz' ORDER BY identity$$,
  $$VALUES ('u1', '{"external_id": "u1", "first_name": "Una"}'::jsonb, true),
           ('u2', '{"external_id": "u2", "email": "ann@example.com", "phone": "+15550100002", "first_name": "Ann Lee"}', false),
           ('u3', '{"external_id": "u3", "email": "doc@example.com", "last_name": "Smith"}', false)$$,
  'braze: the same rules ($name whole as first_name)');
SELECT results_eq(
  $$SELECT distinct_id COLLATE "default", email, phone, first_name, last_name FROM cohortsync.members ORDER BY distinct_id$$,
  $$VALUES ('u1', 'string', NULL, 'Una', NULL), ('u2', 'ann@example.com', '+1 555 010 0002', 'Ann Lee', NULL),
           ('u3', 'doc@example.com', NULL, NULL, 'Smith')$$,
  'ingest stores the reserved names in members when the documented ones are absent');

-- counted when delivered
SELECT is(cohortsync._record_outcome('ct', (SELECT array_agg(id ORDER BY id) FROM cohortsync.outbox WHERE destination = 'ct'),
            200, '{"status": "success", "processed": 6, "unprocessed": []}', NULL, '3 days', '1 minute'),
          'done', 'clevertap: delivered');
SELECT is(cohortsync._record_outcome('bz', (SELECT array_agg(id ORDER BY id) FROM cohortsync.outbox WHERE destination = 'bz'),
            201, '{"message": "success"}', NULL, '3 days', '1 minute'),
          'done', 'braze: delivered');
SELECT results_eq($$SELECT name, emails_dropped, phones_dropped FROM cohortsync.destination_status ORDER BY name$$,
                  $$VALUES ('bz', 1::bigint, 0::bigint), ('ct', 1::bigint, 0::bigint)$$,
                  'destination_status counts the emails dropped');

-- a member whose stored email changes to one that is not an address: left out
SELECT pg_temp.page('add_members', 's2', '[{"mixpanel_distinct_id": "u2", "email": "1234", "$phone": "+1 555 010 0002",
                                            "$name": "Ann Lee"}]');
SELECT results_eq($$SELECT destination, record -> 'profileData', record -> 'attributes', email_dropped FROM cohortsync.outbox ORDER BY destination$$,
                  $$VALUES ('bz', NULL::jsonb, '{"external_id": "u2", "phone": "+15550100002", "first_name": "Ann Lee"}'::jsonb, true),
                           ('ct', '{"Phone": "+15550100002", "Name": "Ann Lee"}'::jsonb, NULL, true)$$,
                  'a profile update leaves a bad email out too, and flags it');

-- the reserved names of another type are ignored, as before
SELECT is(pg_temp.page('add_members', 's3', '[{"mixpanel_distinct_id": "u4", "$email": {"x": 1}, "$name": ["A"]}]') ->> 'status',
          'success', 'a reserved name that is not a string is ignored, not an error');
SELECT results_eq($$SELECT email, first_name FROM cohortsync.members WHERE distinct_id = 'u4'$$,
                  $$VALUES (NULL::text, NULL::text)$$, '... and not stored');
SELECT is((SELECT count(*) FROM cohortsync.outbox WHERE identity = 'u4' AND (record::text LIKE '%"x"%' OR record::text LIKE '%["A"]%')),
          0::bigint, '... nor sent');

SELECT * FROM finish();
ROLLBACK;
