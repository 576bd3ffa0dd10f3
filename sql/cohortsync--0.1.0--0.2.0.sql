-- cohortsync 0.1.0 -> 0.2.0: only what changed (sql/cohortsync.sql is the whole current schema).
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

-------------------------------------------------------------------------------
-- Strand E (issue #5, delivery speed): leases live in the worker's memory.
--
-- In 0.1.0 the worker leased every claimed record with a row UPDATE (a new heap
-- tuple and three index entries per record, ~50 us), and every claim walked past
-- the records already in flight. There is exactly one delivery worker, so it now
-- keeps what it has in flight in its own memory: a claim only reads, and walks
-- the queue from a cursor (the highest id it has claimed) so it starts after
-- what is in flight. A crash re-sends what was in flight, as before (at least
-- once). The old _claim (leasing rows) is kept for compatibility; the worker no
-- longer calls it.
-------------------------------------------------------------------------------

-- Walk up to p_limit records of one destination with id > p_after, oldest first,
-- and say of each whether it may be sent now (claimable). Records that may not
-- (blocked) come back with record NULL; the worker then knows that something
-- below its cursor is still waiting and scans the queue from the start again
-- once nothing of the destination is in flight.
--
-- A record is claimable when it is due and no older record of its identity is
-- left, except those of the same change (its event and profile commute) that
-- lie above p_after. Everything the worker has in flight has an id <= p_after
-- and is still in the table (a record leaves the queue only after CleverTap
-- answered for it), so an identity with a record in flight is never claimed
-- again, and an identity's changes go out one request after the other, in
-- order; a record waiting for a retry (e.g. 555) blocks its identity's later
-- records. The same-change exemption is denied at or below p_after because such
-- a record may be in flight: its partner then waits for the next request.
--
-- change_key: the change a record belongs to (its event and profile share it).
--
-- writers_busy: the claim's snapshot saw transactions in progress. Such a
-- transaction may hold ids below the cursor and commit later; the worker then
-- also scans from the start again before it trusts its cursor.
--
-- The plan must walk outbox_claim_idx in id order and stop after p_limit rows,
-- probing outbox_identity_idx per candidate (see _claim for why the SET clauses).
CREATE FUNCTION cohortsync._claim_due(p_destination text, p_limit integer, p_after bigint)
RETURNS TABLE (id bigint, record text, claimable boolean, writers_busy boolean, change_key bigint)
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
SET enable_sort = off
SET enable_hashjoin = off
SET enable_mergejoin = off
SET enable_bitmapscan = off
SET enable_seqscan = off
SET jit = off
AS $$
    SELECT w.id, CASE WHEN w.ok THEN w.record::text END, w.ok,
           EXISTS (SELECT FROM pg_snapshot_xip(pg_current_snapshot())), w.change_key
      FROM (SELECT o.id, o.record, coalesce(o.change_id, -o.id) AS change_key,
                   o.next_attempt_at <= now()
                   AND NOT EXISTS (
                        SELECT FROM cohortsync.outbox b
                         WHERE b.destination COLLATE "C" = o.destination
                           AND b.identity COLLATE "C" = o.identity
                           AND b.id < o.id
                           AND (b.id <= p_after
                                OR b.next_attempt_at > now()
                                OR coalesce(b.change_id, -b.id) <> coalesce(o.change_id, -o.id))
                        OFFSET 0) AS ok     -- a probe per candidate, never a join over the queue
              FROM cohortsync.outbox o
             WHERE o.destination = p_destination AND o.id > p_after
             ORDER BY o.destination, o.id
             LIMIT p_limit) w
$$;
REVOKE ALL ON FUNCTION cohortsync._claim_due(text, integer, bigint) FROM PUBLIC;

-- What the worker has in flight, per destination, as it publishes it in shared
-- memory (nothing when the library is not preloaded or no worker runs).
CREATE FUNCTION cohortsync._worker_in_flight()
RETURNS TABLE (destination text, records bigint)
AS 'MODULE_PATHNAME', 'cohortsync_worker_in_flight'
LANGUAGE C VOLATILE;
-- Executable by PUBLIC, the one exception: destination_status calls it with the
-- reader's rights (a view checks function privileges as the view's user), and a
-- role granted SELECT on the view by hand under 0.1.0 must keep reading it. It
-- shows no more than the view does (a count per destination name), and only to
-- roles that were given USAGE on the schema.

-- in_flight: the worker's published count, plus rows still leased the 0.1.0 way
-- (by _claim). Same columns, same order as 0.1.0.
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
       coalesce(s.requests, 0)                 AS requests
  FROM cohortsync.destinations d
  LEFT JOIN cohortsync.destination_stats s ON s.destination = d.name
  LEFT JOIN cohortsync._worker_in_flight() w ON w.destination = d.name
  LEFT JOIN LATERAL (
        SELECT count(*) FILTER (WHERE x.lease_until IS NULL OR x.lease_until < now()) AS pending,
               count(*) FILTER (WHERE x.lease_until >= now())                         AS in_flight,
               min(x.created_at)                                                      AS oldest
          FROM cohortsync.outbox x WHERE x.destination = d.name) o ON true;

-- The claim probes outbox_identity_idx once per record it walks, and with the
-- database's collation every comparison on the way down was a strcoll() call
-- (~10% of a claim). destination and identity are opaque keys compared for
-- equality only, like the ids of the ingest tables, so the index compares them
-- byte by byte now; the probes say COLLATE "C" to use it. (The columns keep
-- their type: destination_status depends on them, and ALTER COLUMN TYPE would
-- mean dropping the view and its grants.)
DROP INDEX cohortsync.outbox_identity_idx;
CREATE INDEX outbox_identity_idx
    ON cohortsync.outbox (destination COLLATE "C", identity COLLATE "C", id);

-- The 0.1.0 claim (leasing rows), unchanged but for the probe's collation.
CREATE OR REPLACE FUNCTION cohortsync._claim(p_destination text, p_limit integer, p_lease interval)
RETURNS TABLE (id bigint, record text) LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
SET enable_sort = off
SET enable_hashjoin = off
SET enable_mergejoin = off
SET enable_bitmapscan = off
SET enable_seqscan = off
SET jit = off
AS $$
    WITH picked AS (
        SELECT o.id
          FROM cohortsync.outbox o
         WHERE o.destination = p_destination
           AND (o.lease_until IS NULL OR o.lease_until < now())
           AND o.next_attempt_at <= now()
           AND NOT EXISTS (
                SELECT FROM cohortsync.outbox b
                 WHERE b.destination COLLATE "C" = o.destination
                   AND b.identity COLLATE "C" = o.identity
                   AND b.id <> o.id
                   AND (b.lease_until >= now()
                        OR (b.id < o.id
                            AND (b.next_attempt_at > now()
                                 OR coalesce(b.change_id, -b.id) <> coalesce(o.change_id, -o.id))))
                OFFSET 0)
         ORDER BY o.destination, o.id
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED),
    leased AS (
        UPDATE cohortsync.outbox o
           SET lease_until = now() + p_lease, leased_by = pg_backend_pid()
         WHERE o.id = ANY (ARRAY(SELECT picked.id FROM picked))
        RETURNING o.id, o.record::text AS record)
    SELECT leased.id, leased.record FROM leased ORDER BY leased.id
$$;


-------------------------------------------------------------------------------
-- Strand D (ingest speed): staged_members without the four-column unique key.
-------------------------------------------------------------------------------
-- Staging a full-sync page used to probe and then insert into a primary key over
-- (project_id, cohort_id, session_id, distinct_id) for every member: two descents
-- of an index over four text columns, over half of the cost of staging a page.
-- Staged rows now carry the page they came with, and a page is staged with a plain
-- INSERT: a page that arrives again first deletes the rows it staged before, and a
-- member sent in two pages of one session counts from the higher page (the swap
-- picks it). The index serves the page deletes and the swap's scan of one session.
-- It leads with session_id alone (Mixpanel's session ids are unique per sync; the
-- statements still check project and cohort): every staged row descends it, and
-- comparing one text column is markedly cheaper than three equal ones first. Its keys
-- are one per page, so deduplicated btree leaves stay small. Deleting a cohort finds
-- its staged rows by a scan; staging only holds unfinished full syncs.
-- Rows staged by 0.1.0 have no page (NULL); they are unique per member already.
ALTER TABLE cohortsync.staged_members ADD COLUMN page_count integer;
ALTER TABLE cohortsync.staged_members DROP CONSTRAINT staged_members_pkey;
CREATE INDEX staged_members_page_idx
    ON cohortsync.staged_members (session_id, page_count);
COMMENT ON COLUMN cohortsync.staged_members.page_count IS
    'The page of the session the member came with; NULL for rows staged by 0.1.0.';

-------------------------------------------------------------------------------
-- The outbox triggers, again: they return at once when no destination is
-- connected (building records for nobody was ~4 s of a 1M-member swap), and
-- they key an identity too long for a btree entry by its hash (below).
-------------------------------------------------------------------------------

-- outbox.identity is the per-identity order key, in outbox_identity_idx. An
-- identity is the member's identity property (e.g. $CleverTap_user_id), which
-- the page does not bound; one over ~2.7 kB cannot be an index entry, and the
-- whole page failed with an SQL error (a 500 Mixpanel retries for ever). Such
-- an identity is keyed by its SHA-256: the same identity always gets the same
-- key, so its order is kept. The record sent to CleverTap carries it whole.
CREATE FUNCTION cohortsync._identity_key(identity text)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN octet_length(identity) <= 1024 THEN identity
                ELSE 'sha256:' || encode(sha256(convert_to(identity, 'UTF8')), 'hex') END
$$;
REVOKE ALL ON FUNCTION cohortsync._identity_key(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION cohortsync._queue_changes()
RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    -- Nothing connected: nothing to queue. (The transition table has been
    -- filled anyway; this saves building the records, ~4 s of a 1M-member swap.)
    IF NOT EXISTS (SELECT FROM cohortsync.destinations) THEN
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
    -- Nothing connected: nothing to queue. (The transition table has been
    -- filled anyway; this saves building the records, ~4 s of a 1M-member swap.)
    IF NOT EXISTS (SELECT FROM cohortsync.destinations) THEN
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

COMMENT ON COLUMN cohortsync.outbox.identity IS
    'Per-identity order key: the record''s identity, or ''sha256:'' and its hash when longer than 1024 bytes.';
