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
    PRIMARY KEY (project_id, cohort_id, distinct_id),
    FOREIGN KEY (project_id, cohort_id) REFERENCES cohortsync.cohorts ON DELETE CASCADE
);
COMMENT ON TABLE cohortsync.members IS
    'Current members of every cohort; properties holds every field Mixpanel sent for the member.';

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
