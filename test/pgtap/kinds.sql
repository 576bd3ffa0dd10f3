-- Destination kinds (issue #13): the kinds' limits and hosts, the checks on
-- destinations, what the worker reads (_delivery_targets), the reading of answers
-- per kind (_read_answer) and the generic outcome (_record_outcome).
BEGIN;
SET client_min_messages = warning;
SELECT plan(44);

-------------------------------------------------------------------------------
-- limits and hosts
-------------------------------------------------------------------------------
SELECT results_eq($$SELECT k, (cohortsync._kind_limits(k)).* FROM unnest(ARRAY['clevertap', 'mparticle', 'braze']) k$$,
                  $$VALUES ('clevertap', 1000, 15), ('mparticle', 100, 10), ('braze', 75, 15)$$,
                  'each kind''s records per request and requests in flight');
SELECT results_eq(
  $$SELECT cohortsync._base_url(k, r, NULL) FROM (VALUES
      ('clevertap', 'eu1'), ('clevertap', 'sg1'), ('mparticle', 'us1'), ('mparticle', 'au1'),
      ('braze', 'US-01'), ('braze', 'US-08'), ('braze', 'US-10'), ('braze', 'EU-02'), ('braze', 'AU-01')) v(k, r)$$,
  $$VALUES ('https://api.clevertap.com'), ('https://sg1.api.clevertap.com'),
           ('https://s2s.mparticle.com'), ('https://s2s.au1.mparticle.com'),
           ('https://rest.iad-01.braze.com'), ('https://rest.iad-08.braze.com'), ('https://rest.us-10.braze.com'),
           ('https://rest.fra-02.braze.eu'), ('https://rest.au-01.braze.com')$$,
  'the documented host of each region, pod and instance');
SELECT is(cohortsync._base_url('braze', 'US-01', 'http://127.0.0.1:9/'), 'http://127.0.0.1:9',
          'api_url replaces the host, without its trailing slash');
SELECT results_eq($$SELECT cohortsync._region_host(k, r) FROM (VALUES ('clevertap', 'us2'), ('mparticle', 'aps3'),
                      ('braze', 'us-01'), ('braze', 'US-09'), ('nope', 'us1')) v(k, r)$$,
                  $$VALUES (NULL::text), (NULL), (NULL), (NULL), (NULL)$$,
                  'a region of another kind, or none, has no host');

-------------------------------------------------------------------------------
-- the table's checks, whoever writes it
-------------------------------------------------------------------------------
SELECT throws_ok($$INSERT INTO cohortsync.destinations (name, account_id, region) VALUES ('x', 'A', 'us2')$$,
                 '23514', NULL, 'a CleverTap destination in an mParticle pod is refused');
SELECT throws_ok($$INSERT INTO cohortsync.destinations (name, account_id, region, kind) VALUES ('x', 'A', 'US-01', 'braze')$$,
                 '23514', NULL, 'a Braze destination has no account id');
SELECT throws_ok($$INSERT INTO cohortsync.destinations (name, region, kind) VALUES ('x', 'us1', 'mparticle')$$,
                 '23514', NULL, 'an mParticle destination needs its API key');
SELECT throws_ok($$INSERT INTO cohortsync.destinations (name, account_id, region, kind) VALUES ('x', 'A', 'us1', 'segment')$$,
                 '23514', NULL, 'an unknown kind is refused');
SELECT lives_ok($$INSERT INTO cohortsync.destinations (name, region, kind, batch_size, max_inflight)
                  VALUES ('bz', 'US-03', 'braze', 75, 15)$$, 'a Braze destination at its limits');
SELECT throws_ok($$UPDATE cohortsync.destinations SET batch_size = 76 WHERE name = 'bz'$$,
                 '23514', NULL, 'a batch_size above the kind''s limit is refused');
SELECT throws_ok($$UPDATE cohortsync.destinations SET max_inflight = 0 WHERE name = 'bz'$$,
                 '23514', NULL, 'max_inflight must be positive');
DELETE FROM cohortsync.destinations WHERE name = 'bz';

-------------------------------------------------------------------------------
-- _delivery_targets
-------------------------------------------------------------------------------
SELECT cohortsync.connect_clevertap('ct', 'ACC', 'cs-secret-kinds-1', 'sg1');
SELECT cohortsync.connect_clevertap('ct2', 'ACC2', 'cs-secret-kinds-2', 'eu1', 'http://127.0.0.1:9/x/');
-- (the secrets are compared with the table's, not typed: a statement holding one
-- would itself put it in the log, test/scan_logs.py)
SELECT results_eq(
  $$SELECT t.name, kind, base_url, account_id, t.secret = s.passcode, batch_size, max_inflight
      FROM cohortsync._delivery_targets() t JOIN cohortsync.destination_secrets s USING (name)$$,
  $$VALUES ('ct', 'clevertap', 'https://sg1.api.clevertap.com', 'ACC', true,
            least(current_setting('cohortsync.batch_size')::integer, 1000),
            least(current_setting('cohortsync.max_inflight')::integer, 15)),
           ('ct2', 'clevertap', 'http://127.0.0.1:9/x', 'ACC2', true,
            least(current_setting('cohortsync.batch_size')::integer, 1000),
            least(current_setting('cohortsync.max_inflight')::integer, 15))$$,
  'every active destination with its secret, URL and the GUCs'' limits');
UPDATE cohortsync.destinations SET batch_size = 10, max_inflight = 2 WHERE name = 'ct2';
SELECT cohortsync.pause_destination('ct');
SELECT results_eq($$SELECT name, batch_size, max_inflight FROM cohortsync._delivery_targets()$$,
                  $$VALUES ('ct2', 10, 2)$$,
                  'a destination''s own batch_size and max_inflight; a paused one is left out');
SELECT cohortsync.resume_destination('ct');
DELETE FROM cohortsync.destination_secrets WHERE name = 'ct2';
SELECT results_eq($$SELECT name FROM cohortsync._delivery_targets()$$, $$VALUES ('ct')$$,
                  'a destination without a secret is left out');
SELECT is((SELECT kind FROM cohortsync.destination_status WHERE name = 'ct'), 'clevertap',
          'destination_status shows the kind');

-------------------------------------------------------------------------------
-- _read_answer('clevertap', ...): CleverTap's documented answers
-------------------------------------------------------------------------------
CREATE FUNCTION pg_temp.read(http integer, body text, ids bigint[] DEFAULT '{11,12,13}')
RETURNS TABLE (verdict text, refused_ids bigint[], refused_codes integer[], refused_messages text[],
               retry_ids bigint[], error text)
LANGUAGE sql AS $$ SELECT * FROM cohortsync._read_answer('clevertap', http, body, ids) $$;

SELECT results_eq($$SELECT * FROM pg_temp.read(200, '{"status": "success", "processed": 3, "unprocessed": []}')$$,
                  $$VALUES ('accepted', '{}'::bigint[], '{}'::integer[], '{}'::text[], '{}'::bigint[], NULL::text)$$,
                  'clevertap: success: accepted');
SELECT results_eq(
  $$SELECT * FROM pg_temp.read(200, '{"status": "partial", "processed": 1, "unprocessed": [
      {"status": "fail", "code": 555, "error": "Internal server error. Please retry.Skipped record number : 3", "record": {}},
      {"status": "fail", "code": 516, "error": "Profile data is incorrect. Phone number is not valid.Skipped record number : 1", "record": {}}]}')$$,
  $$VALUES ('partial', '{11}'::bigint[], '{516}'::integer[],
            '{"Profile data is incorrect. Phone number is not valid."}'::text[], '{13}'::bigint[],
            'CleverTap answered 555 (server error) for some records')$$,
  'clevertap: partial: refused records by their index, 555 to retry');
SELECT results_eq($$SELECT verdict, retry_ids, error FROM pg_temp.read(200, '{"status": "fail", "unprocessed": []}')$$,
                  $$VALUES ('retry', '{11,12,13}'::bigint[], 'CleverTap answered status "fail" without naming a record')$$,
                  'clevertap: a "fail" naming no record: retry them all');
SELECT results_eq($$SELECT verdict, refused_ids FROM pg_temp.read(200, '{"status": "partial", "unprocessed": [
                      {"code": 516, "error": "Skipped record number : 9"}]}')$$,
                  $$VALUES ('accepted', '{}'::bigint[])$$,
                  'clevertap: an index beyond the request names nothing');
SELECT is((SELECT verdict FROM pg_temp.read(400, '{"status":"fail","error":"Malformed request","code":400}')),
          'split', 'clevertap: 400 on several records: split');
SELECT results_eq($$SELECT * FROM pg_temp.read(400, '{"status":"fail","error":"Malformed request","code":400}', '{12}')$$,
                  $$VALUES ('partial', '{12}'::bigint[], '{400}'::integer[], '{"HTTP 400: Malformed request"}'::text[],
                            '{}'::bigint[], NULL::text)$$,
                  'clevertap: 400 on one record: it is refused, visibly');
SELECT results_eq($$SELECT verdict, error FROM pg_temp.read(400, '{"status":"fail","error":"Malformed request","code":400}', '{}')$$,
                  $$VALUES ('accepted', NULL::text)$$,
                  'clevertap: the connection test''s empty upload refused by CleverTap itself: connected');
SELECT results_eq($$SELECT verdict, error FROM pg_temp.read(400, 'bad', '{}')$$,
                  $$VALUES ('pause', 'CleverTap answered HTTP 400: bad (check the region and api_url, then resume the destination)')$$,
                  'clevertap: a 400 that is not CleverTap''s to the connection test: not connected, and why');
SELECT results_eq($$SELECT verdict, error FROM pg_temp.read(401, '{"status":"fail","error":"Account ID is not valid","code":401}')$$,
                  $$VALUES ('pause', 'CleverTap answered HTTP 401: Account ID is not valid (check the account id, passcode and region, then resume the destination)')$$,
                  'clevertap: 401: pause, with CleverTap''s reason');
SELECT is((SELECT verdict FROM pg_temp.read(403, '')), 'pause', 'clevertap: 403: pause');
SELECT results_eq($$SELECT verdict, retry_ids, error FROM pg_temp.read(429, '{"status":"fail","error":"Too many requests"}')$$,
                  $$VALUES ('retry', '{11,12,13}'::bigint[], 'HTTP 429: Too many requests')$$,
                  'clevertap: 429: retry');
SELECT results_eq($$SELECT verdict, error FROM pg_temp.read(503, '')$$, $$VALUES ('retry', 'HTTP 503: no body')$$,
                  'clevertap: 503: retry');
SELECT results_eq($$SELECT verdict, error FROM pg_temp.read(0, NULL)$$, $$VALUES ('retry', 'no answer')$$,
                  'no answer: retry');
SELECT results_eq($$SELECT verdict, error FROM pg_temp.read(200, '<html>')$$,
                  $$VALUES ('retry', 'HTTP 200 with an unreadable body')$$, 'clevertap: an unreadable 200: retry');
SELECT results_eq($$SELECT verdict, error FROM pg_temp.read(200, '{"status": "success"}', '{}')$$,
                  $$VALUES ('accepted', NULL::text)$$, 'clevertap: the connection test''s answer: accepted');
SELECT throws_ok($$SELECT * FROM cohortsync._read_answer('segment', 200, '', '{}')$$, '22023',
                 'unknown destination kind "segment"', 'an unknown kind is an error');

-------------------------------------------------------------------------------
-- _record_outcome
-------------------------------------------------------------------------------
INSERT INTO cohortsync.outbox (destination, identity, record)
SELECT 'ct', 'u' || i, jsonb_build_object('identity', 'u' || i) FROM generate_series(1, 6) i;
CREATE TEMP TABLE q AS SELECT row_number() OVER (ORDER BY id) AS pos, id FROM cohortsync.outbox;

SELECT is(cohortsync._record_outcome('ct', (SELECT array_agg(id ORDER BY id) FROM q WHERE pos <= 2), 200,
            '{"status": "success", "processed": 2, "unprocessed": []}', NULL, '3 days', '1 minute',
            (SELECT array_agg(id ORDER BY id) FROM q WHERE pos = 3)),
          'done', 'everything accepted: done');
SELECT results_eq($$SELECT id, lease_until > now() FROM cohortsync.outbox WHERE id IN (SELECT id FROM q WHERE pos <= 3)$$,
                  $$SELECT id, true FROM q WHERE pos = 3$$,
                  '... the accepted records are gone; the rest of the claim keeps its lease');
SELECT is(cohortsync._record_outcome('ct', ARRAY[(SELECT id FROM q WHERE pos = 3)], 200,
            '{"status": "partial", "unprocessed": [{"code": 555, "error": "Please retry.Skipped record number : 1"}]}',
            NULL, '3 days', '1 minute'),
          'requeued', 'a record kept for a retry: requeued, so the worker looks behind its cursor');
SELECT is(cohortsync._record_outcome('ct', ARRAY[(SELECT id FROM q WHERE pos = 4)], 429,
            '{"status":"fail","error":"Too many requests"}', NULL, '3 days', '1 minute', '{}', 120),
          'retry', 'a 429 with Retry-After: retry');
SELECT ok((SELECT next_attempt_at >= now() + interval '120 seconds' FROM cohortsync.outbox
            WHERE id = (SELECT id FROM q WHERE pos = 4)),
          '... not before Retry-After says');
SELECT ok((SELECT next_attempt_at < now() + interval '2 seconds' FROM cohortsync.outbox
            WHERE id = (SELECT id FROM q WHERE pos = 3)),
          '... while without Retry-After the first retry comes within 1 s');
SELECT is(cohortsync._record_outcome('ct', ARRAY[(SELECT id FROM q WHERE pos = 5)], 0, NULL,
            'Connection refused', '3 days', '1 minute'),
          'retry', 'no answer: retry');
SELECT is((SELECT last_error FROM cohortsync.outbox WHERE id = (SELECT id FROM q WHERE pos = 5)),
          'Connection refused', '... with the transport''s error');
SELECT results_eq($$SELECT requests, delivered, failed, last_success_at IS NOT NULL FROM cohortsync.destination_stats
                     WHERE destination = 'ct'$$,
                  $$VALUES (4::bigint, 2::bigint, 0::bigint, true)$$, 'the counters');
SELECT cohortsync.disconnect_clevertap('ct');
SELECT is(cohortsync._record_outcome('ct', ARRAY[(SELECT id FROM q WHERE pos = 6)], 200,
            '{"status": "success"}', NULL, '3 days', '1 minute'),
          'done', 'the outcome of a request to a destination disconnected meanwhile: nothing left to do');

-------------------------------------------------------------------------------
-- the builders are inlined into the triggers' statement: no call per row
-------------------------------------------------------------------------------
CREATE FUNCTION pg_temp.plan_of(q text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE r text; p text := '';
BEGIN
  FOR r IN EXECUTE 'EXPLAIN (COSTS OFF) ' || q LOOP p := p || r || E'\n'; END LOOP;
  RETURN p;
END $$;
SELECT unalike(pg_temp.plan_of($$
    SELECT d.name, r.* FROM cohortsync.membership_changes c
      JOIN cohortsync.destinations d ON d.kind = 'clevertap'
     CROSS JOIN LATERAL cohortsync._clevertap_records(d.identity_property, d.event_name, d.cohorts_property,
                c.cohort_id, c.cohort_id, c.distinct_id, c.properties, c.change = 'added', c.changed_at) r$$),
  '%Function Scan%', 'the CleverTap builder is inlined');
SELECT unalike(pg_temp.plan_of($$
    SELECT d.name, r.* FROM cohortsync.membership_changes c
      JOIN cohortsync.destinations d ON d.kind = 'mparticle'
     CROSS JOIN LATERAL cohortsync._mparticle_records(d.identity_property, d.settings, c.cohort_id,
                c.distinct_id, c.properties, c.change = 'added') r$$),
  '%Function Scan%', 'the mParticle builder is inlined');
SELECT unalike(pg_temp.plan_of($$
    SELECT d.name, r.* FROM cohortsync.membership_changes c
      JOIN cohortsync.destinations d ON d.kind = 'braze'
     CROSS JOIN LATERAL cohortsync._braze_records(d.identity_property, d.cohorts_property, d.settings,
                c.cohort_id, c.cohort_id, c.distinct_id, c.properties, c.change = 'added', c.changed_at) r$$),
  '%Function Scan%', 'the Braze builder is inlined');

SELECT * FROM finish();
ROLLBACK;
