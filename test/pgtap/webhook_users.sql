-- Webhook users: add_webhook_user stores a salted SCRAM-SHA-256 hash, never the
-- password; drop_webhook_user refuses unknown users; nobody but the owner may touch them.
BEGIN;
SELECT plan(19);

SELECT lives_ok($$SELECT cohortsync.add_webhook_user('mixpanel', 'cs-secret correct horse battery')$$,
                'add_webhook_user creates a user');
SELECT is((SELECT count(*) FROM cohortsync.webhook_users WHERE username = 'mixpanel'), 1::bigint,
          'the user is stored');
SELECT matches((SELECT password_hash FROM cohortsync.webhook_users WHERE username = 'mixpanel'),
               '^SCRAM-SHA-256\$4096:[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+$',
               'the stored hash is a SCRAM-SHA-256 verifier');
SELECT is((SELECT strpos(password_hash, 'correct horse') FROM cohortsync.webhook_users
            WHERE username = 'mixpanel'), 0,
          'the stored hash does not contain the password');

-- salted: the same password twice gives two different hashes
SELECT cohortsync.add_webhook_user('mixpanel-eu', 'cs-secret correct horse battery');
SELECT isnt((SELECT password_hash FROM cohortsync.webhook_users WHERE username = 'mixpanel'),
            (SELECT password_hash FROM cohortsync.webhook_users WHERE username = 'mixpanel-eu'),
            'the same password gets a different salt for another user');

-- adding again replaces the password (and the salt), keeping one row
CREATE TEMP TABLE before AS SELECT password_hash FROM cohortsync.webhook_users WHERE username = 'mixpanel';
SELECT cohortsync.add_webhook_user('mixpanel', 'cs-secret correct horse battery');
SELECT is((SELECT count(*) FROM cohortsync.webhook_users WHERE username = 'mixpanel'), 1::bigint,
          'adding an existing user replaces it');
SELECT isnt((SELECT password_hash FROM cohortsync.webhook_users WHERE username = 'mixpanel'),
            (SELECT password_hash FROM before),
            'the same password set again gets a new salt');

-- names and passwords Basic authentication cannot carry
SELECT throws_ok($$SELECT cohortsync.add_webhook_user('mix:panel', 'pw')$$, '22023',
                 'webhook user name must not contain a colon', 'a colon in the user name is refused');
SELECT throws_ok($$SELECT cohortsync.add_webhook_user('', 'pw')$$, '22023', NULL,
                 'an empty user name is refused');
SELECT throws_ok($$SELECT cohortsync.add_webhook_user('someone', '')$$, '22023',
                 'webhook password must be between 1 and 1024 bytes long',
                 'an empty password is refused');
SELECT is((SELECT proconfig FROM pg_proc
            WHERE oid = 'cohortsync.add_webhook_user(text,text)'::regprocedure),
          ARRAY['log_min_error_statement=panic', 'log_min_messages=warning'],
          'add_webhook_user logs neither a failed call''s statement nor messages raised inside it (both may quote the password)');

-- drop
SELECT lives_ok($$SELECT cohortsync.drop_webhook_user('mixpanel-eu')$$, 'drop_webhook_user drops a user');
SELECT is((SELECT count(*) FROM cohortsync.webhook_users WHERE username = 'mixpanel-eu'), 0::bigint,
          'the dropped user is gone');
SELECT throws_ok($$SELECT cohortsync.drop_webhook_user('nobody')$$, '42704',
                 'webhook user "nobody" does not exist', 'dropping an unknown user is an error');

-- only the owner
SELECT ok(NOT has_table_privilege('public', 'cohortsync.webhook_users', 'SELECT'),
          'PUBLIC may not read webhook_users');
SELECT ok(NOT has_function_privilege('public', 'cohortsync.add_webhook_user(text,text)', 'EXECUTE')
          AND NOT has_function_privilege('public', 'cohortsync.drop_webhook_user(text)', 'EXECUTE'),
          'PUBLIC may not call add_webhook_user or drop_webhook_user');
CREATE ROLE cohortsync_test_nobody;
GRANT USAGE ON SCHEMA cohortsync TO cohortsync_test_nobody;
SET LOCAL ROLE cohortsync_test_nobody;
SELECT throws_ok($$SELECT * FROM cohortsync.webhook_users$$, '42501', NULL,
                 'another role cannot read the hashes');
SELECT throws_ok($$SELECT cohortsync.add_webhook_user('intruder', 'pw')$$, '42501', NULL,
                 'another role cannot add a user');
SELECT throws_ok($$SELECT cohortsync.drop_webhook_user('mixpanel')$$, '42501', NULL,
                 'another role cannot drop a user');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
