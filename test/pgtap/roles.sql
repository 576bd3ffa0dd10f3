-- The roles README.md documents: nothing is granted to PUBLIC; grant_ingest() makes
-- a role that may only call ingest (SECURITY DEFINER), grant_read() one that may
-- only read membership. Neither can read passcodes or webhook password
-- verifiers, change destinations, call any other function, or write a table.
BEGIN;
SET client_min_messages = warning;
\ir 00_helpers.inc
SELECT plan(89);

CREATE ROLE cs_test_ingest;
CREATE ROLE cs_test_reader;
CREATE ROLE cs_test_nobody;
GRANT USAGE ON SCHEMA cohortsync TO cs_test_nobody;    -- USAGE alone gives nothing

SELECT lives_ok($$SELECT cohortsync.grant_ingest('cs_test_ingest')$$, 'grant_ingest() makes an ingest role');
SELECT lives_ok($$SELECT cohortsync.grant_read('cs_test_reader')$$, 'grant_read() makes a reader');
SELECT lives_ok($$SELECT cohortsync.grant_read('cs_test_reader')$$, 'calling it again changes nothing');
SELECT throws_ok($$SELECT cohortsync.grant_read(current_user::text::regrole)$$, '22023', NULL,
                 'a superuser or the owner is refused (it has every right already)');
SELECT throws_ok($$SELECT cohortsync.grant_read('no_such_role_at_all')$$, '42704', NULL,
                 'an unknown role is an error');

-- something to read, and secrets to guard, set by the owner
SELECT cohortsync.connect_clevertap('ct', 'ACC', 'cs-secret-roles-passcode', 'eu1', 'http://127.0.0.1:9');
SELECT cohortsync.add_webhook_user('mixpanel', 'cs-secret-roles-password');
CREATE TEMP TABLE secrets_before AS SELECT * FROM cohortsync.destination_secrets;
SELECT pg_temp.ingest(pg_temp.page('add_members', 'r0', 's', ARRAY['x', 'y']));
SELECT pg_temp.ingest(pg_temp.page('members', 'r0', 'full', ARRAY['x'], 1, 2));   -- staged
UPDATE cohortsync.outbox SET last_error = 'HTTP 502' WHERE id = (SELECT min(id) FROM cohortsync.outbox);
WITH gone AS (DELETE FROM cohortsync.outbox WHERE id = (SELECT max(id) FROM cohortsync.outbox) RETURNING *)
INSERT INTO cohortsync.failed_records (id, destination, identity, record, created_at, attempts, message)
SELECT id, destination, identity, record, created_at, 1, 'refused' FROM gone;

-------------------------------------------------------------------------------
-- What each role holds, from the catalogs: every relation, sequence and
-- function of the extension, not only the ones named below.
-------------------------------------------------------------------------------
CREATE FUNCTION pg_temp.rels(role name, privs text) RETURNS text[] LANGUAGE sql AS $$
  SELECT coalesce(array_agg(c.relname::text ORDER BY c.relname), '{}')
    FROM pg_class c
   WHERE c.relnamespace = 'cohortsync'::regnamespace AND c.relkind IN ('r', 'v', 'm', 'p', 'f')
     AND (has_table_privilege(role, c.oid, privs) OR has_any_column_privilege(role, c.oid,
            CASE WHEN privs LIKE '%SELECT%' THEN 'SELECT' ELSE 'INSERT, UPDATE, REFERENCES' END))
$$;
CREATE FUNCTION pg_temp.seqs(role name) RETURNS text[] LANGUAGE sql AS $$
  SELECT coalesce(array_agg(c.relname::text ORDER BY c.relname), '{}')
    FROM pg_class c
   WHERE c.relnamespace = 'cohortsync'::regnamespace AND c.relkind = 'S'
     AND CASE WHEN c.relkind = 'S' THEN has_sequence_privilege(role, c.oid, 'USAGE, SELECT, UPDATE') END
$$;
CREATE FUNCTION pg_temp.funcs(role name) RETURNS text[] LANGUAGE sql AS $$
  SELECT coalesce(array_agg(p.oid::regprocedure::text ORDER BY p.oid::regprocedure::text), '{}')
    FROM pg_proc p
   WHERE p.pronamespace = 'cohortsync'::regnamespace AND has_function_privilege(role, p.oid, 'EXECUTE')
$$;
\set writes '''INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER'''

SELECT is(pg_temp.rels('cs_test_reader', 'SELECT'),
          ARRAY['cohorts', 'destination_status', 'members', 'membership_changes', 'staged_members',
                'sync_pages', 'sync_sessions'],
          'the reader may read membership, history, sync state and the status view, nothing else');
SELECT is(pg_temp.rels('cs_test_reader', :writes), '{}', 'the reader may write no table');
SELECT is(pg_temp.seqs('cs_test_reader'), '{}', 'nor use a sequence');
-- _worker_in_flight() and _delivery_blocker(text) are PUBLIC's: destination_status
-- reads in_flight and reason from them
SELECT is(array_remove(array_remove(pg_temp.funcs('cs_test_reader'), 'cohortsync._worker_in_flight()'),
                       'cohortsync._delivery_blocker(text)'), '{}',
          'nor call any function');
SELECT is(pg_temp.rels('cs_test_ingest', 'SELECT'), '{}', 'the ingest role may read no table');
SELECT is(pg_temp.rels('cs_test_ingest', :writes), '{}', 'nor write one');
SELECT is(pg_temp.seqs('cs_test_ingest'), '{}', 'nor use a sequence');
SELECT is(array_remove(array_remove(pg_temp.funcs('cs_test_ingest'), 'cohortsync._worker_in_flight()'),
                       'cohortsync._delivery_blocker(text)'),
          ARRAY['cohortsync.ingest(jsonb)'],
          'and may call ingest(jsonb) only');
SELECT is(pg_temp.rels('public', 'SELECT') || pg_temp.rels('public', :writes) || pg_temp.seqs('public')
          || pg_temp.funcs('public'), ARRAY['cohortsync._delivery_blocker(text)', 'cohortsync._worker_in_flight()'],
          'PUBLIC holds nothing but the status view''s in-flight counts and reason (and no USAGE on the schema)');
SELECT ok(NOT has_schema_privilege('public', 'cohortsync', 'USAGE'), 'PUBLIC may not use the schema');
SELECT ok(NOT has_schema_privilege('public', 'cohortsync', 'USAGE, CREATE'), 'not even the schema');
SELECT ok(NOT has_schema_privilege('cs_test_reader', 'cohortsync', 'CREATE')
          AND NOT has_schema_privilege('cs_test_ingest', 'cohortsync', 'CREATE'),
          'neither role may create objects in the schema');

-- What runs with the owner's rights runs with a search_path the caller cannot
-- put objects into (pg_temp last: it is never searched for functions or operators).
SELECT is(ARRAY(SELECT p.oid::regprocedure::text FROM pg_proc p
                 WHERE p.pronamespace = 'cohortsync'::regnamespace AND p.prosecdef
                   AND NOT coalesce(p.proconfig @> ARRAY['search_path=pg_catalog, pg_temp'], false)
                 ORDER BY 1),
          '{}', 'every SECURITY DEFINER function pins search_path to pg_catalog, pg_temp');

-- The only view is owned by the owner: it reads the tables with the owner's
-- rights, so what it shows is what the reader gets. No column of it may hold a
-- secret, whatever the rows.
SELECT is(ARRAY(SELECT a.attname::text FROM pg_attribute a
                 WHERE a.attrelid = 'cohortsync.destination_status'::regclass AND a.attnum > 0
                 ORDER BY a.attnum),
          ARRAY['name', 'state', 'state_reason', 'paused_at', 'pending', 'in_flight', 'delivered',
                'failed', 'oldest_pending_age', 'last_success_at', 'last_error', 'last_error_at',
                'phones_dropped', 'requests', 'reason', 'kind', 'emails_dropped', 'consecutive_failures',
                'backoff_until'],
          'destination_status has these columns (a new one must be checked for secrets here)');
SELECT is(ARRAY(SELECT c.relname::text FROM pg_class c
                 WHERE c.relnamespace = 'cohortsync'::regnamespace AND c.relkind IN ('v', 'm')
                 ORDER BY 1),
          ARRAY['destination_status'], 'it is the only view');

-------------------------------------------------------------------------------
-- The reader, at work
-------------------------------------------------------------------------------
SET ROLE cs_test_reader;
SELECT is(pg_temp.members_of('r0'), ARRAY['x', 'y'], 'reader: reads members');
SELECT is(pg_temp.changes_of('r0'), ARRAY['added:x', 'added:y'], 'reader: reads the history');
SELECT is((SELECT name FROM cohortsync.cohorts WHERE cohort_id = 'r0'), 'Cohort', 'reader: reads cohorts');
SELECT is((SELECT count(*) FROM cohortsync.sync_sessions WHERE cohort_id = 'r0'), 2::bigint,
          'reader: reads sync sessions');
SELECT is((SELECT count(*) FROM cohortsync.sync_pages WHERE cohort_id = 'r0'), 2::bigint,
          'reader: reads sync pages');
SELECT is((SELECT count(*) FROM cohortsync.staged_members WHERE cohort_id = 'r0'), 1::bigint,
          'reader: reads members staged by an unfinished full sync');
SELECT is((SELECT name || ' ' || state || ' ' || pending || ' ' || failed FROM cohortsync.destination_status),
          'ct active 3 1', 'reader: reads the status view');
-- kept to be compared with the passcode by the owner below (a statement that typed
-- the passcode would put it into the server log, see test/scan_logs.py)
CREATE TEMP TABLE reader_saw AS SELECT s::text AS row FROM cohortsync.destination_status s;

SELECT throws_ok(q, '42501', NULL, 'reader may not: ' || q)
  FROM (VALUES ('SELECT passcode FROM cohortsync.destination_secrets'),
               ('SELECT password_hash FROM cohortsync.webhook_users'),
               ('SELECT username FROM cohortsync.webhook_users'),
               ('SELECT account_id FROM cohortsync.destinations'),
               ('SELECT record FROM cohortsync.outbox'),
               ('SELECT record FROM cohortsync.failed_records'),
               ('SELECT * FROM cohortsync.destination_stats'),
               ($$SELECT cohortsync.connect_clevertap('evil', 'ACC', 'cs-secret-evil', 'eu1', 'http://evil.example')$$),
               ($$SELECT cohortsync.set_clevertap_passcode('ct', 'cs-secret-evil')$$),
               ($$SELECT cohortsync.disconnect_clevertap('ct')$$),
               ($$SELECT cohortsync.test_destination('ct')$$),
               ($$SELECT cohortsync.pause_destination('ct')$$),
               ($$SELECT cohortsync.resume_destination('ct')$$),
               ($$SELECT cohortsync.replay_failed()$$),
               ($$SELECT cohortsync._reset_backoff(NULL)$$),
               ($$SELECT cohortsync.add_webhook_user('evil', 'cs-secret-evil')$$),
               ($$SELECT cohortsync.drop_webhook_user('mixpanel')$$),
               ($$SELECT cohortsync.ingest(pg_temp.page('add_members', 'r0', 'evil', ARRAY['evil']))$$),
               ($$SELECT cohortsync.explain_swap('1001', 'r0', 'full')$$),
               ($$SELECT cohortsync.grant_read('cs_test_nobody')$$),
               ($$SELECT cohortsync.revoke_access('cs_test_ingest')$$),
               ($$SELECT * FROM cohortsync._claim('ct', 10, '1 minute')$$),
               ($$SELECT cohortsync._record_outcome('ct', '{1}', 200, '{"status":"success"}', NULL, '1 day', '1 minute')$$),
               ($$INSERT INTO cohortsync.members (project_id, cohort_id, distinct_id, properties) VALUES ('1001', 'r0', 'forged', '{}')$$),
               ($$UPDATE cohortsync.members SET email = 'forged@example.com'$$),
               ($$DELETE FROM cohortsync.membership_changes$$),
               ($$TRUNCATE cohortsync.cohorts$$),
               ($$UPDATE cohortsync.destinations SET api_url = 'http://evil.example'$$),
               ($$INSERT INTO cohortsync.destination_secrets VALUES ('ct', 'cs-secret-evil')$$),
               ($$UPDATE cohortsync.sync_sessions SET state = 'completed'$$),
               ($$SELECT nextval('cohortsync.outbox_id_seq')$$)) v(q);
RESET ROLE;

SELECT is((SELECT count(*) FROM reader_saw r, cohortsync.destination_secrets d
            WHERE strpos(r.row, d.passcode) > 0), 0::bigint,
          'reader: the status view holds no passcode');

-------------------------------------------------------------------------------
-- The ingest role, at work
-------------------------------------------------------------------------------
SET ROLE cs_test_ingest;
SELECT is(cohortsync.ingest(pg_temp.page('add_members', 'r1', 's', ARRAY['a'])) ->> 'status', 'success',
          'an ingest-only role can ingest');
SELECT throws_ok(q, '42501', NULL, 'ingest role may not: ' || q)
  FROM (VALUES ('SELECT * FROM cohortsync.members'),
               ('SELECT * FROM cohortsync.membership_changes'),
               ('SELECT * FROM cohortsync.cohorts'),
               ('SELECT * FROM cohortsync.destination_status'),
               ('SELECT passcode FROM cohortsync.destination_secrets'),
               ('SELECT password_hash FROM cohortsync.webhook_users'),
               ('SELECT record FROM cohortsync.outbox'),
               ($$SELECT cohortsync.connect_clevertap('evil', 'ACC', 'cs-secret-evil', 'eu1', 'http://evil.example')$$),
               ($$SELECT cohortsync.set_clevertap_passcode('ct', 'cs-secret-evil')$$),
               ($$SELECT cohortsync.pause_destination('ct')$$),
               ($$SELECT cohortsync.resume_destination('ct')$$),
               ($$SELECT cohortsync.disconnect_clevertap('ct')$$),
               ($$SELECT cohortsync.test_destination('ct')$$),
               ($$SELECT cohortsync.add_webhook_user('evil', 'cs-secret-evil')$$),
               ($$SELECT cohortsync.explain_swap('1001', 'r1', 's')$$),
               ($$SELECT cohortsync.grant_read('cs_test_ingest')$$),
               ($$INSERT INTO cohortsync.members (project_id, cohort_id, distinct_id, properties) VALUES ('1001', 'r1', 'forged', '{}')$$),
               ($$UPDATE cohortsync.destinations SET api_url = 'http://evil.example'$$),
               ($$DELETE FROM cohortsync.outbox$$)) v(q);
RESET ROLE;
SELECT is(pg_temp.members_of('r1'), ARRAY['a'], 'the page was applied as the owner');

-------------------------------------------------------------------------------
-- A role with USAGE on the schema and nothing else
-------------------------------------------------------------------------------
SET ROLE cs_test_nobody;
SELECT throws_ok($$SELECT cohortsync.ingest(pg_temp.page('add_members', 'r1', 's', ARRAY['a']))$$,
                 '42501', NULL, 'PUBLIC may not call ingest');
SELECT throws_ok($$SELECT * FROM cohortsync.members$$, '42501', NULL, 'PUBLIC may not read members');
RESET ROLE;

-- nothing was changed by the attempts
SELECT is((SELECT api_url || ' ' || state FROM cohortsync.destinations), 'http://127.0.0.1:9 active',
          'the destination is as the owner left it');
SELECT results_eq('SELECT * FROM cohortsync.destination_secrets', 'SELECT * FROM secrets_before',
                  'and so is its passcode');

-------------------------------------------------------------------------------
-- revoke_access takes everything back, so that the role can be dropped
-------------------------------------------------------------------------------
GRANT SELECT ON cohortsync.destinations TO cs_test_reader;     -- granted by hand, too
SELECT lives_ok($$SELECT cohortsync.revoke_access('cs_test_reader')$$, 'revoke_access');
SELECT is(pg_temp.rels('cs_test_reader', 'SELECT')
          || array_remove(array_remove(pg_temp.funcs('cs_test_reader'), 'cohortsync._worker_in_flight()'),
                          'cohortsync._delivery_blocker(text)'), '{}',
          'the reader holds nothing any more');
SELECT ok(NOT has_schema_privilege('cs_test_reader', 'cohortsync', 'USAGE'), 'not even USAGE');
SELECT lives_ok($$SELECT cohortsync.revoke_access('cs_test_ingest')$$, 'revoke_access of the ingest role');
DROP TABLE reader_saw;      -- the reader's own
SELECT lives_ok($$DROP ROLE cs_test_reader, cs_test_ingest$$, 'both roles can be dropped');

SELECT * FROM finish();
ROLLBACK;
