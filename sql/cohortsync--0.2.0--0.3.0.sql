-- cohortsync 0.2.0 -> 0.3.0
--
-- CREATE EXTENSION cohortsync installs 0.1.0 and runs the deltas in order; every
-- change after 0.2.0 goes here.
\echo Use "ALTER EXTENSION cohortsync UPDATE TO '0.3.0'" to load this file. \quit

-------------------------------------------------------------------------------
-- Issue #11: full syncs are applied in the background.
--
-- The page that completes a full sync no longer replaces the cohort in its own
-- transaction (26 s at 1M members, far beyond Mixpanel's timeout). It marks the
-- session 'applying' and queues the swap in cohortsync.apply_queue; the
-- "cohortsync apply" background worker (or cohortsync.apply_pending()) then
-- runs the swap, in one transaction that also completes the session and
-- removes the queue entry. The queue is a table, so a swap accepted is applied
-- exactly once whatever happens in between (crash, immediate shutdown,
-- failover).
--
-- Order per cohort: while a cohort has anything queued, a diff page of that
-- cohort is recorded as before (sync_sessions, sync_pages) but queued behind
-- it instead of being applied, and a second full sync that completes queues
-- its swap behind the first. Entries are applied in id order, and ids are
-- taken under the cohort's row lock (which every page and the applier hold),
-- so membership and history end up as if every page had been applied when it
-- arrived.
-------------------------------------------------------------------------------
ALTER TABLE cohortsync.sync_sessions DROP CONSTRAINT sync_sessions_state_check;
ALTER TABLE cohortsync.sync_sessions ADD CONSTRAINT sync_sessions_state_check
    CHECK (state IN ('receiving', 'applying', 'completed', 'superseded'));
ALTER TABLE cohortsync.sync_sessions
    ADD COLUMN applying_since timestamptz,
    ADD COLUMN apply_duration interval;
COMMENT ON COLUMN cohortsync.sync_sessions.applying_since IS
    'Full syncs: when the last page arrived and the swap was queued (state applying).';
COMMENT ON COLUMN cohortsync.sync_sessions.apply_duration IS
    'Full syncs: how long the swap took once it started (completed_at is when it committed).';

-- What waits to be applied, per cohort in id order: the swap of a completed full
-- sync (action 'members', no member arrays) or a diff page that arrived while
-- something was queued for its cohort (the page as validated: de-duplicated,
-- sorted, one array per column, as cohortsync.ingest binds them).
CREATE TABLE cohortsync.apply_queue (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_id   text COLLATE "C" NOT NULL,
    cohort_id    text COLLATE "C" NOT NULL,
    session_id   text COLLATE "C" NOT NULL,
    action       text        NOT NULL CHECK (action IN ('members', 'add_members', 'remove_members')),
    distinct_ids text[],
    emails       text[],
    phones       text[],
    first_names  text[],
    last_names   text[],
    properties   jsonb[],
    queued_at    timestamptz NOT NULL DEFAULT now(),
    CHECK ((action = 'members') = (distinct_ids IS NULL)),
    FOREIGN KEY (project_id, cohort_id) REFERENCES cohortsync.cohorts ON DELETE CASCADE
);
CREATE INDEX apply_queue_cohort_idx ON cohortsync.apply_queue (project_id, cohort_id, id);
COMMENT ON TABLE cohortsync.apply_queue IS
    'Full-sync swaps and diff pages accepted but not applied yet, applied per cohort in id order.';
SELECT pg_catalog.pg_extension_config_dump('cohortsync.apply_queue', '');
SELECT pg_catalog.pg_extension_config_dump('cohortsync.apply_queue_id_seq', '');

-- Apply everything queued now, in the caller's transaction; waits for a cohort
-- the worker is applying. Returns the number of entries applied (swaps and
-- diff pages).
CREATE FUNCTION cohortsync.apply_pending()
RETURNS bigint
AS 'MODULE_PATHNAME', 'cohortsync_apply_pending'
LANGUAGE C VOLATILE
SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION cohortsync.apply_pending() IS
    'Apply the queued full-sync swaps and deferred diff pages now; returns how many were applied.';
REVOKE ALL ON FUNCTION cohortsync.apply_pending() FROM PUBLIC;
