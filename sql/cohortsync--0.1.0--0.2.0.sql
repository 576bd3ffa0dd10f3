-- cohortsync 0.1.0 -> 0.2.0
--
-- 0.1.0 is the base script; CREATE EXTENSION cohortsync installs it and then runs
-- this file, so a fresh install and an upgraded one are built by the same
-- statements. Every change after 0.1.0 goes here (never into the 0.1.0 script).
\echo Use "ALTER EXTENSION cohortsync UPDATE TO '0.2.0'" to load this file. \quit

-------------------------------------------------------------------------------
-- Strand C (issue #6, security): the two supported roles besides the owner.
--
-- Roles are cluster-wide objects, so the extension creates none (a script that
-- did would fail or take over a role of that name in another database). The
-- owner creates the roles it wants and calls one of these to give it exactly
-- the rights of its kind; README.md, "Roles", lists the GRANTs they make.
-- Both can be called again after ALTER EXTENSION UPDATE: a later version that
-- adds a table a reader should see grants it there.
-------------------------------------------------------------------------------

-- A role that may only ingest pages (Mixpanel's webhook, a proxy in front of
-- it): cohortsync.ingest is SECURITY DEFINER, so it needs nothing else, and
-- can read nothing.
CREATE FUNCTION cohortsync.grant_ingest(role regrole)
RETURNS void LANGUAGE plpgsql STRICT VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM cohortsync._check_grantee(role);
    -- regrole's text form is the quoted role name
    EXECUTE format('GRANT USAGE ON SCHEMA cohortsync TO %s', role::text);
    EXECUTE format('GRANT EXECUTE ON FUNCTION cohortsync.ingest(jsonb) TO %s', role::text);
END
$$;
COMMENT ON FUNCTION cohortsync.grant_ingest(regrole) IS
    'Let a role call cohortsync.ingest(jsonb), and nothing else.';

-- A role that may read membership: the cohorts, their members, the history,
-- the sync sessions and pages (and members staged by unfinished full syncs),
-- and the state of delivery through destination_status. Never the passcodes
-- (destination_secrets), the webhook users' password verifiers, the
-- destinations' account ids, or the records queued for or refused by CleverTap
-- (outbox, failed_records: delivery's working data, the owner's to replay or
-- delete). It may call no function and write nothing.
CREATE FUNCTION cohortsync.grant_read(role regrole)
RETURNS void LANGUAGE plpgsql STRICT VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM cohortsync._check_grantee(role);
    EXECUTE format('GRANT USAGE ON SCHEMA cohortsync TO %s', role::text);
    EXECUTE format('GRANT SELECT ON cohortsync.cohorts, cohortsync.members, '
                   'cohortsync.membership_changes, cohortsync.sync_sessions, '
                   'cohortsync.sync_pages, cohortsync.staged_members, '
                   'cohortsync.destination_status TO %s', role::text);
END
$$;
COMMENT ON FUNCTION cohortsync.grant_read(regrole) IS
    'Let a role read membership, history, sync state and destination_status; nothing secret, no writes.';

-- Take back whatever was granted to a role on the extension's objects (by the
-- two functions above or by hand), so that the role can be dropped.
CREATE FUNCTION cohortsync.revoke_access(role regrole)
RETURNS void LANGUAGE plpgsql STRICT VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM cohortsync._check_grantee(role);
    EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA cohortsync FROM %s', role::text);
    EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA cohortsync FROM %s', role::text);
    EXECUTE format('REVOKE ALL ON ALL FUNCTIONS IN SCHEMA cohortsync FROM %s', role::text);
    EXECUTE format('REVOKE ALL ON SCHEMA cohortsync FROM %s', role::text);
END
$$;
COMMENT ON FUNCTION cohortsync.revoke_access(regrole) IS
    'Revoke every privilege a role holds on the extension''s schema, tables, views and functions.';

-- The owner keeps its rights whatever it calls; a superuser needs none.
CREATE FUNCTION cohortsync._check_grantee(role regrole)
RETURNS void LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF role::oid = 0 THEN
        RAISE EXCEPTION 'a role is needed' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF role = (SELECT e.extowner FROM pg_extension e WHERE e.extname = 'cohortsync') THEN
        RAISE EXCEPTION 'role % owns the extension', role
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'The owner has every right on its objects already; granting or revoking them would change nothing or break the extension.';
    END IF;
    IF (SELECT r.rolsuper FROM pg_roles r WHERE r.oid = role) THEN
        RAISE EXCEPTION 'role % is a superuser', role
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A superuser bypasses every privilege check; use a role without SUPERUSER.';
    END IF;
END
$$;

REVOKE ALL ON FUNCTION cohortsync.grant_ingest(regrole) FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync.grant_read(regrole) FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync.revoke_access(regrole) FROM PUBLIC;
REVOKE ALL ON FUNCTION cohortsync._check_grantee(regrole) FROM PUBLIC;

-- Strand C (issue #6, security): a passcode sent over plain HTTP.
-- connect_clevertap accepts an http:// api_url (a local stand-in, a proxy on the
-- same host), but the passcode then crosses the network in clear text: warn
-- unless the host is the loopback interface. Otherwise as in 0.1.0.
CREATE OR REPLACE FUNCTION cohortsync.connect_clevertap(name text, account_id text, passcode text,
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
    IF api_url ~* '^http://'
       AND api_url !~* '^http://(localhost|127\.[0-9]+\.[0-9]+\.[0-9]+|\[::1\])(:[0-9]+)?(/|$)' THEN
        RAISE WARNING 'destination "%" sends its passcode unencrypted', name
            USING DETAIL = format('api_url %s is plain HTTP to a host other than this one.', api_url),
                  HINT = 'Use https:// unless every network between here and that host is trusted.';
    END IF;
    INSERT INTO cohortsync.destinations (name, account_id, region, api_url)
        VALUES (name, account_id, region, api_url);
    INSERT INTO cohortsync.destination_secrets (name, passcode) VALUES (name, passcode);
    INSERT INTO cohortsync.destination_stats (destination) VALUES (name)
        ON CONFLICT (destination) DO NOTHING;
END
$$;
