-- The plain-SQL peer of cohortsync.ingest, for bench/ingest.sh: the same page handling
-- (cohort upsert, session and page bookkeeping, idempotent diffs, staging of full-sync
-- pages, change history) written in PL/pgSQL as well as we can, with
-- jsonb_to_recordset and set-based INSERT ... ON CONFLICT. Validation is reduced to
-- what the statements need; the C version validates everything first.
--
-- It does the same work as the C path, no more and no less: the same rows in the same
-- tables (cohort, session, page, staged rows, members, history, and through the
-- triggers the outbox), the same bookkeeping on a repeated page, a restarted session
-- (total_pages changed) and a superseding full sync, and the same de-duplication of a
-- page (the last occurrence of a member wins). Only the full-sync swap is left out: it
-- is the same SQL in both and is measured by part 2 of bench/ingest.sh.
CREATE SCHEMA IF NOT EXISTS bench;

CREATE OR REPLACE FUNCTION bench.ingest_sql(page jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    act      text := page ->> 'action';
    p        jsonb := page -> 'parameters';
    proj     text := p ->> 'mixpanel_project_id';
    coh      text := p ->> 'mixpanel_cohort_id';
    sess     text := p ->> 'mixpanel_session_id';
    pg_no    int := coalesce((p -> 'page_info' ->> 'page_count')::int, 1);
    pg_total int := coalesce((p -> 'page_info' ->> 'total_pages')::int, 1);
    st       text;
    old_total int;
    new_page boolean;
    complete boolean;
    n_added  bigint := 0;
    n_removed bigint := 0;
BEGIN
    IF act NOT IN ('members', 'add_members', 'remove_members') OR proj IS NULL OR coh IS NULL
       OR sess IS NULL OR jsonb_typeof(p -> 'members') IS DISTINCT FROM 'array' THEN
        RETURN jsonb_build_object('action', act, 'status', 'failure',
                                  'error', jsonb_build_object('message', 'bad page', 'code', 400));
    END IF;

    INSERT INTO cohortsync.cohorts AS c (project_id, cohort_id, name, description, last_session_id, last_sync_at)
    VALUES (proj, coh, p ->> 'mixpanel_cohort_name', p ->> 'mixpanel_cohort_description', sess, now())
    ON CONFLICT (project_id, cohort_id) DO UPDATE
       SET name = coalesce(EXCLUDED.name, c.name), description = coalesce(EXCLUDED.description, c.description),
           last_session_id = EXCLUDED.last_session_id, last_sync_at = EXCLUDED.last_sync_at;

    SELECT s.state, s.total_pages INTO st, old_total FROM cohortsync.sync_sessions s
     WHERE s.project_id = proj AND s.cohort_id = coh AND s.session_id = sess AND s.action = act;
    IF NOT FOUND THEN
        IF act = 'members' THEN
            -- a new full sync supersedes an unfinished one of the cohort
            WITH stale AS (
                UPDATE cohortsync.sync_sessions SET state = 'superseded', superseded_at = now()
                 WHERE project_id = proj AND cohort_id = coh AND action = 'members'
                   AND state = 'receiving' AND session_id <> sess
                RETURNING session_id)
            DELETE FROM cohortsync.staged_members s USING stale
             WHERE s.project_id = proj AND s.cohort_id = coh AND s.session_id = stale.session_id;
        END IF;
        INSERT INTO cohortsync.sync_sessions (project_id, cohort_id, session_id, action, total_pages)
        VALUES (proj, coh, sess, act, pg_total);
        st := 'receiving';
    ELSIF st = 'receiving' AND old_total <> pg_total THEN
        -- restarted with another snapshot: forget the old pages
        DELETE FROM cohortsync.sync_pages
         WHERE project_id = proj AND cohort_id = coh AND session_id = sess AND action = act;
        DELETE FROM cohortsync.staged_members
         WHERE project_id = proj AND cohort_id = coh AND session_id = sess AND act = 'members';
        UPDATE cohortsync.sync_sessions
           SET total_pages = pg_total, pages_received = 0, restarts = restarts + 1, state = 'receiving'
         WHERE project_id = proj AND cohort_id = coh AND session_id = sess AND action = act;
    END IF;

    INSERT INTO cohortsync.sync_pages (project_id, cohort_id, session_id, action, page_count, member_count)
    VALUES (proj, coh, sess, act, pg_no, jsonb_array_length(p -> 'members'))
    ON CONFLICT DO NOTHING;
    new_page := FOUND;
    IF NOT new_page THEN
        UPDATE cohortsync.sync_pages SET times_received = times_received + 1, last_received_at = now()
         WHERE project_id = proj AND cohort_id = coh AND session_id = sess AND action = act
           AND page_count = pg_no;
    END IF;
    UPDATE cohortsync.sync_sessions SET pages_received = pages_received + new_page::int, last_page_at = now()
     WHERE project_id = proj AND cohort_id = coh AND session_id = sess AND action = act
    RETURNING pages_received >= total_pages INTO complete;

    -- pages of a full sync that completed or was superseded change nothing more
    IF act = 'members' AND st <> 'receiving' THEN
        RETURN jsonb_build_object('action', act, 'status', 'success');
    END IF;

    IF act = 'members' THEN
        IF st = 'receiving' THEN
            -- a page that arrives again replaces what it staged before
            IF NOT new_page THEN
                DELETE FROM cohortsync.staged_members
                 WHERE project_id = proj AND cohort_id = coh AND session_id = sess AND page_count = pg_no;
            END IF;
            INSERT INTO cohortsync.staged_members
                   (project_id, cohort_id, session_id, page_count, distinct_id, email, phone, first_name, last_name, properties)
            SELECT DISTINCT ON (m.mixpanel_distinct_id)
                   proj, coh, sess, pg_no, m.mixpanel_distinct_id, m.email, m.phone_number, m.first_name, m.last_name, e.elem
              FROM jsonb_array_elements(p -> 'members') WITH ORDINALITY AS e(elem, ord),
                   jsonb_to_record(e.elem) AS m(mixpanel_distinct_id text, email text, phone_number text,
                                               first_name text, last_name text)
             ORDER BY m.mixpanel_distinct_id, e.ord DESC;
        END IF;
        -- (the swap itself is the same SQL in both versions and is measured separately)
    ELSIF act = 'add_members' THEN
        WITH page_rows AS (
            SELECT DISTINCT ON (m.mixpanel_distinct_id)
                   m.mixpanel_distinct_id AS distinct_id, m.email, m.phone_number AS phone,
                   m.first_name, m.last_name, e.elem AS properties
              FROM jsonb_array_elements(p -> 'members') WITH ORDINALITY AS e(elem, ord),
                   jsonb_to_record(e.elem) AS m(mixpanel_distinct_id text, email text, phone_number text,
                                               first_name text, last_name text)
             ORDER BY m.mixpanel_distinct_id, e.ord DESC),
        joined AS (
            INSERT INTO cohortsync.members AS mm
                   (project_id, cohort_id, distinct_id, email, phone, first_name, last_name, properties)
            SELECT proj, coh, r.* FROM page_rows r
            ON CONFLICT (project_id, cohort_id, distinct_id) DO UPDATE
               SET email = EXCLUDED.email, phone = EXCLUDED.phone, first_name = EXCLUDED.first_name,
                   last_name = EXCLUDED.last_name, properties = EXCLUDED.properties, updated_at = now()
             WHERE (mm.email, mm.phone, mm.first_name, mm.last_name, mm.properties)
                   IS DISTINCT FROM (EXCLUDED.email, EXCLUDED.phone, EXCLUDED.first_name, EXCLUDED.last_name, EXCLUDED.properties)
            RETURNING distinct_id, properties, xmax = 0 AS inserted)
        INSERT INTO cohortsync.membership_changes (project_id, cohort_id, distinct_id, change, session_id, properties)
        SELECT proj, coh, distinct_id, 'added', sess, properties FROM joined WHERE inserted;
        GET DIAGNOSTICS n_added = ROW_COUNT;
    ELSE
        WITH gone AS (
            DELETE FROM cohortsync.members m
             USING jsonb_array_elements(p -> 'members') AS e(elem)
             WHERE m.project_id = proj AND m.cohort_id = coh AND m.distinct_id = e.elem ->> 'mixpanel_distinct_id'
            RETURNING m.distinct_id, m.properties)
        INSERT INTO cohortsync.membership_changes (project_id, cohort_id, distinct_id, change, session_id, properties)
        SELECT proj, coh, distinct_id, 'removed', sess, properties FROM gone;
        GET DIAGNOSTICS n_removed = ROW_COUNT;
    END IF;

    UPDATE cohortsync.sync_sessions
       SET members_added = members_added + n_added, members_removed = members_removed + n_removed,
           state = CASE WHEN complete THEN 'completed' ELSE state END,
           completed_at = CASE WHEN complete THEN now() ELSE completed_at END
     WHERE project_id = proj AND cohort_id = coh AND session_id = sess AND action = act;
    IF n_added + n_removed > 0 THEN
        UPDATE cohortsync.cohorts SET member_count = member_count + n_added - n_removed, last_changed_at = now()
         WHERE project_id = proj AND cohort_id = coh;
    END IF;

    RETURN jsonb_build_object('action', act, 'status', 'success');
END
$$;
