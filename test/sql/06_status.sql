-- What destination_status.reason and cohortsync.status() say when nothing can
-- move. No delivery worker serves this database: scripts/test's cluster preloads
-- the library, but its worker serves cohortsync.database ("postgres"), and
-- make installcheck's server may not preload it at all. Either way the reason
-- starts with that, shown as <not served> below.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS cohortsync CASCADE;
CREATE EXTENSION cohortsync;
RESET client_min_messages;

SELECT library_version IN ('unknown', sql_version) AS library_matches, sql_version
  FROM cohortsync.version();

SELECT cohortsync.connect_clevertap('ct', 'ACC', 'cs-secret-status', 'eu1', 'http://127.0.0.1:9');
SELECT cohortsync.connect_clevertap('nopass', 'ACC', 'cs-secret-status', 'eu1', 'http://127.0.0.1:9');
SELECT cohortsync.connect_clevertap('held', 'ACC', 'cs-secret-status', 'eu1', 'http://127.0.0.1:9');

-- a destination restored without its passcode; one paused by hand
DELETE FROM cohortsync.destination_secrets WHERE name = 'nopass';
SELECT cohortsync.pause_destination('held', 'maintenance');
-- records of ct waiting for a retry
SELECT cohortsync.ingest('{"action": "add_members",
  "parameters": {"mixpanel_project_id": "1001", "mixpanel_cohort_id": "st",
                 "mixpanel_session_id": "s1", "members": [{"mixpanel_distinct_id": "a"}]}}') ->> 'status';
UPDATE cohortsync.outbox SET attempts = 3, next_attempt_at = '2100-01-01 00:00:00+00'
 WHERE destination = 'ct';

SELECT cohortsync._delivery_blocker(NULL)
       ~ '^(cohortsync is not in shared_preload_libraries: no delivery worker runs|no delivery worker serves this database: cohortsync.database is ".*")$'
       AS not_served;
CREATE FUNCTION pg_temp.shown(reason text) RETURNS text LANGUAGE sql AS $$
  SELECT replace(reason, cohortsync._delivery_blocker(NULL), '<not served>')
$$;
\pset format unaligned
\pset fieldsep ' | '
SELECT name, state, pg_temp.shown(reason) AS reason FROM cohortsync.destination_status ORDER BY name;
SELECT check_name, ok, pg_temp.shown(detail) AS detail FROM cohortsync.status() WHERE check_name <> 'versions';

-- the passcode set again: that reason goes
SET client_min_messages = warning;
SELECT cohortsync.set_clevertap_passcode('nopass', 'cs-secret-status-2');
RESET client_min_messages;
SELECT name, pg_temp.shown(reason) AS reason FROM cohortsync.destination_status WHERE name = 'nopass';
SELECT cohortsync.set_clevertap_passcode('unknown', 'cs-secret-status-3');

-- only the owner may call them
SET client_min_messages = warning;
CREATE ROLE regress_cs_status_reader;
RESET client_min_messages;
SELECT cohortsync.grant_read('regress_cs_status_reader');
SET ROLE regress_cs_status_reader;
SELECT name, reason IS NOT NULL AS has_reason FROM cohortsync.destination_status ORDER BY name;
SELECT * FROM cohortsync.status();
SELECT * FROM cohortsync.version();
RESET ROLE;
SELECT cohortsync.revoke_access('regress_cs_status_reader');
DROP ROLE regress_cs_status_reader;
DROP EXTENSION cohortsync CASCADE;
