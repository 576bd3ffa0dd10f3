-- cohortsync 0.2.0 -> 0.3.0: only what changed (sql/cohortsync.sql is the whole current schema).
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
    CHECK ((action = 'members') = (distinct_ids IS NULL))
    -- no foreign key to cohorts: see "pg_restore --jobs" below; a cohort's
    -- deletion deletes its queue through cohorts_delete_members
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


-------------------------------------------------------------------------------
-- Dump and restore (issue #12, part 1).
--
-- pg_restore COPYs membership_changes back into a database where CREATE
-- EXTENSION has just made the outbox triggers, and the statement-level
-- trigger queued the whole history again: the COPY of the dumped outbox then
-- failed on its primary key (pg_restore exit 1), and with an empty dumped
-- queue every old change was sent again, even to destinations connected after
-- it. The triggers now queue only what cohortsync itself records: ingest sets
-- cohortsync.queue_changes for its own statements (src/change_origin.c). A
-- restore's COPY, or any other write to the tables, queues nothing; users' own
-- triggers on the tables fire as before.
-------------------------------------------------------------------------------
-- Whether the outbox triggers queue anything for the current statement: only what
-- cohortsync itself records (cohortsync.queue_changes, set by ingest for its own
-- statements), not a restore's COPY or a hand-made write; and only when a
-- destination is connected (building records for nobody would be ~4 s of a
-- 1M-member swap). A library older than 0.3.0, still loaded before the server's
-- restart, defines its other settings but not this one and never sets it: its
-- ingest is queued rather than lost.
CREATE FUNCTION cohortsync._queue_wanted()
RETURNS boolean LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT (coalesce(current_setting('cohortsync.queue_changes', true) = 'on', false)
            OR (current_setting('cohortsync.queue_changes', true) IS NULL
                AND current_setting('cohortsync.batch_size', true) IS NOT NULL))
       AND EXISTS (SELECT FROM cohortsync.destinations)
$$;
REVOKE ALL ON FUNCTION cohortsync._queue_wanted() FROM PUBLIC;

CREATE OR REPLACE FUNCTION cohortsync._queue_changes()
RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    IF NOT cohortsync._queue_wanted() THEN
        RETURN NULL;
    END IF;
    -- Within one statement every (cohort, member) changes once, so the records
    -- of one identity made here commute; no ORDER BY (it would sort millions).
    --
    -- The subquery x computes both records of a (change, destination) once;
    -- OFFSET 0 keeps the planner from pulling it up into the VALUES list, which
    -- would evaluate its expressions once per reference.
    INSERT INTO cohortsync.outbox (destination, identity, record, change_id, phone_dropped)
    SELECT x.destination, cohortsync._identity_key(x.identity), r.record, x.change_id, r.phone_dropped
      FROM (SELECT d.name AS destination, m.identity, c.id AS change_id,
                   jsonb_build_object(
                       'identity', m.identity, 'type', 'event', 'ts', m.ts, 'evtName', d.event_name,
                       'evtData', jsonb_build_object(
                           'Partner Segment Name', m.cohort_name,
                           'Action', CASE WHEN m.added THEN 'Added' ELSE 'Removed' END,
                           'Partner Segment ID', c.cohort_id,
                           'CT Source', 'Mixpanel',
                           'Partner Name', 'Mixpanel')) AS event,
                   m.ts,
                   CASE WHEN d.cohorts_property IS NULL THEN '{}'::jsonb
                        ELSE jsonb_build_object(d.cohorts_property,
                                 jsonb_build_object(CASE WHEN m.added THEN '$add' ELSE '$remove' END,
                                                    jsonb_build_array(m.cohort_name)))
                   END
                   || CASE WHEN m.added THEN cohortsync._profile_fields(
                             c.properties ->> 'email', CASE WHEN m.phone_ok THEN m.phone END,
                             c.properties ->> 'first_name', c.properties ->> 'last_name')
                           ELSE '{}'::jsonb
                      END AS profile_data,
                   m.added AND m.phone IS NOT NULL AND NOT m.phone_ok AS phone_dropped
              FROM new_changes c
              LEFT JOIN cohortsync.cohorts co
                     ON co.project_id = c.project_id AND co.cohort_id = c.cohort_id
             CROSS JOIN cohortsync.destinations d
             CROSS JOIN LATERAL (
                SELECT y.*, cohortsync._is_e164(y.phone) AS phone_ok
                  FROM (SELECT cohortsync._clevertap_identity(c.properties, d.identity_property,
                                                              c.distinct_id) AS identity,
                               floor(extract(epoch FROM c.changed_at))::bigint AS ts,
                               coalesce(co.name, c.cohort_id) AS cohort_name,
                               c.change = 'added' AS added,
                               cohortsync._normalize_phone(c.properties ->> 'phone_number') AS phone
                        OFFSET 0) y
                OFFSET 0) m
            OFFSET 0) x
     CROSS JOIN LATERAL (VALUES
        (x.event, x.phone_dropped),
        (CASE WHEN x.profile_data <> '{}'::jsonb THEN jsonb_build_object(
            'identity', x.identity, 'type', 'profile', 'ts', x.ts,
            'profileData', x.profile_data) END,
         false)) r(record, phone_dropped)
     WHERE r.record IS NOT NULL;

    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM cohortsync._wake_delivery();
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION cohortsync._queue_profile_updates()
RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    IF NOT cohortsync._queue_wanted() THEN
        RETURN NULL;
    END IF;
    INSERT INTO cohortsync.outbox (destination, identity, record, change_id, phone_dropped)
    SELECT d.name, cohortsync._identity_key(m.identity),
           jsonb_build_object('identity', m.identity, 'type', 'profile',
                              'ts', floor(extract(epoch FROM now()))::bigint,
                              'profileData', pd.profile_data),
           NULL, m.phone IS NOT NULL AND NOT p.phone_ok
      FROM new_members nm
      JOIN old_members om
        ON om.project_id = nm.project_id AND om.cohort_id = nm.cohort_id
       AND om.distinct_id = nm.distinct_id
     CROSS JOIN cohortsync.destinations d
     CROSS JOIN LATERAL (
        SELECT cohortsync._clevertap_identity(nm.properties, d.identity_property,
                                              nm.distinct_id) AS identity,
               cohortsync._normalize_phone(nm.phone) AS phone) m
     CROSS JOIN LATERAL (SELECT cohortsync._is_e164(m.phone) AS phone_ok) p
     CROSS JOIN LATERAL (
        SELECT cohortsync._profile_fields(nm.email, CASE WHEN p.phone_ok THEN m.phone END,
                                          nm.first_name, nm.last_name) AS profile_data) pd
     WHERE (nm.email, nm.phone, nm.first_name, nm.last_name)
           IS DISTINCT FROM (om.email, om.phone, om.first_name, om.last_name)
       AND pd.profile_data <> '{}'::jsonb;

    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM cohortsync._wake_delivery();
    END IF;
    RETURN NULL;
END
$$;

-- pg_restore --jobs loads the tables' data in parallel, in any order, into
-- tables CREATE EXTENSION made with their constraints: the foreign keys of
-- sync_sessions (to cohorts), sync_pages (to sync_sessions) and
-- destination_secrets (to destinations) failed whenever a child table's COPY
-- ran before its parent's (pg_restore exit 1, the child table left empty). The
-- keys go; what they did on delete (and on a destination's rename) is done by
-- statement-level triggers, as members and staged_members always were (see
-- cohorts_delete_members). Ingest and connect_clevertap write parents first.
ALTER TABLE cohortsync.sync_sessions DROP CONSTRAINT sync_sessions_project_id_cohort_id_fkey;
ALTER TABLE cohortsync.sync_pages DROP CONSTRAINT sync_pages_project_id_cohort_id_session_id_action_fkey;
ALTER TABLE cohortsync.destination_secrets DROP CONSTRAINT destination_secrets_name_fkey;

CREATE OR REPLACE FUNCTION cohortsync._delete_cohort_members()
RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM cohortsync.members m USING old_cohorts o
     WHERE m.project_id = o.project_id AND m.cohort_id = o.cohort_id;
    DELETE FROM cohortsync.staged_members s USING old_cohorts o
     WHERE s.project_id = o.project_id AND s.cohort_id = o.cohort_id;
    DELETE FROM cohortsync.apply_queue q USING old_cohorts o
     WHERE q.project_id = o.project_id AND q.cohort_id = o.cohort_id;
    -- its sessions (and, by their trigger, their pages)
    DELETE FROM cohortsync.sync_sessions s USING old_cohorts o
     WHERE s.project_id = o.project_id AND s.cohort_id = o.cohort_id;
    RETURN NULL;
END
$$;

CREATE FUNCTION cohortsync._delete_session_pages()
RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM cohortsync.sync_pages p USING old_sessions o
     WHERE p.project_id = o.project_id AND p.cohort_id = o.cohort_id
       AND p.session_id = o.session_id AND p.action = o.action;
    RETURN NULL;
END
$$;
CREATE TRIGGER sync_sessions_delete_pages
    AFTER DELETE ON cohortsync.sync_sessions
    REFERENCING OLD TABLE AS old_sessions
    FOR EACH STATEMENT EXECUTE FUNCTION cohortsync._delete_session_pages();
REVOKE ALL ON FUNCTION cohortsync._delete_session_pages() FROM PUBLIC;

CREATE FUNCTION cohortsync._destination_secrets_follow()
RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        DELETE FROM cohortsync.destination_secrets s WHERE s.name = OLD.name;
    ELSIF NEW.name IS DISTINCT FROM OLD.name THEN
        UPDATE cohortsync.destination_secrets s SET name = NEW.name WHERE s.name = OLD.name;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER destinations_secrets_follow
    AFTER DELETE OR UPDATE OF name ON cohortsync.destinations
    FOR EACH ROW EXECUTE FUNCTION cohortsync._destination_secrets_follow();
REVOKE ALL ON FUNCTION cohortsync._destination_secrets_follow() FROM PUBLIC;

-- A restore that leaves the passcodes out (--exclude-table-data of
-- destination_secrets) has destinations without a row here; setting the
-- passcode then said 'destination "..." does not exist' because it only
-- updated an existing row. It now stores the passcode of any destination.
CREATE OR REPLACE FUNCTION cohortsync.set_clevertap_passcode(name text, passcode text)
RETURNS void LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET log_min_error_statement = panic
SET log_min_messages = warning
AS $$
BEGIN
    IF passcode IS NULL OR passcode = '' THEN
        RAISE EXCEPTION 'a CleverTap destination needs a passcode'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT EXISTS (SELECT FROM cohortsync.destinations d WHERE d.name = set_clevertap_passcode.name) THEN
        RAISE EXCEPTION 'destination "%" does not exist', name USING ERRCODE = 'undefined_object';
    END IF;
    INSERT INTO cohortsync.destination_secrets AS s (name, passcode)
    VALUES (set_clevertap_passcode.name, set_clevertap_passcode.passcode)
        ON CONFLICT ON CONSTRAINT destination_secrets_pkey
        DO UPDATE SET passcode = EXCLUDED.passcode;
    PERFORM cohortsync._wake_delivery();
END
$$;

-------------------------------------------------------------------------------
-- Versions (issue #12): the loaded library's and the SQL objects'.
-------------------------------------------------------------------------------
CREATE FUNCTION cohortsync._library_version()
RETURNS text
AS 'MODULE_PATHNAME', 'cohortsync_library_version'
LANGUAGE C STRICT STABLE;

CREATE FUNCTION cohortsync.version(OUT library_version text, OUT sql_version text)
RETURNS record LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT cohortsync._library_version(),
           (SELECT e.extversion FROM pg_extension e WHERE e.extname = 'cohortsync')
$$;
COMMENT ON FUNCTION cohortsync.version() IS
    'The version of the loaded library and of the extension''s SQL objects (pg_extension.extversion).';

-------------------------------------------------------------------------------
-- A status that tells the truth (issue #12, part 4).
--
-- destination_status said 'active' with no error while nothing could move: no
-- worker serving the database (library not preloaded, cohortsync.database
-- naming another one), no passcode stored, SQL objects older than the library.
-- reason (a new last column) says why a destination's records are not moving,
-- NULL when nothing stands in their way.
-------------------------------------------------------------------------------

-- Why no delivery worker sends this database's records (NULL: one does, and
-- the SQL objects, sql_version, are the library's). Executable by PUBLIC like
-- _worker_in_flight(): destination_status calls it with the reader's rights.
-- It tells no more than whether and where the worker runs.
CREATE FUNCTION cohortsync._delivery_blocker(sql_version text)
RETURNS text
AS 'MODULE_PATHNAME', 'cohortsync_delivery_blocker'
LANGUAGE C VOLATILE;

-- Same columns, same order as 0.2.0, and reason.
CREATE OR REPLACE VIEW cohortsync.destination_status AS
SELECT d.name,
       d.state,
       d.paused_reason                         AS state_reason,
       d.paused_at,
       greatest(coalesce(o.pending, 0) - coalesce(w.records, 0), 0) AS pending,
       coalesce(o.in_flight, 0) + least(coalesce(w.records, 0), coalesce(o.pending, 0)) AS in_flight,
       coalesce(s.delivered, 0)                AS delivered,
       (SELECT count(*) FROM cohortsync.failed_records f
         WHERE f.destination = d.name)         AS failed,
       now() - o.oldest                        AS oldest_pending_age,
       s.last_success_at,
       s.last_error,
       s.last_error_at,
       coalesce(s.phones_dropped, 0)           AS phones_dropped,
       coalesce(s.requests, 0)                 AS requests,
       -- every obstacle, the one of the whole database first
       nullif(concat_ws('; ',
         b.blocker,
         CASE WHEN NOT EXISTS (SELECT FROM cohortsync.destination_secrets x WHERE x.name = d.name)
              THEN 'no passcode is stored: call cohortsync.set_clevertap_passcode()' END,
         CASE WHEN d.state = 'paused'
              THEN 'paused: ' || coalesce(d.paused_reason, 'paused by user')
                   || ' (call cohortsync.resume_destination())' END,
         CASE WHEN o.retry_waiting > 0
              THEN format('backing off: %s records wait for a retry, the next at %s; last error: %s',
                          o.retry_waiting, o.next_retry, coalesce(s.last_error, 'none')) END),
         '')                                   AS reason
  FROM cohortsync.destinations d
  LEFT JOIN cohortsync.destination_stats s ON s.destination = d.name
  LEFT JOIN cohortsync._worker_in_flight() w ON w.destination = d.name
  CROSS JOIN (SELECT cohortsync._delivery_blocker(
                  (SELECT e.extversion FROM pg_extension e WHERE e.extname = 'cohortsync')) AS blocker) b
  LEFT JOIN LATERAL (
        SELECT count(*) FILTER (WHERE x.lease_until IS NULL OR x.lease_until < now()) AS pending,
               count(*) FILTER (WHERE x.lease_until >= now())                         AS in_flight,
               min(x.created_at)                                                      AS oldest,
               count(*) FILTER (WHERE x.attempts > 0 AND x.next_attempt_at > now())   AS retry_waiting,
               min(x.next_attempt_at) FILTER (WHERE x.attempts > 0
                                              AND x.next_attempt_at > now())          AS next_retry
          FROM cohortsync.outbox x WHERE x.destination = d.name) o ON true;
COMMENT ON VIEW cohortsync.destination_status IS
    'One row per destination: state and why, pending, in flight, delivered, failed, oldest pending age, last success and error, and the reason nothing moves (NULL: nothing in the way).';

-------------------------------------------------------------------------------
-- Bounded history (issue #12, part 5).
--
-- membership_changes and sync_pages grow for ever. prune_history() deletes
-- what is older than a horizon, and the delivery worker does it on its own
-- with cohortsync.history_retention. Current membership is never touched, nor
-- the outbox and failed records (they are self-contained: a record carries
-- everything CleverTap gets; change_id only groups a change's two records).
-- For every member, the last change before the horizon is kept when it is an
-- 'added': so members_at() answers exactly for any instant from the horizon on.
-------------------------------------------------------------------------------

-- The horizon of the last pruning: members_at() refuses instants before it.
CREATE TABLE cohortsync.history_pruned (
    singleton      boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    pruned_before  timestamptz NOT NULL,
    pruned_at      timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE cohortsync.history_pruned IS
    'The horizon history was last pruned to: membership_changes before it are incomplete.';
REVOKE ALL ON cohortsync.history_pruned FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('cohortsync.history_pruned', '');

-- Prune the history of one cohort: of every member's changes before the
-- horizon, keep only the last, and only if it is an 'added'.
CREATE FUNCTION cohortsync._prune_cohort_history(p_project text, p_cohort text, p_horizon timestamptz)
RETURNS bigint LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH ranked AS (
        SELECT c.id, c.change,
               row_number() OVER (PARTITION BY c.distinct_id ORDER BY c.id DESC) AS rn
          FROM cohortsync.membership_changes c
         WHERE c.project_id = p_project AND c.cohort_id = p_cohort AND c.changed_at < p_horizon),
    gone AS (
        DELETE FROM cohortsync.membership_changes m
         USING ranked r
         WHERE m.id = r.id AND (r.rn > 1 OR r.change = 'removed')
        RETURNING 1)
    SELECT count(*) FROM gone
$$;

-- One step of pruning, in the caller's transaction: the changes of the next
-- cohort after (p_project, p_cohort); the first step (NULLs) records the
-- horizon, the last (no cohort left: no row) prunes finished sessions and
-- their pages. The delivery worker runs one step per short transaction.
CREATE FUNCTION cohortsync._prune_history_step(p_horizon timestamptz, p_project text, p_cohort text,
                                               OUT project_id text, OUT cohort_id text,
                                               OUT changes bigint, OUT sessions bigint, OUT pages bigint)
RETURNS record LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    IF p_project IS NULL THEN
        INSERT INTO cohortsync.history_pruned AS h (pruned_before) VALUES (p_horizon)
            ON CONFLICT (singleton) DO UPDATE
            SET pruned_before = greatest(h.pruned_before, EXCLUDED.pruned_before), pruned_at = now();
    END IF;
    SELECT c.project_id, c.cohort_id INTO _prune_history_step.project_id, _prune_history_step.cohort_id
      FROM cohortsync.cohorts c
     WHERE p_project IS NULL OR (c.project_id, c.cohort_id) > (p_project, p_cohort)
     ORDER BY c.project_id, c.cohort_id
     LIMIT 1;
    IF FOUND THEN
        changes := cohortsync._prune_cohort_history(_prune_history_step.project_id,
                                                     _prune_history_step.cohort_id, p_horizon);
        RETURN;
    END IF;
    -- finished sessions (never a cohort's last one: a page of it sent again
    -- must still be known) and their pages
    WITH doomed AS (
        SELECT s.project_id, s.cohort_id, s.session_id, s.action
          FROM cohortsync.sync_sessions s
         WHERE s.state IN ('completed', 'superseded')
           AND coalesce(s.completed_at, s.superseded_at, s.last_page_at) < p_horizon
           AND s.last_page_at < p_horizon
           -- nor a session with a page still waiting to be applied
           AND NOT EXISTS (SELECT FROM cohortsync.apply_queue q
                            WHERE q.project_id = s.project_id AND q.cohort_id = s.cohort_id
                              AND q.session_id = s.session_id AND q.action = s.action)
           AND NOT EXISTS (SELECT FROM cohortsync.cohorts c
                            WHERE c.project_id = s.project_id AND c.cohort_id = s.cohort_id
                              AND c.last_session_id = s.session_id)),
    gone_pages AS (
        DELETE FROM cohortsync.sync_pages p USING doomed d
         WHERE p.project_id = d.project_id AND p.cohort_id = d.cohort_id
           AND p.session_id = d.session_id AND p.action = d.action
        RETURNING 1),
    gone_sessions AS (
        DELETE FROM cohortsync.sync_sessions s USING doomed d
         WHERE s.project_id = d.project_id AND s.cohort_id = d.cohort_id
           AND s.session_id = d.session_id AND s.action = d.action
        RETURNING 1)
    SELECT (SELECT count(*) FROM gone_sessions), (SELECT count(*) FROM gone_pages)
      INTO sessions, pages;
    project_id := NULL;
    cohort_id := NULL;
END
$$;

CREATE FUNCTION cohortsync.prune_history(older_than interval,
                                         OUT changes bigint, OUT sessions bigint, OUT pages bigint)
RETURNS record LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_horizon timestamptz;
    v_step    record;
    v_project text;
    v_cohort  text;
BEGIN
    IF older_than IS NULL OR older_than < interval '0' THEN
        RAISE EXCEPTION 'older_than must be an interval of zero or more'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_horizon := now() - older_than;
    changes := 0;
    LOOP
        v_step := cohortsync._prune_history_step(v_horizon, v_project, v_cohort);
        changes := changes + coalesce(v_step.changes, 0);
        IF v_step.project_id IS NULL THEN
            sessions := v_step.sessions;
            pages := v_step.pages;
            EXIT;
        END IF;
        v_project := v_step.project_id;
        v_cohort := v_step.cohort_id;
    END LOOP;
END
$$;
COMMENT ON FUNCTION cohortsync.prune_history(interval) IS
    'Delete history older than the interval (never current membership or queued records); returns what it deleted.';

-- Who was in the cohort at an instant, from the history: every member whose
-- last change at or before it is an 'added', with the member as sent then.
CREATE FUNCTION cohortsync.members_at(project_id text, cohort_id text, at timestamptz)
RETURNS TABLE (distinct_id text, properties jsonb, joined_at timestamptz)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_horizon timestamptz;
BEGIN
    SELECT h.pruned_before INTO v_horizon FROM cohortsync.history_pruned h;
    IF at < v_horizon THEN
        RAISE EXCEPTION 'the history before % has been pruned', v_horizon
            USING ERRCODE = 'data_exception',
                  DETAIL = format('members_at() answers for instants from %s on.', v_horizon),
                  HINT = 'cohortsync.history_retention and cohortsync.prune_history() set how far back the history goes.';
    END IF;
    RETURN QUERY
    SELECT l.distinct_id::text, l.properties, l.changed_at
      FROM (SELECT DISTINCT ON (c.distinct_id) c.distinct_id, c.change, c.properties, c.changed_at
              FROM cohortsync.membership_changes c
             WHERE c.project_id = members_at.project_id AND c.cohort_id = members_at.cohort_id
               AND c.changed_at <= members_at.at
             ORDER BY c.distinct_id, c.id DESC) l
     WHERE l.change = 'added'
     ORDER BY l.distinct_id;
END
$$;
COMMENT ON FUNCTION cohortsync.members_at(text, text, timestamptz) IS
    'The members of a cohort at an instant, replayed from membership_changes (an error before the pruning horizon).';

REVOKE ALL ON FUNCTION cohortsync._prune_cohort_history(text, text, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync._prune_history_step(timestamptz, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync.prune_history(interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync.members_at(text, text, timestamptz) FROM PUBLIC;

-------------------------------------------------------------------------------
-- cohortsync.status(): everything that decides whether records move, one row
-- per check. Owner-only, like every function.
-------------------------------------------------------------------------------
CREATE FUNCTION cohortsync.status()
RETURNS TABLE (check_name text, ok boolean, detail text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_sql     text := (SELECT e.extversion FROM pg_extension e WHERE e.extname = 'cohortsync');
    v_lib     text := cohortsync._library_version();
    v_blocker text := cohortsync._delivery_blocker(v_sql);
    v_ret     text := current_setting('cohortsync.history_retention', true);
    v_horizon timestamptz := (SELECT h.pruned_before FROM cohortsync.history_pruned h);
    r         record;
BEGIN
    check_name := 'versions';
    ok := v_lib = v_sql OR v_lib = 'unknown';
    detail := format('library %s, SQL objects %s', v_lib, v_sql)
              || CASE WHEN ok THEN '' ELSE ': run ALTER EXTENSION cohortsync UPDATE' END;
    RETURN NEXT;
    check_name := 'delivery worker';
    ok := v_blocker IS NULL;
    detail := coalesce(v_blocker, format('serving database %s', current_database()));
    RETURN NEXT;
    FOR r IN SELECT s.name, s.reason FROM cohortsync.destination_status s ORDER BY s.name LOOP
        check_name := 'destination ' || r.name;
        ok := r.reason IS NULL;
        detail := coalesce(r.reason, 'active');
        RETURN NEXT;
    END LOOP;
    check_name := 'history retention';
    ok := true;
    detail := CASE WHEN v_ret IS NULL OR v_ret IN ('0', '0min') THEN 'kept for ever (cohortsync.history_retention is off)'
                   ELSE format('pruned by the delivery worker after %s', v_ret) END
              || CASE WHEN v_horizon IS NULL THEN '' ELSE format('; complete from %s on', v_horizon) END;
    RETURN NEXT;
END
$$;
COMMENT ON FUNCTION cohortsync.status() IS
    'One row per check (versions, delivery worker, each destination, history retention): ok, and what is wrong.';

REVOKE ALL ON FUNCTION cohortsync._library_version() FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync.version() FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync.status() FROM PUBLIC;

-- The functions that take a secret as an argument log nothing below WARNING while
-- they run: with log_min_messages at DEBUG1, a catalog-cache message raised inside
-- them was logged with a CONTEXT quoting the caller's statement, secret included
-- (log_min_error_statement = panic does not cover CONTEXT lines).
ALTER FUNCTION cohortsync.connect_clevertap(text, text, text, text, text)
    SET log_min_messages = warning;
ALTER FUNCTION cohortsync.add_webhook_user(text, text)
    SET log_min_messages = warning;

-- The worker's statements on the outbox are planned as if its pages were full
-- (src/outbox_plan.c): a queue analyzed while nearly empty made every index look one
-- page big, and a DELETE by id or the claim's identity probe walked all of
-- outbox_claim_idx (test/pgtap/delivery_plan.sql).
ALTER FUNCTION cohortsync._claim_due(text, integer, bigint)
    SET cohortsync.plan_outbox_full = on;
ALTER FUNCTION cohortsync._claim(text, integer, interval)
    SET cohortsync.plan_outbox_full = on;
ALTER FUNCTION cohortsync._next_due()
    SET cohortsync.plan_outbox_full = on;

-- _record_outcome reaches outbox rows by primary key only (see the comment on its SET
-- clauses), and is planned like the others.
CREATE OR REPLACE FUNCTION cohortsync._record_outcome(p_destination text, p_ids bigint[], p_http integer,
                                           p_body text, p_error text, p_retry_age interval,
                                           p_lease interval, p_rest bigint[] DEFAULT '{}')
RETURNS text LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
-- Every statement below reaches outbox rows by id = ANY (...) and nothing else: ids
-- are unique, and a "destination = p_destination" beside it let the planner walk the
-- destination's part of outbox_claim_idx instead (the whole queue, for every request).
-- With stale statistics (an outbox analyzed while empty) a sequential scan of the whole
-- queue looked cheapest: 200 ms per request on a 20,000-record queue; and every index
-- looked one page big, so a walk of all of outbox_claim_idx (id is its second column)
-- looked as cheap as the primary key. enable_seqscan = off rules out the first,
-- cohortsync.plan_outbox_full the second (src/outbox_plan.c): the primary key wins.
SET enable_seqscan = off
SET cohortsync.plan_outbox_full = on
AS $$
DECLARE
    v_body      jsonb;
    v_status    text;
    v_error     text;
    v_retry     bigint[] := '{}';
    v_failed    bigint[] := '{}';
    v_codes     integer[] := '{}';
    v_messages  text[] := '{}';
    v_delivered bigint := 0;
    v_nfailed   bigint := 0;
    v_phones    bigint := 0;
    v_n         bigint;
    v_result    text := 'done';
BEGIN
    -- Whatever answered may echo the request's headers back (a misconfigured
    -- proxy): the passcode must not reach last_error, paused_reason or failed_records.
    SELECT replace(p_body, s.passcode, '[passcode]'), replace(p_error, s.passcode, '[passcode]')
      INTO p_body, p_error
      FROM cohortsync.destination_secrets s
     WHERE s.name = p_destination AND s.passcode <> '';

    BEGIN
        v_body := p_body::jsonb;
    EXCEPTION WHEN others THEN
        v_body := NULL;
    END;
    IF jsonb_typeof(v_body) = 'object' THEN
        v_status := v_body ->> 'status';
    END IF;

    IF p_http = 200 AND v_status IN ('success', 'partial', 'fail') THEN
        -- "Skipped record number : N" is the 1-based index of the record in "d"
        SELECT coalesce(array_agg(p_ids[x.n] ORDER BY x.n) FILTER (WHERE x.code IS DISTINCT FROM 555), '{}'),
               coalesce(array_agg(x.code ORDER BY x.n) FILTER (WHERE x.code IS DISTINCT FROM 555), '{}'),
               coalesce(array_agg(x.msg ORDER BY x.n) FILTER (WHERE x.code IS DISTINCT FROM 555), '{}'),
               coalesce(array_agg(p_ids[x.n] ORDER BY x.n) FILTER (WHERE x.code = 555), '{}')
          INTO v_failed, v_codes, v_messages, v_retry
          FROM (SELECT DISTINCT ON (n) n, code, msg FROM (
                  SELECT substring(e ->> 'error' FROM 'Skipped record number\s*:\s*([0-9]+)')::integer AS n,
                         CASE WHEN e ->> 'code' ~ '^[0-9]{1,9}$' THEN (e ->> 'code')::integer END AS code,
                         coalesce(nullif(regexp_replace(e ->> 'error',
                                                        '\s*Skipped record number\s*:\s*[0-9]+\s*$', ''), ''),
                                  'rejected') AS msg
                    FROM jsonb_array_elements(CASE WHEN jsonb_typeof(v_body -> 'unprocessed') = 'array'
                                                   THEN v_body -> 'unprocessed' ELSE '[]' END) e) y
                 WHERE n BETWEEN 1 AND cardinality(p_ids)) x;

        IF v_status = 'fail' AND cardinality(v_failed) + cardinality(v_retry) = 0 THEN
            -- a "fail" that names no record: nothing to go by, try again later
            v_retry := p_ids;
            v_error := 'CleverTap answered status "fail" without naming a record';
            v_result := 'retry';
        ELSE
            IF cardinality(v_retry) > 0 THEN
                v_error := 'CleverTap answered 555 (server error) for some records';
            END IF;
            -- the refused records, with CleverTap's code and message
            WITH gone AS (
                DELETE FROM cohortsync.outbox o WHERE o.id = ANY (v_failed)
                RETURNING o.*)
            INSERT INTO cohortsync.failed_records
                   (id, destination, identity, record, change_id, created_at, attempts, code, message)
            SELECT g.id, g.destination, g.identity, g.record, g.change_id, g.created_at,
                   g.attempts + 1, f.code, f.message
              FROM gone g JOIN unnest(v_failed, v_codes, v_messages) f(id, code, message)
                ON f.id = g.id;
            GET DIAGNOSTICS v_nfailed = ROW_COUNT;
            -- everything else was accepted
            WITH accepted AS (
                DELETE FROM cohortsync.outbox o
                 WHERE o.id = ANY (p_ids) AND NOT o.id = ANY (v_failed || v_retry)
                RETURNING o.phone_dropped)
            SELECT count(*), count(*) FILTER (WHERE a.phone_dropped)
              INTO v_delivered, v_phones
              FROM accepted a;
        END IF;

    ELSIF p_http = 400 AND cardinality(p_ids) > 1 THEN
        -- some record made the whole request malformed: find it by halving
        UPDATE cohortsync.outbox o SET lease_until = now() + p_lease
         WHERE o.id = ANY (p_ids || p_rest);
        RETURN 'split';

    ELSIF p_http = 400 THEN
        WITH gone AS (
            DELETE FROM cohortsync.outbox o WHERE o.id = ANY (p_ids) RETURNING o.*)
        INSERT INTO cohortsync.failed_records
               (id, destination, identity, record, change_id, created_at, attempts, code, message)
        SELECT g.id, g.destination, g.identity, g.record, g.change_id, g.created_at, g.attempts + 1,
               400, 'HTTP 400: ' || coalesce(v_body ->> 'error', left(p_body, 200), 'bad request')
          FROM gone g;
        GET DIAGNOSTICS v_nfailed = ROW_COUNT;

    ELSIF p_http IN (401, 403) THEN
        -- wrong account id, passcode or region: nothing will go through until a
        -- human acts, so pause and keep every record
        v_error := format('CleverTap answered HTTP %s: %s', p_http,
                          coalesce(v_body ->> 'error', 'authentication failed'))
                   || ' (check the account id, passcode and region, then resume the destination)';
        UPDATE cohortsync.destinations d
           SET state = 'paused', paused_reason = v_error, paused_at = now()
         WHERE d.name = p_destination AND d.state = 'active';
        UPDATE cohortsync.outbox o SET lease_until = NULL, leased_by = NULL, last_error = v_error
         WHERE o.id = ANY (p_ids || p_rest);
        v_result := 'retry';

    ELSE
        -- 429, 5xx, no answer, an unreadable 200: try again later
        v_retry := p_ids || p_rest;
        v_error := CASE
            WHEN p_http = 0 THEN coalesce(p_error, 'no answer')
            WHEN p_http = 200 THEN 'HTTP 200 with an unreadable body'
            ELSE format('HTTP %s: %s', p_http,
                        coalesce(v_body ->> 'error', nullif(left(p_body, 200), ''), 'no body'))
            END;
        v_result := 'retry';
    END IF;

    IF cardinality(v_retry) > 0 THEN
        -- too old to keep trying: give up on them, visibly
        WITH gone AS (
            DELETE FROM cohortsync.outbox o
             WHERE o.id = ANY (v_retry) AND o.created_at < now() - p_retry_age
            RETURNING o.*)
        INSERT INTO cohortsync.failed_records
               (id, destination, identity, record, change_id, created_at, attempts, code, message)
        SELECT g.id, g.destination, g.identity, g.record, g.change_id, g.created_at, g.attempts + 1,
               NULL, format('not delivered within cohortsync.max_retry_age (%s); last error: %s',
                            p_retry_age, v_error)
          FROM gone g;
        GET DIAGNOSTICS v_n = ROW_COUNT;
        v_nfailed := v_nfailed + v_n;
        -- exponential backoff from 1 s to 10 min, with jitter (half to all of it)
        UPDATE cohortsync.outbox o
           SET attempts = o.attempts + 1, lease_until = NULL, leased_by = NULL, last_error = v_error,
               next_attempt_at = now() + least(interval '10 minutes',
                                               interval '1 second' * power(2, least(o.attempts, 20)))
                                         * (0.5 + random() / 2)
         WHERE o.id = ANY (v_retry);
    END IF;

    IF v_result = 'done' AND cardinality(p_rest) > 0 THEN
        UPDATE cohortsync.outbox o SET lease_until = now() + p_lease WHERE o.id = ANY (p_rest);
    END IF;

    IF NOT EXISTS (SELECT FROM cohortsync.destinations d WHERE d.name = p_destination) THEN
        RETURN v_result;        -- disconnected while the request was in flight
    END IF;
    INSERT INTO cohortsync.destination_stats AS s
           (destination, requests, delivered, failed, phones_dropped, last_success_at,
            last_error, last_error_at)
    VALUES (p_destination, 1, v_delivered, v_nfailed, v_phones,
            CASE WHEN p_http = 200 AND v_status IS NOT NULL THEN now() END,
            v_error, CASE WHEN v_error IS NOT NULL THEN now() END)
    ON CONFLICT (destination) DO UPDATE
       SET requests = s.requests + 1,
           delivered = s.delivered + EXCLUDED.delivered,
           failed = s.failed + EXCLUDED.failed,
           phones_dropped = s.phones_dropped + EXCLUDED.phones_dropped,
           last_success_at = coalesce(EXCLUDED.last_success_at, s.last_success_at),
           last_error = coalesce(EXCLUDED.last_error, s.last_error),
           last_error_at = coalesce(EXCLUDED.last_error_at, s.last_error_at);
    RETURN v_result;
END
$$;

-- A drained queue made small again. Deleting delivered rows leaves the outbox's heap
-- and indexes as big as the largest backlog they ever held: VACUUM does not give an
-- index's empty pages back, nor the heap's while rows are being added at its end.
-- When the outbox is empty and bigger than p_min_bytes, TRUNCATE gives it new, empty
-- files. The delivery worker calls this when it has nothing in flight, at most every
-- ten seconds.
--
-- TRUNCATE needs an ACCESS EXCLUSIVE lock. It is taken with NOWAIT, so this never
-- waits, and so never queues a lock request that ingest would have to wait behind:
-- when anything holds the outbox (an ingest transaction that queued records and has
-- not committed, pg_dump, VACUUM, a reader), it gives up and the worker tries again
-- later. Under the lock no other transaction can have uncommitted rows in the outbox,
-- so emptiness is checked again there: nothing queued can be lost, and nothing is in
-- flight (a record leaves the queue only once it has been answered for). Ingest that
-- reaches the outbox while the lock is held waits for this transaction only: 12 ms
-- after a drain of 300,000 records, 90 ms when VACUUM had not yet been through it
-- (the commit unlinks the old files). The identity keeps counting (no RESTART
-- IDENTITY): ids order an identity's records, and the worker's cursor stays below
-- every new id.
--
-- Returns whether it truncated.
CREATE FUNCTION cohortsync._shrink_outbox(p_min_bytes bigint DEFAULT 8 * 1024 * 1024)
RETURNS boolean LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
AS $$
BEGIN
    -- cheap first: the size of the files, then one index entry
    IF pg_total_relation_size('cohortsync.outbox') <= p_min_bytes
       OR EXISTS (SELECT FROM cohortsync.outbox) THEN
        RETURN false;
    END IF;
    BEGIN
        LOCK TABLE cohortsync.outbox IN ACCESS EXCLUSIVE MODE NOWAIT;
    EXCEPTION WHEN lock_not_available THEN
        RETURN false;
    END;
    IF EXISTS (SELECT FROM cohortsync.outbox) THEN
        RETURN false;           -- committed between the first look and the lock
    END IF;
    TRUNCATE cohortsync.outbox;
    RETURN true;
END
$$;
REVOKE ALL ON FUNCTION cohortsync._shrink_outbox(bigint) FROM PUBLIC;

-------------------------------------------------------------------------------
-- Destinations as kinds (issue #13): clevertap, mparticle, braze.
--
-- A destination has a kind, kind-specific settings, and its own batch_size and
-- max_inflight within the kind's limits (_kind_limits, the one place they are
-- written). region is the CleverTap region, mParticle pod or Braze instance,
-- checked per kind; account_id (CleverTap's account id, mParticle's API key) is
-- NULL for Braze. The worker reads its destinations through _delivery_targets()
-- and every answer through _read_answer(kind, ...), the one place an HTTP status
-- and body are read; _record_outcome applies the verdict generically, honours
-- Retry-After, and says 'requeued' when records stay queued for a retry (the
-- worker no longer looks for "555" in the body). The outbox triggers build
-- records per kind: one set-based builder per kind, inlined into the trigger's
-- INSERT ... SELECT, one branch per kind, run only when a destination of the
-- kind is connected. CleverTap's records are the same.
-------------------------------------------------------------------------------

-- A kind's limits, the one place they are written: records per request and
-- requests in flight per destination. CleverTap documents both (1000 records,
-- 15 concurrent requests per account). mParticle takes up to 100 batches a
-- request and publishes no concurrency limit: 10. Braze takes 75 objects a
-- request (attributes, events and purchases together) and 3,000 requests per
-- 3 seconds per workspace: 15, as for CleverTap. A destination's batch_size
-- and max_inflight, when set, must stay within them.
CREATE FUNCTION cohortsync._kind_limits(kind text, OUT max_batch integer, OUT max_inflight integer)
RETURNS record LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT l.max_batch, l.max_inflight
      FROM (VALUES ('clevertap', 1000, 15),
                   ('mparticle', 100, 10),
                   ('braze', 75, 15)) AS l(kind, max_batch, max_inflight)
     WHERE l.kind = _kind_limits.kind
$$;

-- The API host of a kind's region (CleverTap region, mParticle pod, Braze
-- instance), as each vendor documents it; NULL for a region the kind does not have.
CREATE FUNCTION cohortsync._region_host(kind text, region text)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE kind
        WHEN 'clevertap' THEN
            CASE WHEN region = 'eu1' THEN 'api.clevertap.com'
                 WHEN region IN ('in1', 'sg1', 'us1', 'aps3', 'mec1') THEN region || '.api.clevertap.com'
            END
        WHEN 'mparticle' THEN
            CASE WHEN region = 'us1' THEN 's2s.mparticle.com'
                 WHEN region IN ('us2', 'eu1', 'au1') THEN 's2s.' || region || '.mparticle.com'
            END
        WHEN 'braze' THEN
            CASE WHEN region IN ('US-01', 'US-02', 'US-03', 'US-04', 'US-05', 'US-06', 'US-07', 'US-08')
                 THEN 'rest.iad-' || right(region, 2) || '.braze.com'
                 WHEN region = 'US-10' THEN 'rest.us-10.braze.com'
                 WHEN region IN ('EU-01', 'EU-02') THEN 'rest.fra-' || right(region, 2) || '.braze.eu'
                 WHEN region = 'AU-01' THEN 'rest.au-01.braze.com'
            END
    END
$$;

ALTER TABLE cohortsync.destinations
    ALTER COLUMN account_id DROP NOT NULL,
    DROP CONSTRAINT destinations_region_check,
    ADD COLUMN kind text NOT NULL DEFAULT 'clevertap'
        CHECK (kind IN ('clevertap', 'mparticle', 'braze')),
    ADD COLUMN settings jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(settings) = 'object'),
    ADD COLUMN batch_size integer,
    ADD COLUMN max_inflight integer,
    ADD CONSTRAINT destinations_region_check
        CHECK (cohortsync._region_host(kind, region) IS NOT NULL),
    ADD CONSTRAINT destinations_account_id_kind_check
        CHECK ((account_id IS NULL) = (kind = 'braze')),
    ADD CONSTRAINT destinations_batch_size_check
        CHECK (batch_size > 0 AND batch_size <= (cohortsync._kind_limits(kind)).max_batch),
    ADD CONSTRAINT destinations_max_inflight_check
        CHECK (max_inflight > 0 AND max_inflight <= (cohortsync._kind_limits(kind)).max_inflight);
COMMENT ON TABLE cohortsync.destinations IS
    'Connected destinations (CleverTap, mParticle, Braze) and what is sent to them; secrets are kept apart in destination_secrets.';
COMMENT ON COLUMN cohortsync.destinations.settings IS
    'Kind-specific settings: mParticle environment; Braze event_name (the optional custom event).';
COMMENT ON TABLE cohortsync.destination_secrets IS
    'Destination secrets (CleverTap passcode, mParticle API secret, Braze REST API key); readable by the extension owner only. pg_dump includes it (see docs/delivery.md).';

-- Destination management. SECURITY DEFINER so that the owner can grant them
-- without granting the tables; log_min_error_statement is raised inside the
-- functions that take a passcode so that a failing call does not write the
-- statement (and with it the passcode) to the server log.
-- Where a destination's requests go: https://<its region's host>, or api_url,
-- without a trailing slash. The worker appends the kind's path.
CREATE FUNCTION cohortsync._base_url(kind text, region text, api_url text)
RETURNS text LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(rtrim(api_url, '/'), 'https://' || cohortsync._region_host(kind, region))
$$;

CREATE OR REPLACE FUNCTION cohortsync._clevertap_base_url(region text, api_url text)
RETURNS text LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT cohortsync._base_url('clevertap', region, api_url)
$$;

CREATE OR REPLACE FUNCTION cohortsync._check_region(region text)
RETURNS void LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF cohortsync._region_host('clevertap', region) IS NULL THEN
        RAISE EXCEPTION 'unknown CleverTap region "%"', region
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'The region is one of eu1, in1, sg1, us1, aps3, mec1: the first label '
                         'of your CleverTap dashboard''s host name.';
    END IF;
END
$$;

-- What every connect_* function does once its kind's arguments are checked:
-- refuse a name in use, warn when the secret would cross the network in clear
-- text (an http:// api_url to a host other than this one), store the
-- destination, its secret and its counters.
CREATE FUNCTION cohortsync._add_destination(p_name text, p_kind text, p_account_id text,
                                            p_secret text, p_region text, p_api_url text,
                                            p_identity_property text, p_settings jsonb)
RETURNS void LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
SET log_min_error_statement = panic
SET log_min_messages = warning
AS $$
BEGIN
    IF p_name IS NULL OR p_name = '' THEN
        RAISE EXCEPTION 'a destination needs a name' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_api_url IS NOT NULL AND p_api_url !~ '^https?://[^/]' THEN
        RAISE EXCEPTION 'api_url must start with https:// or http://'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT FROM cohortsync.destinations d WHERE d.name = p_name) THEN
        RAISE EXCEPTION 'destination "%" already exists', p_name
            USING ERRCODE = 'duplicate_object',
                  HINT = 'Use cohortsync.set_destination_secret() to change its secret.';
    END IF;
    IF p_api_url ~* '^http://'
       AND p_api_url !~* '^http://(localhost|127\.[0-9]+\.[0-9]+\.[0-9]+|\[::1\])(:[0-9]+)?(/|$)' THEN
        RAISE WARNING 'destination "%" sends its secret unencrypted', p_name
            USING DETAIL = format('api_url %s is plain HTTP to a host other than this one.', p_api_url),
                  HINT = 'Use https:// unless every network between here and that host is trusted.';
    END IF;
    INSERT INTO cohortsync.destinations (name, kind, account_id, region, api_url, identity_property,
                                         settings)
        VALUES (p_name, p_kind, p_account_id, p_region, p_api_url, p_identity_property, p_settings);
    INSERT INTO cohortsync.destination_secrets (name, passcode) VALUES (p_name, p_secret);
    INSERT INTO cohortsync.destination_stats (destination) VALUES (p_name)
        ON CONFLICT (destination) DO NOTHING;
END
$$;

-- Connect an mParticle input feed (its server-to-server key and secret) in a
-- pod: us1, us2, eu1, au1.
CREATE FUNCTION cohortsync.connect_mparticle(name text, api_key text, api_secret text,
                                             pod text DEFAULT 'us1', api_url text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET log_min_error_statement = panic
SET log_min_messages = warning
AS $$
BEGIN
    IF api_key IS NULL OR api_key = '' THEN
        RAISE EXCEPTION 'an mParticle destination needs the input feed''s API key'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF api_secret IS NULL OR api_secret = '' THEN
        RAISE EXCEPTION 'an mParticle destination needs the input feed''s API secret'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF cohortsync._region_host('mparticle', pod) IS NULL THEN
        RAISE EXCEPTION 'unknown mParticle pod "%"', pod
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'The pod is one of us1, us2, eu1, au1: the one your mParticle workspace is in.';
    END IF;
    PERFORM cohortsync._add_destination(name, 'mparticle', api_key, api_secret, pod, api_url,
                                        '$mparticle_user_id', '{"environment": "production"}');
END
$$;

COMMENT ON FUNCTION cohortsync.connect_mparticle(text, text, text, text, text) IS
    'Connect an mParticle input feed (Events API): changes recorded from now on are delivered to it.';

-- Connect a Braze workspace (a REST API key with the users.track permission) on
-- an instance: US-01 ... US-08, US-10, EU-01, EU-02, AU-01.
CREATE FUNCTION cohortsync.connect_braze(name text, api_key text, instance text,
                                         api_url text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET log_min_error_statement = panic
SET log_min_messages = warning
AS $$
BEGIN
    IF api_key IS NULL OR api_key = '' THEN
        RAISE EXCEPTION 'a Braze destination needs a REST API key'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF cohortsync._region_host('braze', upper(instance)) IS NULL THEN
        RAISE EXCEPTION 'unknown Braze instance "%"', instance
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'The instance is one of US-01 ... US-08, US-10, EU-01, EU-02, AU-01, as '
                         'Braze''s dashboard shows it; for another, pass its REST endpoint as api_url.';
    END IF;
    PERFORM cohortsync._add_destination(name, 'braze', NULL, api_key, upper(instance), api_url,
                                        '$braze_external_id', '{}');
END
$$;

COMMENT ON FUNCTION cohortsync.connect_braze(text, text, text, text) IS
    'Connect a Braze workspace (POST /users/track): changes recorded from now on are delivered to it.';

-- Change what is sent to a destination and how. NULL leaves a value as it is.
--   settings      merged into the destination's settings; a key set to JSON null
--                 is removed. mParticle: "environment" (production | development).
--                 Braze: "event_name" (the custom event sent with every change;
--                 absent: none).
--   batch_size, max_inflight   0 returns to cohortsync.batch_size /
--                 cohortsync.max_inflight; never above the kind's limits.
--   identity_property   the member property that identifies the user at the
--                 destination ($CleverTap_user_id, $mparticle_user_id,
--                 $braze_external_id by default).
CREATE FUNCTION cohortsync.configure_destination(name text, settings jsonb DEFAULT NULL,
                                                 batch_size integer DEFAULT NULL,
                                                 max_inflight integer DEFAULT NULL,
                                                 identity_property text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    d       cohortsync.destinations;
    v_new   jsonb;
    v_limit record;
BEGIN
    SELECT * INTO d FROM cohortsync.destinations x WHERE x.name = configure_destination.name FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'destination "%" does not exist', name USING ERRCODE = 'undefined_object';
    END IF;
    IF settings IS NOT NULL AND jsonb_typeof(settings) <> 'object' THEN
        RAISE EXCEPTION 'settings must be a JSON object' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_new := jsonb_strip_nulls(d.settings || coalesce(settings, '{}'));
    IF EXISTS (SELECT FROM jsonb_object_keys(v_new) k
                WHERE k <> coalesce(CASE d.kind WHEN 'mparticle' THEN 'environment'
                                                WHEN 'braze' THEN 'event_name' END, '')) THEN
        RAISE EXCEPTION 'a % destination has no setting %', d.kind,
              (SELECT string_agg(quote_literal(k), ', ') FROM jsonb_object_keys(v_new) k
                WHERE k <> coalesce(CASE d.kind WHEN 'mparticle' THEN 'environment'
                                                WHEN 'braze' THEN 'event_name' END, ''))
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'mParticle has "environment"; Braze has "event_name"; CleverTap has none.';
    END IF;
    IF d.kind = 'mparticle' AND v_new ->> 'environment' NOT IN ('production', 'development') THEN
        RAISE EXCEPTION 'mParticle''s environment is production or development, not %', v_new -> 'environment'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF d.kind = 'braze' AND (jsonb_typeof(v_new -> 'event_name') <> 'string' OR v_new ->> 'event_name' = '') THEN
        RAISE EXCEPTION 'Braze''s event_name is a non-empty string (null: no event)'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_limit := cohortsync._kind_limits(d.kind);
    IF batch_size < 0 OR batch_size > v_limit.max_batch THEN
        RAISE EXCEPTION 'batch_size % is out of range for a % destination', batch_size, d.kind
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('A request carries 1 to %s records (0: cohortsync.batch_size).', v_limit.max_batch);
    END IF;
    IF max_inflight < 0 OR max_inflight > v_limit.max_inflight THEN
        RAISE EXCEPTION 'max_inflight % is out of range for a % destination', max_inflight, d.kind
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('1 to %s requests in flight (0: cohortsync.max_inflight).', v_limit.max_inflight);
    END IF;
    IF identity_property = '' THEN
        RAISE EXCEPTION 'identity_property must not be empty' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    UPDATE cohortsync.destinations x
       SET settings = v_new,
           batch_size = CASE configure_destination.batch_size WHEN 0 THEN NULL
                             ELSE coalesce(configure_destination.batch_size, x.batch_size) END,
           max_inflight = CASE configure_destination.max_inflight WHEN 0 THEN NULL
                               ELSE coalesce(configure_destination.max_inflight, x.max_inflight) END,
           identity_property = coalesce(configure_destination.identity_property, x.identity_property)
     WHERE x.name = configure_destination.name;
    PERFORM cohortsync._wake_delivery();
END
$$;

COMMENT ON FUNCTION cohortsync.configure_destination(text, jsonb, integer, integer, text) IS
    'Change a destination''s kind-specific settings, batch_size, max_inflight or identity property (NULL: unchanged).';

-- Disconnect a destination of any kind and forget everything queued or failed for it.
CREATE FUNCTION cohortsync.disconnect_destination(name text)
RETURNS void LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM cohortsync.destinations d WHERE d.name = disconnect_destination.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'destination "%" does not exist', name USING ERRCODE = 'undefined_object';
    END IF;
    DELETE FROM cohortsync.outbox o WHERE o.destination = disconnect_destination.name;
    DELETE FROM cohortsync.failed_records f WHERE f.destination = disconnect_destination.name;
    DELETE FROM cohortsync.destination_stats s WHERE s.destination = disconnect_destination.name;
END
$$;

COMMENT ON FUNCTION cohortsync.disconnect_destination(text) IS
    'Disconnect a destination (any kind) and forget everything queued or failed for it.';

-- Store the secret of a destination of any kind (CleverTap's passcode,
-- mParticle's API secret, Braze's REST API key), also of one without a row in
-- destination_secrets (a restore that left the secrets out: see README).
CREATE FUNCTION cohortsync.set_destination_secret(name text, secret text)
RETURNS void LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET log_min_error_statement = panic
SET log_min_messages = warning
AS $$
BEGIN
    IF secret IS NULL OR secret = '' THEN
        RAISE EXCEPTION 'a destination needs a secret' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT EXISTS (SELECT FROM cohortsync.destinations d WHERE d.name = set_destination_secret.name) THEN
        RAISE EXCEPTION 'destination "%" does not exist', name USING ERRCODE = 'undefined_object';
    END IF;
    INSERT INTO cohortsync.destination_secrets AS s (name, passcode)
    VALUES (set_destination_secret.name, set_destination_secret.secret)
        ON CONFLICT ON CONSTRAINT destination_secrets_pkey
        DO UPDATE SET passcode = EXCLUDED.passcode;
    PERFORM cohortsync._wake_delivery();
END
$$;

COMMENT ON FUNCTION cohortsync.set_destination_secret(text, text) IS
    'Change the secret of a destination of any kind (it stays paused if it was: resume it).';

-- Queue the current membership (all cohorts, one project's, or one cohort) for
-- one destination, as additions built by its kind's builder: a destination
-- connected after members existed, or restored from scratch, converges. Only
-- what is idempotent at the receiver is sent: CleverTap's profile records
-- ($add to the cohorts property, the fields), not its events; Braze's
-- attributes, not its custom events; mParticle's flags. Returns how many
-- records were queued.
CREATE FUNCTION cohortsync.resync_destination(name text, project_id text DEFAULT NULL,
                                              cohort_id text DEFAULT NULL)
RETURNS bigint LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    d cohortsync.destinations;
    n bigint;
BEGIN
    SELECT * INTO d FROM cohortsync.destinations x WHERE x.name = resync_destination.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'destination "%" does not exist', name USING ERRCODE = 'undefined_object';
    END IF;
    INSERT INTO cohortsync.outbox (destination, identity, record, change_id, phone_dropped,
                                   email_dropped)
    SELECT d.name, cohortsync._identity_key(r.identity), r.record, NULL::bigint, r.phone_dropped,
           r.email_dropped
      FROM cohortsync.members m
      LEFT JOIN cohortsync.cohorts co
             ON co.project_id = m.project_id AND co.cohort_id = m.cohort_id
     CROSS JOIN LATERAL (
        SELECT c.identity, c.record, c.phone_dropped, c.email_dropped
          FROM cohortsync._clevertap_records(
                   d.identity_property, d.event_name, d.cohorts_property, m.cohort_id,
                   coalesce(co.name, m.cohort_id), m.distinct_id, m.properties, true, now()) c
         WHERE d.kind = 'clevertap' AND c.record ->> 'type' = 'profile'
        UNION ALL
        SELECT p.identity, p.record, p.phone_dropped, p.email_dropped
          FROM cohortsync._mparticle_records(
                   d.identity_property, d.settings, coalesce(co.name, m.cohort_id), m.distinct_id,
                   m.properties, true) p
         WHERE d.kind = 'mparticle'
        UNION ALL
        SELECT b.identity, b.record, b.phone_dropped, b.email_dropped
          FROM cohortsync._braze_records(
                   d.identity_property, d.cohorts_property, d.settings, m.cohort_id,
                   coalesce(co.name, m.cohort_id), m.distinct_id, m.properties, true, now()) b
         WHERE d.kind = 'braze' AND b.record ? 'attributes') r
     WHERE (resync_destination.project_id IS NULL OR m.project_id = resync_destination.project_id)
       AND (resync_destination.cohort_id IS NULL OR m.cohort_id = resync_destination.cohort_id);
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM cohortsync._wake_delivery();
    END IF;
    RETURN n;
END
$$;

COMMENT ON FUNCTION cohortsync.resync_destination(text, text, text) IS
    'Queue the current membership (all, one project''s, or one cohort''s) for one destination as additions; returns how many records.';

-- Profile fields for every kind: an email that is not an address is left out of
-- the record and counted, as invalid phones are; Mixpanel's reserved $email,
-- $phone and $name are read when email, phone_number, first_name and last_name
-- are absent.
ALTER TABLE cohortsync.outbox ADD COLUMN email_dropped boolean NOT NULL DEFAULT false;
ALTER TABLE cohortsync.destination_stats ADD COLUMN emails_dropped bigint NOT NULL DEFAULT 0;

-- Whether an email is an address (something@domain.tld), the rule every kind
-- applies: CleverTap refuses a whole profile record with 515 for an email that is
-- not one (recorded: "string", "1234", "$$$$$"), Braze refuses the object. Such an
-- email is left out of the record and counted (outbox.email_dropped).
CREATE FUNCTION cohortsync._is_email(email text)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT coalesce(email ~ '^[^@[:space:]]+@[^@[:space:]]+\.[^@[:space:].]+$', false)
$$;

-- A member's email or phone from its properties: the documented name (email,
-- phone_number), else Mixpanel's reserved one ($email, $phone) when it is a
-- string or a number. ingest fills members.email and members.phone the same way
-- (src/page.c).
CREATE FUNCTION cohortsync._member_field(properties jsonb, name text, reserved text)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT coalesce(properties ->> name,
                    CASE WHEN jsonb_typeof(properties -> reserved) IN ('string', 'number')
                         THEN properties ->> reserved END)
$$;

-- A member's first name: first_name, else, when neither first_name nor
-- last_name is there, Mixpanel's $name whole.
CREATE FUNCTION cohortsync._member_first_name(properties jsonb)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT coalesce(properties ->> 'first_name',
                    CASE WHEN properties ->> 'last_name' IS NULL
                              AND jsonb_typeof(properties -> '$name') IN ('string', 'number')
                         THEN properties ->> '$name' END)
$$;

-- Records per kind. Each kind has a set-based builder: a plain SQL function
-- without SET clauses, so that the planner inlines it into the triggers'
-- INSERT ... SELECT (and resync_destination's) as a subquery: no call per row.
-- It takes one change of one member for one destination (the destination's
-- settings, the cohort, the member as the change recorded it, added or removed,
-- when) and returns the outbox rows it makes, each with its identity (the
-- per-identity order key, before _identity_key) and the record exactly as it
-- goes into the request.

-- CleverTap: an event record ("Partner Sync", the five properties the seed
-- names) and, when it has anything to set, a profile record (the cohorts
-- property's $add / $remove, and on an addition Email, Phone and Name). A phone
-- that is not E.164 is left out and counted (phone_dropped, on the event row).
--
-- The subquery x computes both records once; OFFSET 0 keeps the planner from
-- pulling it up into the VALUES list, which would evaluate its expressions once
-- per reference.
CREATE FUNCTION cohortsync._clevertap_records(p_identity_property text, p_event_name text,
                                              p_cohorts_property text, p_cohort_id text,
                                              p_cohort_name text, p_distinct_id text,
                                              p_properties jsonb, p_added boolean,
                                              p_changed_at timestamptz)
RETURNS TABLE (identity text, record jsonb, phone_dropped boolean, email_dropped boolean)
LANGUAGE sql STABLE
AS $$
    SELECT x.identity, r.record, r.phone_dropped, r.email_dropped
      FROM (SELECT m.identity, m.ts,
                   jsonb_build_object(
                       'identity', m.identity, 'type', 'event', 'ts', m.ts, 'evtName', p_event_name,
                       'evtData', jsonb_build_object(
                           'Partner Segment Name', p_cohort_name,
                           'Action', CASE WHEN p_added THEN 'Added' ELSE 'Removed' END,
                           'Partner Segment ID', p_cohort_id,
                           'CT Source', 'Mixpanel',
                           'Partner Name', 'Mixpanel')) AS event,
                   CASE WHEN p_cohorts_property IS NULL THEN '{}'::jsonb
                        ELSE jsonb_build_object(p_cohorts_property,
                                 jsonb_build_object(CASE WHEN p_added THEN '$add' ELSE '$remove' END,
                                                    jsonb_build_array(p_cohort_name)))
                   END
                   || CASE WHEN p_added THEN cohortsync._profile_fields(
                             CASE WHEN m.email_ok THEN m.email END, CASE WHEN m.phone_ok THEN m.phone END,
                             cohortsync._member_first_name(p_properties), p_properties ->> 'last_name')
                           ELSE '{}'::jsonb
                      END AS profile_data,
                   p_added AND m.phone IS NOT NULL AND NOT m.phone_ok AS phone_dropped,
                   p_added AND m.email IS NOT NULL AND m.email <> '' AND NOT m.email_ok AS email_dropped
              FROM (SELECT y.*, cohortsync._is_e164(y.phone) AS phone_ok,
                           cohortsync._is_email(y.email) AS email_ok
                      FROM (SELECT cohortsync._clevertap_identity(p_properties, p_identity_property,
                                                                  p_distinct_id) AS identity,
                                   floor(extract(epoch FROM p_changed_at))::bigint AS ts,
                                   cohortsync._normalize_phone(
                                       cohortsync._member_field(p_properties, 'phone_number', '$phone')) AS phone,
                                   cohortsync._member_field(p_properties, 'email', '$email') AS email
                            OFFSET 0) y
                    OFFSET 0) m
            OFFSET 0) x
     CROSS JOIN LATERAL (VALUES
        (x.event, x.phone_dropped, x.email_dropped),
        (CASE WHEN x.profile_data <> '{}'::jsonb THEN jsonb_build_object(
            'identity', x.identity, 'type', 'profile', 'ts', x.ts,
            'profileData', x.profile_data) END,
         false, false)) r(record, phone_dropped, email_dropped)
     WHERE r.record IS NOT NULL
$$;

-- CleverTap: a member's stored Email, Phone or Name changed without a membership
-- change; a profile record with the current values, when there is one to send.
CREATE FUNCTION cohortsync._clevertap_profile_records(p_identity_property text, p_distinct_id text,
                                                      p_properties jsonb, p_email text, p_phone text,
                                                      p_first_name text, p_last_name text)
RETURNS TABLE (identity text, record jsonb, phone_dropped boolean, email_dropped boolean)
LANGUAGE sql STABLE
AS $$
    SELECT m.identity,
           jsonb_build_object('identity', m.identity, 'type', 'profile',
                              'ts', floor(extract(epoch FROM now()))::bigint,
                              'profileData', pd.profile_data),
           m.phone IS NOT NULL AND NOT p.phone_ok,
           p_email IS NOT NULL AND p_email <> '' AND NOT p.email_ok
      FROM (SELECT cohortsync._clevertap_identity(p_properties, p_identity_property,
                                                  p_distinct_id) AS identity,
                   cohortsync._normalize_phone(p_phone) AS phone) m
     CROSS JOIN LATERAL (SELECT cohortsync._is_e164(m.phone) AS phone_ok,
                                cohortsync._is_email(p_email) AS email_ok) p
     CROSS JOIN LATERAL (
        SELECT cohortsync._profile_fields(CASE WHEN p.email_ok THEN p_email END,
                                          CASE WHEN p.phone_ok THEN m.phone END,
                                          p_first_name, p_last_name) AS profile_data) pd
     WHERE pd.profile_data <> '{}'::jsonb
$$;

-- mParticle: the MPID in a member property (by default $mparticle_user_id, as
-- the seed names it) as an exact number: a JSON number or a string of digits,
-- a signed 64-bit integer other than 0. Built from the numeric text, never
-- through float8: MPIDs can be negative and beyond 2^53. NULL when it is not one.
CREATE FUNCTION cohortsync._mparticle_mpid(value text)
RETURNS numeric LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN value ~ '^\s*-?[0-9]{1,19}\s*$' THEN
               CASE WHEN value::numeric BETWEEN -9223372036854775808 AND 9223372036854775807
                         AND value::numeric <> 0
                    THEN value::numeric END
           END
$$;

-- mParticle: one batch per change, the cohort as a boolean user attribute (true
-- on joining, false on leaving). The user is the member's MPID (top-level mpid)
-- when it has a valid one, else its distinct id as customer_id.
CREATE FUNCTION cohortsync._mparticle_records(p_identity_property text, p_settings jsonb,
                                              p_cohort_name text, p_distinct_id text,
                                              p_properties jsonb, p_added boolean)
RETURNS TABLE (identity text, record jsonb, phone_dropped boolean, email_dropped boolean)
LANGUAGE sql STABLE
AS $$
    SELECT coalesce(m.mpid::text, p_distinct_id),
           jsonb_build_object('environment', coalesce(p_settings ->> 'environment', 'production'),
                              'user_attributes', jsonb_build_object(p_cohort_name, p_added))
           || CASE WHEN m.mpid IS NOT NULL THEN jsonb_build_object('mpid', m.mpid)
                   ELSE jsonb_build_object('user_identities',
                                           jsonb_build_object('customer_id', p_distinct_id))
              END,
           false, false
      FROM (SELECT cohortsync._mparticle_mpid(p_properties ->> p_identity_property) AS mpid
            OFFSET 0) m
$$;

-- Braze's profile fields (email, phone, first_name, last_name); empty values
-- are left out. phone is sent as given: pass NULL for one that is not E.164.
CREATE FUNCTION cohortsync._braze_fields(email text, phone text, first_name text, last_name text)
RETURNS jsonb LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
               'email', nullif(email, ''),
               'phone', phone,
               'first_name', nullif(first_name, ''),
               'last_name', nullif(last_name, '')))
$$;

-- Braze: per change an attributes object for the member's external id (the
-- identity property, by default $braze_external_id, else the distinct id): the
-- cohort added to or removed from the "Mixpanel Cohorts" array and, on an
-- addition, email, phone and names. With settings.event_name, also a custom
-- event of that name (its own row), with the cohort and the action. A phone
-- that is not E.164 is left out and counted, as for CleverTap.
CREATE FUNCTION cohortsync._braze_records(p_identity_property text, p_cohorts_property text,
                                          p_settings jsonb, p_cohort_id text, p_cohort_name text,
                                          p_distinct_id text, p_properties jsonb, p_added boolean,
                                          p_changed_at timestamptz)
RETURNS TABLE (identity text, record jsonb, phone_dropped boolean, email_dropped boolean)
LANGUAGE sql STABLE
AS $$
    SELECT x.identity, r.record, r.phone_dropped, r.email_dropped
      FROM (SELECT m.identity,
                   jsonb_build_object('external_id', m.identity)
                   || CASE WHEN p_cohorts_property IS NULL THEN '{}'::jsonb
                           ELSE jsonb_build_object(p_cohorts_property,
                                    jsonb_build_object(CASE WHEN p_added THEN 'add' ELSE 'remove' END,
                                                       jsonb_build_array(p_cohort_name)))
                      END
                   || CASE WHEN p_added THEN cohortsync._braze_fields(
                             CASE WHEN m.email_ok THEN m.email END, CASE WHEN m.phone_ok THEN m.phone END,
                             cohortsync._member_first_name(p_properties), p_properties ->> 'last_name')
                           ELSE '{}'::jsonb
                      END AS attributes,
                   p_added AND m.phone IS NOT NULL AND NOT m.phone_ok AS phone_dropped,
                   p_added AND m.email IS NOT NULL AND m.email <> '' AND NOT m.email_ok AS email_dropped
              FROM (SELECT y.*, cohortsync._is_e164(y.phone) AS phone_ok,
                           cohortsync._is_email(y.email) AS email_ok
                      FROM (SELECT coalesce(nullif(p_properties ->> p_identity_property, ''),
                                            p_distinct_id) AS identity,
                                   cohortsync._normalize_phone(
                                       cohortsync._member_field(p_properties, 'phone_number', '$phone')) AS phone,
                                   cohortsync._member_field(p_properties, 'email', '$email') AS email
                            OFFSET 0) y
                    OFFSET 0) m
            OFFSET 0) x
     CROSS JOIN LATERAL (VALUES
        (CASE WHEN x.attributes - 'external_id' <> '{}'::jsonb
              THEN jsonb_build_object('attributes', x.attributes) END,
         x.phone_dropped, x.email_dropped),
        (CASE WHEN p_settings ->> 'event_name' IS NOT NULL THEN jsonb_build_object('events',
            jsonb_build_object(
                'external_id', x.identity,
                'name', p_settings ->> 'event_name',
                'time', to_char(p_changed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
                'properties', jsonb_build_object(
                    'cohort_name', p_cohort_name, 'cohort_id', p_cohort_id,
                    'action', CASE WHEN p_added THEN 'added' ELSE 'removed' END))) END,
         false, false)) r(record, phone_dropped, email_dropped)
     WHERE r.record IS NOT NULL
$$;

-- Braze: a member's stored email, phone or names changed without a membership
-- change: an attributes object with the current values.
CREATE FUNCTION cohortsync._braze_profile_records(p_identity_property text, p_distinct_id text,
                                                  p_properties jsonb, p_email text, p_phone text,
                                                  p_first_name text, p_last_name text)
RETURNS TABLE (identity text, record jsonb, phone_dropped boolean, email_dropped boolean)
LANGUAGE sql STABLE
AS $$
    SELECT m.identity,
           jsonb_build_object('attributes', jsonb_build_object('external_id', m.identity) || pd.fields),
           m.phone IS NOT NULL AND NOT p.phone_ok,
           p_email IS NOT NULL AND p_email <> '' AND NOT p.email_ok
      FROM (SELECT coalesce(nullif(p_properties ->> p_identity_property, ''),
                            p_distinct_id) AS identity,
                   cohortsync._normalize_phone(p_phone) AS phone) m
     CROSS JOIN LATERAL (SELECT cohortsync._is_e164(m.phone) AS phone_ok,
                                cohortsync._is_email(p_email) AS email_ok) p
     CROSS JOIN LATERAL (
        SELECT cohortsync._braze_fields(CASE WHEN p.email_ok THEN p_email END,
                                        CASE WHEN p.phone_ok THEN m.phone END,
                                        p_first_name, p_last_name) AS fields) pd
     WHERE pd.fields <> '{}'::jsonb
$$;

-- Whether a destination of this kind is connected: the triggers' branch of a
-- kind runs only then (its gate is evaluated once per statement).
CREATE FUNCTION cohortsync._kind_connected(p_kind text)
RETURNS boolean LANGUAGE sql STABLE
AS $$
    SELECT EXISTS (SELECT FROM cohortsync.destinations d WHERE d.kind = p_kind)
$$;

CREATE OR REPLACE FUNCTION cohortsync._queue_changes()
RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    IF NOT cohortsync._queue_wanted() THEN
        RETURN NULL;
    END IF;
    -- Within one statement every (cohort, member) changes once, so the records
    -- of one identity made here commute; no ORDER BY (it would sort millions).
    INSERT INTO cohortsync.outbox (destination, identity, record, change_id, phone_dropped,
                                   email_dropped)
    SELECT d.name, cohortsync._identity_key(r.identity), r.record, c.id, r.phone_dropped, r.email_dropped
      FROM new_changes c
      LEFT JOIN cohortsync.cohorts co
             ON co.project_id = c.project_id AND co.cohort_id = c.cohort_id
      JOIN cohortsync.destinations d ON d.kind = 'clevertap'
     CROSS JOIN LATERAL cohortsync._clevertap_records(
                d.identity_property, d.event_name, d.cohorts_property, c.cohort_id,
                coalesce(co.name, c.cohort_id), c.distinct_id, c.properties, c.change = 'added',
                c.changed_at) r
     WHERE cohortsync._kind_connected('clevertap')
    UNION ALL
    SELECT d.name, cohortsync._identity_key(r.identity), r.record, c.id, r.phone_dropped, r.email_dropped
      FROM new_changes c
      LEFT JOIN cohortsync.cohorts co
             ON co.project_id = c.project_id AND co.cohort_id = c.cohort_id
      JOIN cohortsync.destinations d ON d.kind = 'mparticle'
     CROSS JOIN LATERAL cohortsync._mparticle_records(
                d.identity_property, d.settings, coalesce(co.name, c.cohort_id), c.distinct_id,
                c.properties, c.change = 'added') r
     WHERE cohortsync._kind_connected('mparticle')
    UNION ALL
    SELECT d.name, cohortsync._identity_key(r.identity), r.record, c.id, r.phone_dropped, r.email_dropped
      FROM new_changes c
      LEFT JOIN cohortsync.cohorts co
             ON co.project_id = c.project_id AND co.cohort_id = c.cohort_id
      JOIN cohortsync.destinations d ON d.kind = 'braze'
     CROSS JOIN LATERAL cohortsync._braze_records(
                d.identity_property, d.cohorts_property, d.settings, c.cohort_id,
                coalesce(co.name, c.cohort_id), c.distinct_id, c.properties, c.change = 'added',
                c.changed_at) r
     WHERE cohortsync._kind_connected('braze');

    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM cohortsync._wake_delivery();
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION cohortsync._queue_profile_updates()
RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    IF NOT cohortsync._queue_wanted() THEN
        RETURN NULL;
    END IF;
    INSERT INTO cohortsync.outbox (destination, identity, record, change_id, phone_dropped,
                                   email_dropped)
    SELECT d.name, cohortsync._identity_key(r.identity), r.record, NULL::bigint, r.phone_dropped,
           r.email_dropped
      FROM new_members nm
      JOIN old_members om
        ON om.project_id = nm.project_id AND om.cohort_id = nm.cohort_id
       AND om.distinct_id = nm.distinct_id
      JOIN cohortsync.destinations d ON d.kind = 'clevertap'
     CROSS JOIN LATERAL cohortsync._clevertap_profile_records(
                d.identity_property, nm.distinct_id, nm.properties, nm.email, nm.phone,
                nm.first_name, nm.last_name) r
     WHERE (nm.email, nm.phone, nm.first_name, nm.last_name)
           IS DISTINCT FROM (om.email, om.phone, om.first_name, om.last_name)
       AND cohortsync._kind_connected('clevertap')
    UNION ALL
    SELECT d.name, cohortsync._identity_key(r.identity), r.record, NULL::bigint, r.phone_dropped,
           r.email_dropped
      FROM new_members nm
      JOIN old_members om
        ON om.project_id = nm.project_id AND om.cohort_id = nm.cohort_id
       AND om.distinct_id = nm.distinct_id
      JOIN cohortsync.destinations d ON d.kind = 'braze'
     CROSS JOIN LATERAL cohortsync._braze_profile_records(
                d.identity_property, nm.distinct_id, nm.properties, nm.email, nm.phone,
                nm.first_name, nm.last_name) r
     WHERE (nm.email, nm.phone, nm.first_name, nm.last_name)
           IS DISTINCT FROM (om.email, om.phone, om.first_name, om.last_name)
       AND cohortsync._kind_connected('braze');

    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM cohortsync._wake_delivery();
    END IF;
    RETURN NULL;
END
$$;

-- The destinations the worker sends to, with everything it needs: the active
-- destinations that have a secret, where their requests go, and how many records
-- a request carries and how many requests may be in flight, already the
-- destination's setting or the GUC's, capped by the kind's limit. The worker
-- applies no limit of its own.
CREATE FUNCTION cohortsync._delivery_targets()
RETURNS TABLE (name text, kind text, base_url text, account_id text, secret text,
               batch_size integer, max_inflight integer)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT d.name, d.kind, cohortsync._base_url(d.kind, d.region, d.api_url), d.account_id,
           s.passcode,
           least(coalesce(d.batch_size, current_setting('cohortsync.batch_size', true)::integer,
                          l.max_batch), l.max_batch),
           least(coalesce(d.max_inflight, current_setting('cohortsync.max_inflight', true)::integer,
                          l.max_inflight), l.max_inflight)
      FROM cohortsync.destinations d
      JOIN cohortsync.destination_secrets s ON s.name = d.name
     CROSS JOIN LATERAL cohortsync._kind_limits(d.kind) l
     WHERE d.state = 'active'
     ORDER BY d.name
$$;

-- An answer's body as JSON, NULL when it is not JSON.
CREATE FUNCTION cohortsync._jsonb_or_null(body text)
RETURNS jsonb LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN body::jsonb;
EXCEPTION WHEN others THEN
    RETURN NULL;
END
$$;

-- The one place an HTTP status and an answer are read: what a destination of
-- kind p_kind said about a request that carried the records p_ids (in the
-- request's order; '{}' for cohortsync.test_destination's request, which
-- carries none). verdict:
--   accepted  every record was taken
--   partial   some records were refused (refused_*: id, code, message) or are
--             to be sent again later (retry_ids); the others were taken
--   split     the request was refused by something no record index names, and
--             it carried several records: send them in halves
--   retry     nothing was taken; the request failed as a whole
--   pause     the credentials, account or region are unusable: wait for a human
-- error: what to show (last_error, paused_reason), NULL when nothing went wrong.
-- A refusal that cannot be attributed to a record is never taken as delivered:
-- split, or the single record fails visibly.
CREATE FUNCTION cohortsync._read_answer(p_kind text, p_http integer, p_body text, p_ids bigint[],
                                        OUT verdict text, OUT refused_ids bigint[],
                                        OUT refused_codes integer[], OUT refused_messages text[],
                                        OUT retry_ids bigint[], OUT error text)
RETURNS record LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_body jsonb := cohortsync._jsonb_or_null(p_body);
BEGIN
    IF p_kind = 'clevertap' THEN
        SELECT * INTO verdict, refused_ids, refused_codes, refused_messages, retry_ids, error
          FROM cohortsync._clevertap_answer(p_http, p_body, v_body, coalesce(p_ids, '{}'));
    ELSIF p_kind = 'mparticle' THEN
        SELECT * INTO verdict, refused_ids, refused_codes, refused_messages, retry_ids, error
          FROM cohortsync._mparticle_answer(p_http, p_body, v_body, coalesce(p_ids, '{}'));
    ELSIF p_kind = 'braze' THEN
        SELECT * INTO verdict, refused_ids, refused_codes, refused_messages, retry_ids, error
          FROM cohortsync._braze_answer(p_http, p_body, v_body, coalesce(p_ids, '{}'));
    ELSE
        RAISE EXCEPTION 'unknown destination kind "%"', p_kind
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;

-- CleverTap's answers (../shared/clevertap-api.md): 200 with status success,
-- partial or fail and the records it did not take in "unprocessed", each named
-- by "Skipped record number : N", the 1-based index of the record in "d"; 555
-- there is a server error to retry later; 400 a malformed request; 401 and 403
-- bad credentials.
CREATE FUNCTION cohortsync._clevertap_answer(p_http integer, p_body text, v_body jsonb,
                                             p_ids bigint[],
                                             OUT verdict text, OUT refused_ids bigint[],
                                             OUT refused_codes integer[], OUT refused_messages text[],
                                             OUT retry_ids bigint[], OUT error text)
RETURNS record LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_status text := CASE WHEN jsonb_typeof(v_body) = 'object' THEN v_body ->> 'status' END;
BEGIN
    refused_ids := '{}';
    refused_codes := '{}';
    refused_messages := '{}';
    retry_ids := '{}';

    IF p_http = 200 AND v_status IN ('success', 'partial', 'fail') THEN
        SELECT coalesce(array_agg(p_ids[x.n] ORDER BY x.n) FILTER (WHERE x.code IS DISTINCT FROM 555), '{}'),
               coalesce(array_agg(x.code ORDER BY x.n) FILTER (WHERE x.code IS DISTINCT FROM 555), '{}'),
               coalesce(array_agg(x.msg ORDER BY x.n) FILTER (WHERE x.code IS DISTINCT FROM 555), '{}'),
               coalesce(array_agg(p_ids[x.n] ORDER BY x.n) FILTER (WHERE x.code = 555), '{}')
          INTO refused_ids, refused_codes, refused_messages, retry_ids
          FROM (SELECT DISTINCT ON (n) n, code, msg FROM (
                  SELECT substring(e ->> 'error' FROM 'Skipped record number\s*:\s*([0-9]+)')::integer AS n,
                         CASE WHEN e ->> 'code' ~ '^[0-9]{1,9}$' THEN (e ->> 'code')::integer END AS code,
                         coalesce(nullif(regexp_replace(e ->> 'error',
                                                        '\s*Skipped record number\s*:\s*[0-9]+\s*$', ''), ''),
                                  'rejected') AS msg
                    FROM jsonb_array_elements(CASE WHEN jsonb_typeof(v_body -> 'unprocessed') = 'array'
                                                   THEN v_body -> 'unprocessed' ELSE '[]' END) e) y
                 WHERE n BETWEEN 1 AND cardinality(p_ids)) x;

        IF v_status = 'fail' AND cardinality(refused_ids) + cardinality(retry_ids) = 0 THEN
            -- a "fail" that names no record: nothing to go by, try again later
            verdict := 'retry';
            retry_ids := p_ids;
            error := 'CleverTap answered status "fail" without naming a record';
        ELSIF cardinality(refused_ids) + cardinality(retry_ids) = 0 THEN
            verdict := 'accepted';
        ELSE
            verdict := 'partial';
            IF cardinality(retry_ids) > 0 THEN
                error := 'CleverTap answered 555 (server error) for some records';
            END IF;
        END IF;

    ELSIF p_http = 400 AND cardinality(p_ids) > 1 THEN
        -- some record made the whole request malformed: find it by halving
        verdict := 'split';

    ELSIF p_http = 400 AND cardinality(p_ids) = 0 THEN
        -- the connection test's empty upload: read by CleverTap when the 400 is
        -- CleverTap's own error body
        IF v_body ->> 'code' = '400' THEN
            verdict := 'accepted';
        ELSE
            verdict := 'pause';
            error := 'CleverTap answered HTTP 400: '
                     || coalesce(v_body ->> 'error', nullif(left(p_body, 200), ''), 'no body')
                     || ' (check the region and api_url, then resume the destination)';
        END IF;

    ELSIF p_http = 400 THEN
        verdict := 'partial';
        refused_ids := p_ids;
        refused_codes := ARRAY[400];
        refused_messages := ARRAY['HTTP 400: ' || coalesce(v_body ->> 'error', left(p_body, 200),
                                                            'bad request')];

    ELSIF p_http IN (401, 403) THEN
        -- wrong account id, passcode or region: nothing will go through until a
        -- human acts
        verdict := 'pause';
        error := format('CleverTap answered HTTP %s: %s', p_http,
                        coalesce(v_body ->> 'error', 'authentication failed'))
                 || ' (check the account id, passcode and region, then resume the destination)';

    ELSE
        -- 429, 5xx, no answer, an unreadable 200: try again later
        verdict := 'retry';
        retry_ids := p_ids;
        error := CASE
            WHEN p_http = 0 THEN 'no answer'
            WHEN p_http = 200 THEN 'HTTP 200 with an unreadable body'
            ELSE format('HTTP %s: %s', p_http,
                        coalesce(v_body ->> 'error', nullif(left(p_body, 200), ''), 'no body'))
            END;
    END IF;
END
$$;

-- mParticle's answers (docs/destination-apis.md): 202 accepts the whole
-- request, with no per-batch result; 400 (and 413, too large) refuses the whole
-- request without naming a batch; 401 and 403 bad key or secret; 429 and 503 to
-- retry after Retry-After or a back-off. A request without batches (the
-- connection test) is connected when a 400 comes in mParticle's error shape.
CREATE FUNCTION cohortsync._mparticle_answer(p_http integer, p_body text, v_body jsonb,
                                             p_ids bigint[],
                                             OUT verdict text, OUT refused_ids bigint[],
                                             OUT refused_codes integer[], OUT refused_messages text[],
                                             OUT retry_ids bigint[], OUT error text)
RETURNS record LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_reason text := coalesce(CASE WHEN jsonb_typeof(v_body -> 'errors') = 'array'
                                   THEN v_body -> 'errors' -> 0 ->> 'message' END,
                              CASE WHEN jsonb_typeof(v_body) = 'object' THEN v_body ->> 'message' END,
                              nullif(left(p_body, 200), ''));
BEGIN
    refused_ids := '{}';
    refused_codes := '{}';
    refused_messages := '{}';
    retry_ids := '{}';

    IF p_http BETWEEN 200 AND 299 THEN
        verdict := 'accepted';

    ELSIF p_http IN (400, 413) AND cardinality(p_ids) > 1 THEN
        -- an answer for the whole request: find the batch by halving
        verdict := 'split';

    ELSIF p_http IN (400, 413) AND cardinality(p_ids) = 1 THEN
        verdict := 'partial';
        refused_ids := p_ids;
        refused_codes := ARRAY[p_http];
        refused_messages := ARRAY[format('HTTP %s: %s', p_http, coalesce(v_reason, 'bad request'))];

    ELSIF p_http = 400 AND jsonb_typeof(v_body -> 'errors') = 'array' THEN
        verdict := 'accepted';      -- the connection test's empty batch, read by mParticle

    ELSIF p_http IN (400, 401, 403, 404, 413) THEN
        verdict := 'pause';
        error := format('mParticle answered HTTP %s: %s', p_http,
                        coalesce(v_reason, CASE WHEN p_http IN (401, 403) THEN 'authentication failed'
                                                ELSE 'no body' END))
                 || ' (check the API key, API secret and pod, then resume the destination)';

    ELSE
        verdict := 'retry';
        retry_ids := p_ids;
        error := CASE WHEN p_http = 0 THEN 'no answer'
                      ELSE format('HTTP %s: %s', p_http, coalesce(v_reason, 'no body')) END;
    END IF;
END
$$;

-- Braze's answers (docs/destination-apis.md): 201 success; 201 with "errors"
-- naming refused objects by input_array and 0-based index (the others were
-- processed); 202 "queued" (accepted, processed later); 400 with "errors" naming
-- each refused object (nothing was processed: the others are sent again);
-- 401, 403 and 404 an unusable key or account; 429 and 5xx to retry. The claimed
-- records map an index back to an id: the request carries the "attributes" rows
-- and the "events" rows of p_ids each in p_ids' order.
CREATE FUNCTION cohortsync._braze_answer(p_http integer, p_body text, v_body jsonb,
                                         p_ids bigint[],
                                         OUT verdict text, OUT refused_ids bigint[],
                                         OUT refused_codes integer[], OUT refused_messages text[],
                                         OUT retry_ids bigint[], OUT error text)
RETURNS record LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_errors     jsonb := CASE WHEN jsonb_typeof(v_body -> 'errors') = 'array' THEN v_body -> 'errors'
                               ELSE '[]' END;
    v_unnamed    integer;
    v_reason     text := coalesce(CASE WHEN jsonb_typeof(v_body) = 'object' THEN v_body ->> 'message' END,
                                  nullif(left(p_body, 200), ''));
BEGIN
    refused_ids := '{}';
    refused_codes := '{}';
    refused_messages := '{}';
    retry_ids := '{}';

    IF p_http IN (201, 202, 400) AND jsonb_typeof(v_body) = 'object' THEN
        -- the refused objects named by array and index, mapped to the claimed ids;
        -- v_unnamed counts the errors that name none of them
        WITH sent AS (
            SELECT u.id, CASE WHEN o.record ? 'events' THEN 'events' ELSE 'attributes' END AS arr,
                   (row_number() OVER (PARTITION BY o.record ? 'events' ORDER BY u.n) - 1)::integer AS idx
              FROM unnest(p_ids) WITH ORDINALITY u(id, n)
              JOIN cohortsync.outbox o ON o.id = u.id),
        errs AS (
            SELECT s.id, coalesce(e.e ->> 'type', 'refused') AS type,
                   row_number() OVER (PARTITION BY s.id ORDER BY e.n) AS k
              FROM jsonb_array_elements(v_errors) WITH ORDINALITY e(e, n)
              LEFT JOIN sent s
                     ON s.arr = e.e ->> 'input_array'
                    AND s.idx = CASE WHEN e.e ->> 'index' ~ '^[0-9]{1,9}$'
                                     THEN (e.e ->> 'index')::integer END)
        SELECT coalesce(array_agg(x.id ORDER BY x.id) FILTER (WHERE x.id IS NOT NULL), '{}'),
               coalesce(array_agg(x.type ORDER BY x.id) FILTER (WHERE x.id IS NOT NULL), '{}'),
               count(*) FILTER (WHERE x.id IS NULL)
          INTO refused_ids, refused_messages, v_unnamed
          FROM errs x
         WHERE x.id IS NULL OR x.k = 1;
        refused_codes := array_fill(p_http, ARRAY[cardinality(refused_ids)]);

        IF p_http = 400 AND cardinality(p_ids) = 0 THEN
            -- the connection test's empty request, read by Braze
            IF v_reason LIKE 'Valid data must be provided%' THEN
                verdict := 'accepted';
            ELSE
                verdict := 'pause';
                error := format('Braze answered HTTP 400: %s', coalesce(v_reason, 'no body'))
                         || ' (check the REST API key, its users.track permission and the instance, then resume the destination)';
            END IF;
        ELSIF v_unnamed > 0 OR (p_http = 400 AND cardinality(refused_ids) = 0) THEN
            -- a refusal that names no object: find it by halving, or fail the one record
            IF cardinality(p_ids) > 1 THEN
                verdict := 'split';
                refused_ids := '{}';
                refused_codes := '{}';
                refused_messages := '{}';
            ELSE
                verdict := 'partial';
                refused_ids := p_ids;
                refused_codes := array_fill(p_http, ARRAY[cardinality(p_ids)]);
                refused_messages := array_fill(format('HTTP %s: %s', p_http,
                                                      coalesce(v_errors -> 0 ->> 'type', v_reason, 'refused')),
                                               ARRAY[cardinality(p_ids)]);
            END IF;
        ELSIF p_http = 400 THEN
            -- nothing was processed: the objects not named go again
            verdict := 'partial';
            SELECT coalesce(array_agg(i ORDER BY n), '{}') INTO retry_ids
              FROM unnest(p_ids) WITH ORDINALITY u(i, n) WHERE NOT i = ANY (refused_ids);
            IF cardinality(retry_ids) > 0 THEN
                error := 'Braze refused the request (HTTP 400) for some objects; the others are sent again';
            END IF;
        ELSIF cardinality(refused_ids) > 0 THEN
            verdict := 'partial';
        ELSE
            verdict := 'accepted';
        END IF;

    ELSIF p_http BETWEEN 200 AND 299 THEN
        -- an unreadable 2xx
        verdict := 'retry';
        retry_ids := p_ids;
        error := format('HTTP %s with an unreadable body', p_http);

    ELSIF p_http IN (400, 401, 403, 404) THEN
        -- a 400 that is not Braze's, or an unusable key or account
        verdict := 'pause';
        error := format('Braze answered HTTP %s: %s', p_http, coalesce(v_reason, 'no body'))
                 || ' (check the REST API key, its users.track permission and the instance, then resume the destination)';

    ELSE
        verdict := 'retry';
        retry_ids := p_ids;
        error := CASE WHEN p_http = 0 THEN 'no answer'
                      ELSE format('HTTP %s: %s', p_http, coalesce(v_reason, 'no body')) END;
    END IF;
END
$$;

-- The 8-argument _record_outcome goes: the new one reads answers per kind and
-- takes Retry-After.
DROP FUNCTION cohortsync._record_outcome(text, bigint[], integer, text, text, interval, interval, bigint[]);
-- Record what became of one request carrying the records p_ids, in one
-- transaction, as _read_answer reads the answer. p_http is the HTTP status (0:
-- no answer; p_error says why), p_body the answer, p_retry_after its
-- Retry-After header in seconds (NULL: none). p_rest are the records of the same
-- claim still waiting to be sent after this request (a batch being split);
-- their lease is extended, or released with p_ids when the destination must wait.
--
-- Returns what the worker does next:
--   'done'      the records are settled; send the rest, if any
--   'requeued'  settled, but some records stay queued for a later retry: they
--               are behind the worker's cursor now, it must look there again
--   'split'     a refusal no record is named in, on several records: send them
--               in halves to isolate the bad ones
--   'retry'     p_ids and p_rest wait for a retry (backoff), or the destination paused
CREATE FUNCTION cohortsync._record_outcome(p_destination text, p_ids bigint[], p_http integer,
                                           p_body text, p_error text, p_retry_age interval,
                                           p_lease interval, p_rest bigint[] DEFAULT '{}',
                                           p_retry_after integer DEFAULT NULL)
RETURNS text LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
-- Every statement below reaches outbox rows by id = ANY (...) and nothing else: ids
-- are unique, and a "destination = p_destination" beside it let the planner walk the
-- destination's part of outbox_claim_idx instead (the whole queue, for every request).
-- With stale statistics (an outbox analyzed while empty) a sequential scan of the whole
-- queue looked cheapest: 200 ms per request on a 20,000-record queue; and every index
-- looked one page big, so a walk of all of outbox_claim_idx (id is its second column)
-- looked as cheap as the primary key. enable_seqscan = off rules out the first,
-- cohortsync.plan_outbox_full the second (src/outbox_plan.c): the primary key wins.
SET enable_seqscan = off
SET cohortsync.plan_outbox_full = on
AS $$
DECLARE
    v_kind      text;
    v_answer    record;
    v_error     text;
    v_retry     bigint[] := '{}';
    v_delivered bigint := 0;
    v_nfailed   bigint := 0;
    v_phones    bigint := 0;
    v_emails    bigint := 0;
    v_n         bigint;
    v_result    text := 'done';
BEGIN
    SELECT d.kind INTO v_kind FROM cohortsync.destinations d WHERE d.name = p_destination;
    IF NOT FOUND THEN
        RETURN 'done';          -- disconnected while the request was in flight: nothing is left
    END IF;

    -- Whatever answered may echo the request's headers back (a misconfigured
    -- proxy): the secret must not reach last_error, paused_reason or failed_records.
    SELECT replace(p_body, s.passcode, '[passcode]'), replace(p_error, s.passcode, '[passcode]')
      INTO p_body, p_error
      FROM cohortsync.destination_secrets s
     WHERE s.name = p_destination AND s.passcode <> '';

    v_answer := cohortsync._read_answer(v_kind, p_http, p_body, p_ids);
    v_error := CASE WHEN p_http = 0 THEN coalesce(p_error, v_answer.error) ELSE v_answer.error END;

    IF v_answer.verdict = 'split' THEN
        UPDATE cohortsync.outbox o SET lease_until = now() + p_lease
         WHERE o.id = ANY (p_ids || p_rest);
        RETURN 'split';

    ELSIF v_answer.verdict = 'pause' THEN
        -- nothing will go through until a human acts: pause, keep every record
        UPDATE cohortsync.destinations d
           SET state = 'paused', paused_reason = v_error, paused_at = now()
         WHERE d.name = p_destination AND d.state = 'active';
        UPDATE cohortsync.outbox o SET lease_until = NULL, leased_by = NULL, last_error = v_error
         WHERE o.id = ANY (p_ids || p_rest);
        v_result := 'retry';

    ELSIF v_answer.verdict = 'retry' THEN
        v_retry := p_ids || p_rest;
        v_result := 'retry';

    ELSE
        v_retry := v_answer.retry_ids;
        IF cardinality(v_retry) > 0 THEN
            v_result := 'requeued';
        END IF;
        -- the refused records, with the destination's code and message
        WITH gone AS (
            DELETE FROM cohortsync.outbox o WHERE o.id = ANY (v_answer.refused_ids)
            RETURNING o.*)
        INSERT INTO cohortsync.failed_records
               (id, destination, identity, record, change_id, created_at, attempts, code, message)
        SELECT g.id, g.destination, g.identity, g.record, g.change_id, g.created_at,
               g.attempts + 1, f.code, f.message
          FROM gone g
          JOIN unnest(v_answer.refused_ids, v_answer.refused_codes, v_answer.refused_messages)
               f(id, code, message) ON f.id = g.id;
        GET DIAGNOSTICS v_nfailed = ROW_COUNT;
        -- everything else was accepted
        WITH accepted AS (
            DELETE FROM cohortsync.outbox o
             WHERE o.id = ANY (p_ids) AND NOT o.id = ANY (v_answer.refused_ids || v_retry)
            RETURNING o.phone_dropped, o.email_dropped)
        SELECT count(*), count(*) FILTER (WHERE a.phone_dropped), count(*) FILTER (WHERE a.email_dropped)
          INTO v_delivered, v_phones, v_emails
          FROM accepted a;
    END IF;

    IF cardinality(v_retry) > 0 THEN
        -- too old to keep trying: give up on them, visibly
        WITH gone AS (
            DELETE FROM cohortsync.outbox o
             WHERE o.id = ANY (v_retry) AND o.created_at < now() - p_retry_age
            RETURNING o.*)
        INSERT INTO cohortsync.failed_records
               (id, destination, identity, record, change_id, created_at, attempts, code, message)
        SELECT g.id, g.destination, g.identity, g.record, g.change_id, g.created_at, g.attempts + 1,
               NULL, format('not delivered within cohortsync.max_retry_age (%s); last error: %s',
                            p_retry_age, v_error)
          FROM gone g;
        GET DIAGNOSTICS v_n = ROW_COUNT;
        v_nfailed := v_nfailed + v_n;
        -- exponential backoff from 1 s to 10 min, with jitter (half to all of it),
        -- and never sooner than the destination's Retry-After
        UPDATE cohortsync.outbox o
           SET attempts = o.attempts + 1, lease_until = NULL, leased_by = NULL, last_error = v_error,
               next_attempt_at = now() + greatest(
                   least(interval '10 minutes',
                         interval '1 second' * power(2, least(o.attempts, 20))) * (0.5 + random() / 2),
                   interval '1 second' * greatest(coalesce(p_retry_after, 0), 0))
         WHERE o.id = ANY (v_retry);
    END IF;

    IF v_result IN ('done', 'requeued') AND cardinality(p_rest) > 0 THEN
        UPDATE cohortsync.outbox o SET lease_until = now() + p_lease WHERE o.id = ANY (p_rest);
    END IF;

    INSERT INTO cohortsync.destination_stats AS s
           (destination, requests, delivered, failed, phones_dropped, last_success_at,
            last_error, last_error_at, emails_dropped)
    VALUES (p_destination, 1, v_delivered, v_nfailed, v_phones,
            CASE WHEN v_answer.verdict IN ('accepted', 'partial') AND p_http BETWEEN 200 AND 299
                 THEN now() END,
            v_error, CASE WHEN v_error IS NOT NULL THEN now() END, v_emails)
    ON CONFLICT (destination) DO UPDATE
       SET requests = s.requests + 1,
           delivered = s.delivered + EXCLUDED.delivered,
           failed = s.failed + EXCLUDED.failed,
           phones_dropped = s.phones_dropped + EXCLUDED.phones_dropped,
           emails_dropped = s.emails_dropped + EXCLUDED.emails_dropped,
           last_success_at = coalesce(EXCLUDED.last_success_at, s.last_success_at),
           last_error = coalesce(EXCLUDED.last_error, s.last_error),
           last_error_at = coalesce(EXCLUDED.last_error_at, s.last_error_at);
    RETURN v_result;
END
$$;

REVOKE ALL ON FUNCTION cohortsync._is_email(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync._member_field(jsonb, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync._member_first_name(jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync._clevertap_records(text, text, text, text, text, text, jsonb, boolean, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync._clevertap_profile_records(text, text, jsonb, text, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync._kind_connected(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync._mparticle_mpid(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync._mparticle_records(text, jsonb, text, text, jsonb, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync._braze_fields(text, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync._braze_records(text, text, jsonb, text, text, text, jsonb, boolean, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync._braze_profile_records(text, text, jsonb, text, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync._mparticle_answer(integer, text, jsonb, bigint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync._braze_answer(integer, text, jsonb, bigint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync._add_destination(text, text, text, text, text, text, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync.connect_mparticle(text, text, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync.connect_braze(text, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync.configure_destination(text, jsonb, integer, integer, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync.disconnect_destination(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync.set_destination_secret(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync.resync_destination(text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync._record_outcome(text, bigint[], integer, text, text, interval, interval, bigint[], integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync._kind_limits(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync._region_host(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync._base_url(text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync._delivery_targets() FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync._jsonb_or_null(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync._read_answer(text, integer, text, bigint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync._clevertap_answer(integer, text, jsonb, bigint[]) FROM PUBLIC;

-------------------------------------------------------------------------------
-- Backoff per destination (issue #13): the worker publishes, besides what it has
-- in flight, how many requests of a destination failed in a row and when the next
-- may leave; destination_status shows both (new last columns). Its one restatement
-- below also adds the kinds' columns, kind and emails_dropped, before them.
--
-- _worker_in_flight() gains two columns. A function's result type cannot be
-- changed in place, and dropping the view would drop the SELECT privileges
-- granted on it: so the new function is made under another name, the view is
-- pointed at it, the old one dropped and the new one renamed.
-------------------------------------------------------------------------------

CREATE FUNCTION cohortsync._worker_in_flight_new()
RETURNS TABLE (destination text, records bigint, consecutive_failures integer,
               backoff_until timestamptz)
AS 'MODULE_PATHNAME', 'cohortsync_worker_in_flight'
LANGUAGE C VOLATILE;

CREATE OR REPLACE VIEW cohortsync.destination_status AS
SELECT d.name,
       d.state,
       d.paused_reason                         AS state_reason,
       d.paused_at,
       greatest(coalesce(o.pending, 0) - coalesce(w.records, 0), 0) AS pending,
       coalesce(o.in_flight, 0) + least(coalesce(w.records, 0), coalesce(o.pending, 0)) AS in_flight,
       coalesce(s.delivered, 0)                AS delivered,
       (SELECT count(*) FROM cohortsync.failed_records f
         WHERE f.destination = d.name)         AS failed,
       now() - o.oldest                        AS oldest_pending_age,
       s.last_success_at,
       s.last_error,
       s.last_error_at,
       coalesce(s.phones_dropped, 0)           AS phones_dropped,
       coalesce(s.requests, 0)                 AS requests,
       -- every obstacle, the one of the whole database first
       nullif(concat_ws('; ',
         b.blocker,
         CASE WHEN NOT EXISTS (SELECT FROM cohortsync.destination_secrets x WHERE x.name = d.name)
              THEN CASE WHEN d.kind = 'clevertap'
                        THEN 'no passcode is stored: call cohortsync.set_clevertap_passcode()'
                        ELSE 'no secret is stored: call cohortsync.set_destination_secret()' END END,
         CASE WHEN d.state = 'paused'
              THEN 'paused: ' || coalesce(d.paused_reason, 'paused by user')
                   || ' (call cohortsync.resume_destination())' END,
         CASE WHEN o.retry_waiting > 0
              THEN format('backing off: %s records wait for a retry, the next at %s; last error: %s',
                          o.retry_waiting, o.next_retry, coalesce(s.last_error, 'none')) END),
         '')                                   AS reason,
       d.kind,
       coalesce(s.emails_dropped, 0)           AS emails_dropped,
       coalesce(w.consecutive_failures, 0)     AS consecutive_failures,
       w.backoff_until
  FROM cohortsync.destinations d
  LEFT JOIN cohortsync.destination_stats s ON s.destination = d.name
  LEFT JOIN cohortsync._worker_in_flight_new() w ON w.destination = d.name
  CROSS JOIN (SELECT cohortsync._delivery_blocker(
                  (SELECT e.extversion FROM pg_extension e WHERE e.extname = 'cohortsync')) AS blocker) b
  LEFT JOIN LATERAL (
        SELECT count(*) FILTER (WHERE x.lease_until IS NULL OR x.lease_until < now()) AS pending,
               count(*) FILTER (WHERE x.lease_until >= now())                         AS in_flight,
               min(x.created_at)                                                      AS oldest,
               count(*) FILTER (WHERE x.attempts > 0 AND x.next_attempt_at > now())   AS retry_waiting,
               min(x.next_attempt_at) FILTER (WHERE x.attempts > 0
                                              AND x.next_attempt_at > now())          AS next_retry
          FROM cohortsync.outbox x WHERE x.destination = d.name) o ON true;
COMMENT ON VIEW cohortsync.destination_status IS
    'One row per destination: state and why, pending, in flight, delivered, failed, oldest pending age, last success and error, the reason nothing moves (NULL: nothing in the way), its kind, emails dropped, and the worker''s backoff after requests that failed in a row.';

DROP FUNCTION cohortsync._worker_in_flight();
ALTER FUNCTION cohortsync._worker_in_flight_new() RENAME TO _worker_in_flight;

-------------------------------------------------------------------------------
-- A connection test for every kind (issue #13).
-------------------------------------------------------------------------------

-- Whether a destination's credentials and region work: one harmless
-- authenticated request that carries no user data (per kind, see
-- docs/destination-apis.md, "Connection test"), sent from the calling backend
-- with cohortsync.connect_timeout, request_timeout and ca_file, and judged by
-- _read_answer. Returns {"ok", "kind", "http_status", "verdict", "reason"};
-- the secret is in none of them. Reads the secret: the settings that keep a
-- secret out of the log apply, as for the functions that take one.
CREATE FUNCTION cohortsync.test_destination(name text)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'cohortsync_test_destination'
LANGUAGE C VOLATILE STRICT SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET log_min_error_statement = panic
SET log_min_messages = warning;
COMMENT ON FUNCTION cohortsync.test_destination(text) IS
    'Send the destination''s connection test (no user data) and say whether its credentials and region work.';
REVOKE ALL ON FUNCTION cohortsync.test_destination(text) FROM PUBLIC;

-------------------------------------------------------------------------------
-- A replay ends the destination's backoff: replay_failed() follows a human's
-- fix, like a resume, so the worker tries the replayed destinations at once
-- instead of after the current step of their schedule (up to 5 minutes).
-------------------------------------------------------------------------------

-- When the current transaction commits, end the delivery worker's backoff of a
-- destination (of every destination when NULL). A no-op when the library is not
-- in shared_preload_libraries (there is no worker).
CREATE FUNCTION cohortsync._reset_backoff(destination text)
RETURNS void
AS 'MODULE_PATHNAME', 'cohortsync_reset_backoff'
LANGUAGE C VOLATILE;

CREATE OR REPLACE FUNCTION cohortsync.replay_failed(destination text DEFAULT NULL)
RETURNS bigint LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    WITH gone AS (
        DELETE FROM cohortsync.failed_records f
         WHERE replay_failed.destination IS NULL OR f.destination = replay_failed.destination
        RETURNING f.*)
    INSERT INTO cohortsync.outbox (destination, identity, record, change_id, created_at)
    SELECT g.destination, g.identity, g.record, g.change_id, now()
      FROM gone g ORDER BY g.id;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        -- a replay follows a fix: try the destination at once, not after its backoff
        PERFORM cohortsync._reset_backoff(replay_failed.destination);
        PERFORM cohortsync._wake_delivery();
    END IF;
    RETURN n;
END
$$;
REVOKE ALL ON FUNCTION cohortsync._reset_backoff(text) FROM PUBLIC;
