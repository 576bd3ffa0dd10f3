-- cohortsync 0.1.0 — base install script.
--
-- Membership of Mixpanel cohorts as a system of record: what every cohort holds now
-- (cohortsync.members), every join and leave (cohortsync.membership_changes), and the
-- progress of every sync session Mixpanel's Cohort Sync webhook has sent.

\echo Use "CREATE EXTENSION cohortsync" to load this file. \quit

-------------------------------------------------------------------------------
-- Cohorts: one row per Mixpanel cohort ever seen.
-------------------------------------------------------------------------------
-- Ids are opaque: they compare byte by byte (COLLATE "C"), which is both the right
-- order for identifiers and much cheaper for the indexes than a linguistic collation.
CREATE TABLE cohortsync.cohorts (
    project_id       text COLLATE "C" NOT NULL,
    cohort_id        text COLLATE "C" NOT NULL,
    name             text,
    description      text,
    member_count     bigint      NOT NULL DEFAULT 0 CHECK (member_count >= 0),
    last_changed_at  timestamptz,           -- last time membership really changed
    last_session_id  text,                  -- mixpanel_session_id of the last page seen
    last_sync_at     timestamptz,           -- when the last page arrived
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, cohort_id)
);
COMMENT ON TABLE cohortsync.cohorts IS
    'One row per Mixpanel cohort: name and description as last sent, current member count.';

-------------------------------------------------------------------------------
-- Current membership.
-------------------------------------------------------------------------------
CREATE TABLE cohortsync.members (
    project_id   text COLLATE "C" NOT NULL,
    cohort_id    text COLLATE "C" NOT NULL,
    distinct_id  text COLLATE "C" NOT NULL,
    email        text,
    phone        text,
    first_name   text,
    last_name    text,
    properties   jsonb       NOT NULL,      -- the member object exactly as sent
    joined_at    timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    -- No foreign key to cohorts: its per-row check doubled the cost of inserting
    -- members (a full sync inserts millions), and ingest creates the cohort's row
    -- first, in the same transaction. Deleting a cohort still removes its members:
    -- see cohorts_delete_members below.
    PRIMARY KEY (project_id, cohort_id, distinct_id)
);
COMMENT ON TABLE cohortsync.members IS
    'Current members of every cohort; properties holds every field Mixpanel sent for the member.';

CREATE FUNCTION cohortsync._delete_cohort_members()
RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM cohortsync.members m USING old_cohorts o
     WHERE m.project_id = o.project_id AND m.cohort_id = o.cohort_id;
    DELETE FROM cohortsync.staged_members s USING old_cohorts o
     WHERE s.project_id = o.project_id AND s.cohort_id = o.cohort_id;
    RETURN NULL;
END
$$;
CREATE TRIGGER cohorts_delete_members
    AFTER DELETE ON cohortsync.cohorts
    REFERENCING OLD TABLE AS old_cohorts
    FOR EACH STATEMENT EXECUTE FUNCTION cohortsync._delete_cohort_members();
REVOKE ALL ON FUNCTION cohortsync._delete_cohort_members() FROM PUBLIC;

-------------------------------------------------------------------------------
-- History: one row per real change, never for a no-op.
-------------------------------------------------------------------------------
CREATE TABLE cohortsync.membership_changes (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_id   text COLLATE "C" NOT NULL,
    cohort_id    text COLLATE "C" NOT NULL,
    distinct_id  text COLLATE "C" NOT NULL,
    change       text        NOT NULL CHECK (change IN ('added', 'removed')),
    session_id   text COLLATE "C",
    changed_at   timestamptz NOT NULL DEFAULT now(),
    -- The member as known at the change: sent fields on 'added', stored fields on
    -- 'removed' (the member row is gone by then, but delivery still needs its identity).
    properties   jsonb
);
CREATE INDEX membership_changes_cohort_idx
    ON cohortsync.membership_changes (project_id, cohort_id, id);
COMMENT ON TABLE cohortsync.membership_changes IS
    'Every join (added) and leave (removed) of every cohort, in commit order of id.';

-------------------------------------------------------------------------------
-- Sync sessions and their pages.
-------------------------------------------------------------------------------
CREATE TABLE cohortsync.sync_sessions (
    project_id      text COLLATE "C" NOT NULL,
    cohort_id       text COLLATE "C" NOT NULL,
    session_id      text COLLATE "C" NOT NULL,
    action          text        NOT NULL CHECK (action IN ('members', 'add_members', 'remove_members')),
    total_pages     integer     NOT NULL CHECK (total_pages > 0),
    pages_received  integer     NOT NULL DEFAULT 0,
    state           text        NOT NULL DEFAULT 'receiving'
                                CHECK (state IN ('receiving', 'completed', 'superseded')),
    restarts        integer     NOT NULL DEFAULT 0,   -- times total_pages changed mid-session
    members_added   bigint      NOT NULL DEFAULT 0,
    members_removed bigint      NOT NULL DEFAULT 0,
    started_at      timestamptz NOT NULL DEFAULT now(),
    last_page_at    timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz,                      -- set when every page has arrived
    superseded_at   timestamptz,                      -- set when a newer full sync replaced it
    PRIMARY KEY (project_id, cohort_id, session_id, action),
    FOREIGN KEY (project_id, cohort_id) REFERENCES cohortsync.cohorts ON DELETE CASCADE
);
CREATE INDEX sync_sessions_receiving_idx
    ON cohortsync.sync_sessions (project_id, cohort_id) WHERE state = 'receiving';
COMMENT ON TABLE cohortsync.sync_sessions IS
    'One row per (cohort, mixpanel_session_id, action): how many pages arrived and when it completed.';

CREATE TABLE cohortsync.sync_pages (
    project_id        text COLLATE "C" NOT NULL,
    cohort_id         text COLLATE "C" NOT NULL,
    session_id        text COLLATE "C" NOT NULL,
    action            text        NOT NULL,
    page_count        integer     NOT NULL CHECK (page_count > 0),
    member_count      integer     NOT NULL,
    times_received    integer     NOT NULL DEFAULT 1,
    first_received_at timestamptz NOT NULL DEFAULT now(),
    last_received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, cohort_id, session_id, action, page_count),
    FOREIGN KEY (project_id, cohort_id, session_id, action)
        REFERENCES cohortsync.sync_sessions ON DELETE CASCADE
);
COMMENT ON TABLE cohortsync.sync_pages IS
    'Every page of every session that arrived, and how many times it was received.';

-- Members of full syncs ('members' action) whose pages have not all arrived yet. The
-- cohort's membership is replaced from here, in one transaction, once they have.
CREATE TABLE cohortsync.staged_members (
    project_id   text COLLATE "C" NOT NULL,
    cohort_id    text COLLATE "C" NOT NULL,
    session_id   text COLLATE "C" NOT NULL,
    distinct_id  text COLLATE "C" NOT NULL,
    email        text,
    phone        text,
    first_name   text,
    last_name    text,
    properties   jsonb NOT NULL,
    -- The primary key doubles as the access path of the swap: for one session it yields
    -- the staged members in distinct_id order, as the members primary key does.
    PRIMARY KEY (project_id, cohort_id, session_id, distinct_id)
);
COMMENT ON TABLE cohortsync.staged_members IS
    'Members of unfinished full syncs; emptied when the session completes or is superseded.';

-------------------------------------------------------------------------------
-- Functions.
-------------------------------------------------------------------------------
CREATE FUNCTION cohortsync.ingest(page jsonb)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'cohortsync_ingest'
LANGUAGE C STRICT VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION cohortsync.ingest(jsonb) IS
    'Apply one Mixpanel Cohort Sync webhook page; returns the response body Mixpanel expects.';

-- EXPLAIN of the full-sync swap of one staged session, for DBAs and for the test that
-- guards its plan shape. guarded => false shows what the planner would pick unguarded.
CREATE FUNCTION cohortsync.explain_swap(project_id text, cohort_id text, session_id text,
                                        guarded boolean DEFAULT true)
RETURNS text
AS 'MODULE_PATHNAME', 'cohortsync_explain_swap'
LANGUAGE C STRICT VOLATILE;

-- Only the owner may call anything until they grant it (see README, "Roles").
REVOKE ALL ON FUNCTION cohortsync.ingest(jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync.explain_swap(text, text, text, boolean) FROM PUBLIC;

-------------------------------------------------------------------------------
-- The data is the point of the extension: pg_dump must keep it.
-------------------------------------------------------------------------------
SELECT pg_catalog.pg_extension_config_dump('cohortsync.cohorts', '');
SELECT pg_catalog.pg_extension_config_dump('cohortsync.members', '');
SELECT pg_catalog.pg_extension_config_dump('cohortsync.membership_changes', '');
SELECT pg_catalog.pg_extension_config_dump('cohortsync.membership_changes_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('cohortsync.sync_sessions', '');
SELECT pg_catalog.pg_extension_config_dump('cohortsync.sync_pages', '');
SELECT pg_catalog.pg_extension_config_dump('cohortsync.staged_members', '');

-------------------------------------------------------------------------------
-- HTTP listener (issue #4): the users Mixpanel's webhook authenticates as.
-- See docs/http-listener.md.
-------------------------------------------------------------------------------
CREATE TABLE cohortsync.webhook_users (
    username      text        PRIMARY KEY
                              CHECK (username <> '' AND strpos(username, ':') = 0),
    -- a SCRAM-SHA-256 verifier, as PostgreSQL stores role passwords; never the password
    password_hash text        NOT NULL CHECK (password_hash LIKE 'SCRAM-SHA-256$%'),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE cohortsync.webhook_users IS
    'Basic authentication users of the webhook listener, with salted password hashes.';
REVOKE ALL ON cohortsync.webhook_users FROM PUBLIC;

-- Creates the user or replaces its password. log_min_error_statement = panic keeps a
-- failed call's statement, which holds the password, out of the server log.
CREATE FUNCTION cohortsync.add_webhook_user(username text, password text)
RETURNS void
AS 'MODULE_PATHNAME', 'cohortsync_add_webhook_user'
LANGUAGE C STRICT VOLATILE
SET log_min_error_statement = panic;
COMMENT ON FUNCTION cohortsync.add_webhook_user(text, text) IS
    'Create a webhook user, or set its password; stores a SCRAM-SHA-256 hash of it.';

CREATE FUNCTION cohortsync.drop_webhook_user(username text)
RETURNS void
LANGUAGE plpgsql STRICT VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM cohortsync.webhook_users AS u WHERE u.username = drop_webhook_user.username;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'webhook user "%" does not exist', drop_webhook_user.username
            USING ERRCODE = 'undefined_object',
                  HINT = 'SELECT username FROM cohortsync.webhook_users lists them.';
    END IF;
END
$$;
COMMENT ON FUNCTION cohortsync.drop_webhook_user(text) IS
    'Remove a webhook user; an error if there is none of that name.';

REVOKE ALL ON FUNCTION cohortsync.add_webhook_user(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync.drop_webhook_user(text) FROM PUBLIC;

SELECT pg_catalog.pg_extension_config_dump('cohortsync.webhook_users', '');

-------------------------------------------------------------------------------
-- Delivery to CleverTap (issue #3).
--
-- Every change recorded in membership_changes becomes, in the same transaction,
-- rows in cohortsync.outbox for every connected destination: an event record and,
-- usually, a profile record, already in the shape CleverTap's POST /1/upload takes.
-- The background worker (src/delivery_worker.c) claims them in batches, sends them
-- and records the outcome. See docs/delivery.md.
-------------------------------------------------------------------------------
-------------------------------------------------------------------------------

-- One row per connected CleverTap account. Disconnecting deletes the row and
-- everything queued for it; pausing keeps queueing but sends nothing.
CREATE TABLE cohortsync.destinations (
    name              text        PRIMARY KEY CHECK (name <> ''),
    account_id        text        NOT NULL CHECK (account_id <> ''),
    region            text        NOT NULL
                                  CHECK (region IN ('eu1', 'in1', 'sg1', 'us1', 'aps3', 'mec1')),
    api_url           text        CHECK (api_url ~ '^https?://[^/]'),  -- replaces https://<host>
    identity_property text        NOT NULL DEFAULT '$CleverTap_user_id' CHECK (identity_property <> ''),
    event_name        text        NOT NULL DEFAULT 'Partner Sync' CHECK (event_name <> ''),
    cohorts_property  text        DEFAULT 'Mixpanel Cohorts' CHECK (cohorts_property <> ''),  -- NULL: off
    state             text        NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'paused')),
    paused_reason     text,
    paused_at         timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE cohortsync.destinations IS
    'Connected CleverTap accounts and what is sent to them; the passcode is kept apart in destination_secrets.';

-- Passcodes, apart from everything else so that no view, join or grant on
-- destinations can reach them. Only the extension's owner can read this table:
-- nothing is granted on it, and the worker reads it as the bootstrap superuser.
CREATE TABLE cohortsync.destination_secrets (
    name      text PRIMARY KEY REFERENCES cohortsync.destinations ON DELETE CASCADE ON UPDATE CASCADE,
    passcode  text NOT NULL
);
REVOKE ALL ON cohortsync.destination_secrets FROM PUBLIC;
COMMENT ON TABLE cohortsync.destination_secrets IS
    'CleverTap passcodes; readable by the extension owner only. pg_dump includes it (see docs/delivery.md).';

-- The records waiting to be sent. Rows are deleted once CleverTap has accepted
-- them, or moved to failed_records when it refused them or they grew too old.
--
-- No foreign keys and no row-level triggers: a full sync inserts up to twenty
-- million rows here in one statement, and a per-row check would multiply its cost.
CREATE TABLE cohortsync.outbox (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    destination     text        NOT NULL,
    identity        text        NOT NULL,       -- the record's "identity"; per-identity order key
    record          jsonb       NOT NULL,       -- exactly what goes into "d"
    change_id       bigint,                     -- membership_changes.id it was built from;
                                                -- NULL for a profile update (fields changed)
    phone_dropped   boolean     NOT NULL DEFAULT false,  -- the member's phone was not E.164
    created_at      timestamptz NOT NULL DEFAULT now(),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    lease_until     timestamptz,                -- set while a request carrying it is in flight
    leased_by       integer,                    -- pid of the worker holding the lease
    last_error      text
);
-- claiming takes the oldest rows of one destination
CREATE INDEX outbox_claim_idx ON cohortsync.outbox (destination, id);
-- per-identity ordering: is an older row of this identity still waiting or in flight?
CREATE INDEX outbox_identity_idx ON cohortsync.outbox (destination, identity, id);
-- when is the next retry due? Only retried rows can be due later (new rows are
-- due at once), so only they are indexed: a full sync does not pay for it.
CREATE INDEX outbox_retry_idx ON cohortsync.outbox (next_attempt_at) WHERE attempts > 0;
COMMENT ON TABLE cohortsync.outbox IS
    'CleverTap upload records waiting to be sent, one per record, in creation order of id.';

-- Records CleverTap refused, or that could not be delivered before
-- cohortsync.max_retry_age. cohortsync.replay_failed() queues them again.
CREATE TABLE cohortsync.failed_records (
    id           bigint      PRIMARY KEY,       -- the outbox id it had
    destination  text        NOT NULL,
    identity     text        NOT NULL,
    record       jsonb       NOT NULL,
    change_id    bigint,
    created_at   timestamptz NOT NULL,
    failed_at    timestamptz NOT NULL DEFAULT now(),
    attempts     integer     NOT NULL,
    code         integer,                       -- CleverTap's record code (e.g. 516), or HTTP 400
    message      text        NOT NULL
);
CREATE INDEX failed_records_destination_idx ON cohortsync.failed_records (destination, id);
COMMENT ON TABLE cohortsync.failed_records IS
    'Records CleverTap refused (code, message) or that expired; replay with cohortsync.replay_failed().';

-- Counters kept by the worker in its outcome transactions (never by ingest, so
-- concurrent ingest transactions never queue on one row).
CREATE TABLE cohortsync.destination_stats (
    destination      text        PRIMARY KEY,
    requests         bigint      NOT NULL DEFAULT 0,
    delivered        bigint      NOT NULL DEFAULT 0,
    failed           bigint      NOT NULL DEFAULT 0,
    phones_dropped   bigint      NOT NULL DEFAULT 0,
    last_success_at  timestamptz,
    last_error       text,
    last_error_at    timestamptz
);
COMMENT ON TABLE cohortsync.destination_stats IS
    'Per-destination delivery counters and the last success and error.';

-------------------------------------------------------------------------------
-- Destination management. SECURITY DEFINER so that the owner can grant them
-- without granting the tables; log_min_error_statement is raised inside the
-- functions that take a passcode so that a failing call does not write the
-- statement (and with it the passcode) to the server log.
-------------------------------------------------------------------------------
CREATE FUNCTION cohortsync._clevertap_base_url(region text, api_url text)
RETURNS text LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(rtrim(api_url, '/'),
                    'https://' || CASE region WHEN 'eu1' THEN 'api.clevertap.com'
                                              ELSE region || '.api.clevertap.com' END)
$$;

CREATE FUNCTION cohortsync._check_region(region text)
RETURNS void LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF region IS NULL OR region NOT IN ('eu1', 'in1', 'sg1', 'us1', 'aps3', 'mec1') THEN
        RAISE EXCEPTION 'unknown CleverTap region "%"', region
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'The region is one of eu1, in1, sg1, us1, aps3, mec1: the first label '
                         'of your CleverTap dashboard''s host name.';
    END IF;
END
$$;

CREATE FUNCTION cohortsync.connect_clevertap(name text, account_id text, passcode text,
                                             region text, api_url text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET log_min_error_statement = panic
AS $$
BEGIN
    IF name IS NULL OR name = '' THEN
        RAISE EXCEPTION 'a destination needs a name' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF account_id IS NULL OR account_id = '' THEN
        RAISE EXCEPTION 'a CleverTap destination needs an account id'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF passcode IS NULL OR passcode = '' THEN
        RAISE EXCEPTION 'a CleverTap destination needs a passcode'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM cohortsync._check_region(region);
    IF api_url IS NOT NULL AND api_url !~ '^https?://[^/]' THEN
        RAISE EXCEPTION 'api_url must start with https:// or http://'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT FROM cohortsync.destinations d WHERE d.name = connect_clevertap.name) THEN
        RAISE EXCEPTION 'destination "%" already exists', name
            USING ERRCODE = 'duplicate_object',
                  HINT = 'Use cohortsync.set_clevertap_passcode() to change its passcode.';
    END IF;
    INSERT INTO cohortsync.destinations (name, account_id, region, api_url)
        VALUES (name, account_id, region, api_url);
    INSERT INTO cohortsync.destination_secrets (name, passcode) VALUES (name, passcode);
    INSERT INTO cohortsync.destination_stats (destination) VALUES (name)
        ON CONFLICT (destination) DO NOTHING;
END
$$;
COMMENT ON FUNCTION cohortsync.connect_clevertap(text, text, text, text, text) IS
    'Connect a CleverTap account: changes recorded from now on are delivered to it.';

CREATE FUNCTION cohortsync.disconnect_clevertap(name text)
RETURNS void LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM cohortsync.destinations d WHERE d.name = disconnect_clevertap.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'destination "%" does not exist', name USING ERRCODE = 'undefined_object';
    END IF;
    DELETE FROM cohortsync.outbox o WHERE o.destination = disconnect_clevertap.name;
    DELETE FROM cohortsync.failed_records f WHERE f.destination = disconnect_clevertap.name;
    DELETE FROM cohortsync.destination_stats s WHERE s.destination = disconnect_clevertap.name;
END
$$;
COMMENT ON FUNCTION cohortsync.disconnect_clevertap(text) IS
    'Disconnect a destination and forget everything queued or failed for it.';

CREATE FUNCTION cohortsync.set_clevertap_passcode(name text, passcode text)
RETURNS void LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET log_min_error_statement = panic
AS $$
BEGIN
    IF passcode IS NULL OR passcode = '' THEN
        RAISE EXCEPTION 'a CleverTap destination needs a passcode'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    UPDATE cohortsync.destination_secrets s SET passcode = set_clevertap_passcode.passcode
     WHERE s.name = set_clevertap_passcode.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'destination "%" does not exist', name USING ERRCODE = 'undefined_object';
    END IF;
END
$$;
COMMENT ON FUNCTION cohortsync.set_clevertap_passcode(text, text) IS
    'Change the passcode of a destination (it stays paused if it was: resume it).';

CREATE FUNCTION cohortsync.pause_destination(name text, reason text DEFAULT 'paused by user')
RETURNS void LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE cohortsync.destinations d
       SET state = 'paused', paused_reason = coalesce(reason, 'paused by user'), paused_at = now()
     WHERE d.name = pause_destination.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'destination "%" does not exist', name USING ERRCODE = 'undefined_object';
    END IF;
END
$$;
COMMENT ON FUNCTION cohortsync.pause_destination(text, text) IS
    'Stop sending to a destination; its changes keep being queued.';

CREATE FUNCTION cohortsync.resume_destination(name text)
RETURNS void LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE cohortsync.destinations d SET state = 'active', paused_reason = NULL, paused_at = NULL
     WHERE d.name = resume_destination.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'destination "%" does not exist', name USING ERRCODE = 'undefined_object';
    END IF;
    -- what was backing off is due now
    UPDATE cohortsync.outbox o SET next_attempt_at = now()
     WHERE o.destination = resume_destination.name AND o.next_attempt_at > now();
    PERFORM cohortsync._wake_delivery();
END
$$;
COMMENT ON FUNCTION cohortsync.resume_destination(text) IS
    'Resume sending to a paused destination, from the oldest queued record.';

-- Queue failed records again, in their original order, for one destination or all.
CREATE FUNCTION cohortsync.replay_failed(destination text DEFAULT NULL)
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
        PERFORM cohortsync._wake_delivery();
    END IF;
    RETURN n;
END
$$;
COMMENT ON FUNCTION cohortsync.replay_failed(text) IS
    'Move failed records back into the outbox (all destinations when NULL); returns how many.';

-------------------------------------------------------------------------------
-- The outbox trigger: one statement-level trigger, one INSERT ... SELECT for
-- all the changes of the statement and all destinations.
-------------------------------------------------------------------------------

-- Set the delivery worker's latch when the current transaction commits. A no-op
-- when the library is not in shared_preload_libraries (there is no worker).
CREATE FUNCTION cohortsync._wake_delivery()
RETURNS void
AS 'MODULE_PATHNAME', 'cohortsync_wake_delivery'
LANGUAGE C VOLATILE;

-- The rules both queuing triggers apply, in one place. Plain SQL functions without
-- SET clauses, so the planner inlines them into the set-based INSERTs: no call per row.

-- CleverTap identity: the destination's identity property (default $CleverTap_user_id),
-- else mixpanel_distinct_id, else the stored distinct_id.
CREATE FUNCTION cohortsync._clevertap_identity(properties jsonb, identity_property text,
                                               distinct_id text)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT coalesce(nullif(properties ->> identity_property, ''),
                    nullif(properties ->> 'mixpanel_distinct_id', ''),
                    distinct_id)
$$;

-- A phone with spaces, dashes, dots and brackets removed (NULL when nothing is left).
CREATE FUNCTION cohortsync._normalize_phone(phone text)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT nullif(pg_catalog.regexp_replace(phone, '[[:space:]().\[\]-]', '', 'g'), '')
$$;

-- Whether a normalised phone is E.164, the only form CleverTap accepts (else 516).
CREATE FUNCTION cohortsync._is_e164(phone text)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT coalesce(phone ~ '^\+[1-9][0-9]{6,14}$', false)
$$;

-- The profile's Email, Phone and Name; empty values are left out. phone is sent as
-- given: pass NULL for one that is not E.164.
CREATE FUNCTION cohortsync._profile_fields(email text, phone text, first_name text,
                                           last_name text)
RETURNS jsonb LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
               'Email', nullif(email, ''),
               'Phone', phone,
               'Name', nullif(pg_catalog.concat_ws(' ', nullif(first_name, ''),
                                                        nullif(last_name, '')), '')))
$$;

REVOKE ALL ON FUNCTION cohortsync._clevertap_identity(jsonb, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync._normalize_phone(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync._is_e164(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync._profile_fields(text, text, text, text) FROM PUBLIC;

CREATE FUNCTION cohortsync._queue_changes()
RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    -- Within one statement every (cohort, member) changes once, so the records
    -- of one identity made here commute; no ORDER BY (it would sort millions).
    --
    -- The subquery x computes both records of a (change, destination) once;
    -- OFFSET 0 keeps the planner from pulling it up into the VALUES list, which
    -- would evaluate its expressions once per reference.
    INSERT INTO cohortsync.outbox (destination, identity, record, change_id, phone_dropped)
    SELECT x.destination, x.identity, r.record, x.change_id, r.phone_dropped
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

CREATE TRIGGER queue_changes
    AFTER INSERT ON cohortsync.membership_changes
    REFERENCING NEW TABLE AS new_changes
    FOR EACH STATEMENT EXECUTE FUNCTION cohortsync._queue_changes();

-- A member's Email, Phone or Name changed without a membership change (a re-add
-- or a full sync refreshed the stored fields): send a profile update with the
-- current values. No event: nothing joined or left. Statement-level, like the
-- change trigger; one UPDATE touches one cohort, so each member appears once.
CREATE FUNCTION cohortsync._queue_profile_updates()
RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    INSERT INTO cohortsync.outbox (destination, identity, record, change_id, phone_dropped)
    SELECT d.name, m.identity,
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

CREATE TRIGGER queue_profile_updates
    AFTER UPDATE ON cohortsync.members
    REFERENCING OLD TABLE AS old_members NEW TABLE AS new_members
    FOR EACH STATEMENT EXECUTE FUNCTION cohortsync._queue_profile_updates();

-------------------------------------------------------------------------------
-- The worker's statements. Kept in SQL so that they are tested by pgTAP and,
-- after DROP EXTENSION, fail as one ordinary error the worker catches.
-------------------------------------------------------------------------------

-- Leases of a predecessor that died are void: there is only one worker.
CREATE FUNCTION cohortsync._release_leases()
RETURNS bigint LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH r AS (UPDATE cohortsync.outbox SET lease_until = NULL, leased_by = NULL
                WHERE lease_until IS NOT NULL RETURNING 1)
    SELECT count(*) FROM r
$$;

-- Claim up to p_limit due records of one destination, oldest first, and lease
-- them for p_lease. A record is claimed only when no other record of its
-- identity is in flight and no older record of its identity is left, except
-- those of the same change (its event and profile, which commute). So no two
-- requests in flight carry one identity, an identity's changes go out one
-- request after the other in the order they were made, and a record retried
-- alone (CleverTap's 555) can never be overtaken by a later change of its user.
-- (A profile update without a change, change_id NULL, counts as a change of its own.)
--
-- The plan must walk outbox_claim_idx in id order and stop after p_limit rows,
-- probing outbox_identity_idx per candidate: then a claim costs the same with a
-- thousand queued rows or twenty million. A queue's statistics are always stale
-- (a full sync inserts millions between two ANALYZEs), and with stale ones the
-- planner prefers hashing and sorting the whole queue; the SET clauses below take
-- those plans off the menu, as membership.c does for the full-sync swap.
CREATE FUNCTION cohortsync._claim(p_destination text, p_limit integer, p_lease interval)
RETURNS TABLE (id bigint, record text) LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
SET enable_sort = off
SET enable_hashjoin = off
SET enable_mergejoin = off
SET enable_bitmapscan = off
SET enable_seqscan = off
SET jit = off               -- the disabled nodes' costs would otherwise trigger JIT
AS $$
    WITH picked AS (
        SELECT o.id
          FROM cohortsync.outbox o
         WHERE o.destination = p_destination
           AND (o.lease_until IS NULL OR o.lease_until < now())
           AND o.next_attempt_at <= now()
           AND NOT EXISTS (
                SELECT FROM cohortsync.outbox b
                 WHERE b.destination = o.destination AND b.identity = o.identity
                   AND b.id <> o.id
                   AND (b.lease_until >= now()
                        OR (b.id < o.id
                            AND (b.next_attempt_at > now()
                                 OR coalesce(b.change_id, -b.id) <> coalesce(o.change_id, -o.id))))
                OFFSET 0)           -- a probe per candidate, never a join over the queue
         ORDER BY o.destination, o.id   -- = id order; walks outbox_claim_idx, not the pkey
                                        -- (which would wade through other destinations' rows)
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED),
    -- The picked ids as an array, not a join: with the outbox's statistics saying it
    -- is empty (autovacuum analyzed it right after a drain), a join back to the
    -- outbox could be planned as a loop over the whole queue per claimed row
    -- (measured: 28.7 s for one claim of 1000 on a 100,000-record queue). An
    -- array is one primary-key probe per id, whatever the statistics say.
    leased AS (
        UPDATE cohortsync.outbox o
           SET lease_until = now() + p_lease, leased_by = pg_backend_pid()
         WHERE o.id = ANY (ARRAY(SELECT picked.id FROM picked))
        RETURNING o.id, o.record::text AS record)
    SELECT leased.id, leased.record FROM leased ORDER BY leased.id
$$;

-- Seconds until the next record that waits for a retry is due (NULL: none).
CREATE FUNCTION cohortsync._next_due()
RETURNS double precision LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT extract(epoch FROM min(o.next_attempt_at) - now())::double precision
      FROM cohortsync.outbox o
     WHERE o.attempts > 0 AND o.next_attempt_at > now()
$$;

-- Record what became of one request carrying the records p_ids, in one
-- transaction. p_http is the HTTP status (0: no answer; p_error says why),
-- p_body the answer. p_rest are the records of the same claim still waiting to
-- be sent after this request (a batch split after a 400); their lease is
-- extended, or released with p_ids when the destination must wait.
--
-- Returns what the worker does next:
--   'done'   the records are settled; send the rest, if any
--   'split'  a 400 on several records: send them in halves to isolate the bad ones
--   'retry'  p_ids and p_rest wait for a retry (backoff), or the destination paused
CREATE FUNCTION cohortsync._record_outcome(p_destination text, p_ids bigint[], p_http integer,
                                           p_body text, p_error text, p_retry_age interval,
                                           p_lease interval, p_rest bigint[] DEFAULT '{}')
RETURNS text LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
-- Every statement below reaches outbox rows by id = ANY (...). With stale statistics
-- (an outbox analyzed while empty) a sequential scan of the whole queue looked
-- cheapest: 200 ms per request on a 20,000-record queue. The primary key always wins.
SET enable_seqscan = off
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
                DELETE FROM cohortsync.outbox o
                 WHERE o.id = ANY (v_failed) AND o.destination = p_destination
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
                   AND o.destination = p_destination
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

-------------------------------------------------------------------------------
-- Observability.
-------------------------------------------------------------------------------
CREATE VIEW cohortsync.destination_status AS
SELECT d.name,
       d.state,
       d.paused_reason                         AS state_reason,
       d.paused_at,
       coalesce(o.pending, 0)                  AS pending,
       coalesce(o.in_flight, 0)                AS in_flight,
       coalesce(s.delivered, 0)                AS delivered,
       (SELECT count(*) FROM cohortsync.failed_records f
         WHERE f.destination = d.name)         AS failed,
       now() - o.oldest                        AS oldest_pending_age,
       s.last_success_at,
       s.last_error,
       s.last_error_at,
       coalesce(s.phones_dropped, 0)           AS phones_dropped,
       coalesce(s.requests, 0)                 AS requests
  FROM cohortsync.destinations d
  LEFT JOIN cohortsync.destination_stats s ON s.destination = d.name
  LEFT JOIN LATERAL (
        SELECT count(*) FILTER (WHERE x.lease_until IS NULL OR x.lease_until < now()) AS pending,
               count(*) FILTER (WHERE x.lease_until >= now())                         AS in_flight,
               min(x.created_at)                                                      AS oldest
          FROM cohortsync.outbox x WHERE x.destination = d.name) o ON true;
COMMENT ON VIEW cohortsync.destination_status IS
    'One row per destination: state and why, pending, in flight, delivered, failed, oldest pending age, last success and error.';

REVOKE ALL ON FUNCTION cohortsync.connect_clevertap(text, text, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync.disconnect_clevertap(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync.set_clevertap_passcode(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync.pause_destination(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync.resume_destination(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync.replay_failed(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync._clevertap_base_url(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync._check_region(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync._wake_delivery() FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync._queue_changes() FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync._queue_profile_updates() FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync._release_leases() FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync._claim(text, integer, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync._next_due() FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync._record_outcome(text, bigint[], integer, text, text, interval, interval, bigint[]) FROM PUBLIC;

-- Destinations, their passcodes (a restore without them could not deliver; a
-- dump of this extension already holds personal data and must be guarded
-- anyway), the queue and the failed records are dumped. destination_stats are
-- counters and are not.
SELECT pg_catalog.pg_extension_config_dump('cohortsync.destinations', '');
SELECT pg_catalog.pg_extension_config_dump('cohortsync.destination_secrets', '');
SELECT pg_catalog.pg_extension_config_dump('cohortsync.outbox', '');
SELECT pg_catalog.pg_extension_config_dump('cohortsync.outbox_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('cohortsync.failed_records', '');
