-- Upgrading from the released 0.1.0 keeps every row, and ends at the version a
-- fresh install has.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS cohortsync CASCADE;
CREATE EXTENSION cohortsync VERSION '0.1.0';
SELECT extversion FROM pg_extension WHERE extname = 'cohortsync';

-- a destination, so that the outbox has records, some of them leased by 0.1.0's
-- claim (in flight when the server was upgraded)
SELECT cohortsync.connect_clevertap('ct', 'ACC', 'cs-secret-upgrade', 'eu1', 'http://127.0.0.1:9');

SELECT cohortsync.ingest('{"action": "members",
  "parameters": {"mixpanel_project_id": "1001", "mixpanel_cohort_id": "u1",
                 "mixpanel_cohort_name": "Upgraded", "mixpanel_session_id": "s1",
                 "page_info": {"page_count": 1, "total_pages": 1},
                 "members": [{"mixpanel_distinct_id": "a", "email": "a@example.com"},
                             {"mixpanel_distinct_id": "b"}]}}');

SELECT count(*) AS leased_by_010 FROM cohortsync._claim('ct', 2, '1 hour');

-- a full sync in flight across the upgrade: page 1 of 2 is staged by 0.1.0
SELECT cohortsync.ingest('{"action": "members",
  "parameters": {"mixpanel_project_id": "1001", "mixpanel_cohort_id": "u2",
                 "mixpanel_session_id": "s2", "page_info": {"page_count": 1, "total_pages": 2},
                 "members": [{"mixpanel_distinct_id": "c"},
                             {"mixpanel_distinct_id": "d", "email": "old-d@example.com"}]}}');

ALTER EXTENSION cohortsync UPDATE;
SELECT extversion FROM pg_extension WHERE extname = 'cohortsync';

-- page 1 arrives again (with a new email for d), then page 2 completes the session:
-- the rows staged before the upgrade and after it count once per member, the later wins
SELECT cohortsync.ingest('{"action": "members",
  "parameters": {"mixpanel_project_id": "1001", "mixpanel_cohort_id": "u2",
                 "mixpanel_session_id": "s2", "page_info": {"page_count": 1, "total_pages": 2},
                 "members": [{"mixpanel_distinct_id": "c"},
                             {"mixpanel_distinct_id": "d", "email": "new-d@example.com"}]}}');
SELECT cohortsync.ingest('{"action": "members",
  "parameters": {"mixpanel_project_id": "1001", "mixpanel_cohort_id": "u2",
                 "mixpanel_session_id": "s2", "page_info": {"page_count": 2, "total_pages": 2},
                 "members": [{"mixpanel_distinct_id": "e"}]}}');
-- 0.3.0 queues the swap (this database has no apply worker); apply_pending() runs it
SELECT state, applying_since IS NOT NULL AS queued FROM cohortsync.sync_sessions WHERE session_id = 's2';
SELECT cohortsync.apply_pending();
SELECT state, apply_duration IS NOT NULL AS timed FROM cohortsync.sync_sessions WHERE session_id = 's2';
SELECT count(*) AS staged_left FROM cohortsync.staged_members;
SELECT cohort_id, distinct_id, email, properties FROM cohortsync.members ORDER BY cohort_id, distinct_id;
SELECT distinct_id, change FROM cohortsync.membership_changes ORDER BY id;
-- every queued record is still there, and 0.2.0's claim (leases in the worker's
-- memory) sends the leased ones too: a walk from the start claims every one
SELECT count(*) AS queued, count(*) FILTER (WHERE lease_until IS NOT NULL) AS leased FROM cohortsync.outbox;
SELECT count(*) FILTER (WHERE claimable) AS claimable, count(*) AS walked
  FROM cohortsync._claim_due('ct', 1000, 0);
SELECT pending + in_flight AS queued FROM cohortsync.destination_status;

-- no foreign keys between the extension's tables any more (pg_restore --jobs loads
-- them in any order); triggers do their cascades
SELECT count(*) AS foreign_keys FROM pg_constraint
 WHERE contype = 'f' AND connamespace = 'cohortsync'::regnamespace;

-- the chain of scripts reaches every released version
SELECT target FROM pg_extension_update_paths('cohortsync')
 WHERE source = '0.1.0' AND path IS NOT NULL ORDER BY target;
DROP EXTENSION cohortsync CASCADE;
