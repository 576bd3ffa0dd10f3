-- Objects for bench/soak.sh. Variables: :ct_url, :mp_url, :bz_url (the stand-ins),
-- :secret (the secret every stand-in accepts).
SET client_min_messages = warning;
CREATE SCHEMA bench;
GRANT USAGE ON SCHEMA bench TO PUBLIC;

-- One destination of each kind, each at its stand-in.
BEGIN;
SET LOCAL log_statement = 'none';
SELECT cohortsync.connect_clevertap('soak-clevertap', 'SOAK-ACC', :'secret', 'eu1', :'ct_url');
SELECT cohortsync.connect_mparticle('soak-mparticle', 'SOAK-ACC', :'secret', 'us1', :'mp_url');
SELECT cohortsync.connect_braze('soak-braze', :'secret', 'US-01', :'bz_url');
COMMIT;

-- What the outbox received, per destination: one row per inserting statement (no row is
-- updated, so concurrent ingests never wait on each other here). The worker deletes
-- outbox rows and truncates the outbox when drained, so its size says nothing of this.
CREATE TABLE bench.queued (destination text NOT NULL, n bigint NOT NULL);
GRANT INSERT ON bench.queued TO PUBLIC;
CREATE FUNCTION bench.count_queued() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench.queued SELECT destination, count(*) FROM new_rows GROUP BY destination;
    RETURN NULL;
END $$;
CREATE TRIGGER soak_count_queued AFTER INSERT ON cohortsync.outbox
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION bench.count_queued();

-- Pages the drivers sent and the ones ingest refused (with why).
CREATE TABLE bench.pages (driver int, action text, members int, status text, error text);

-- One ingest driver: until stop_at (epoch seconds), an add_members or remove_members page
-- of `page` random members (of `pool`, shared by all cohorts) for a random cohort among
-- those of this driver (cohort c belongs to driver c % drivers, so two drivers never
-- write one cohort at once), one transaction per page, `pause` seconds between pages.
CREATE PROCEDURE bench.drive(driver int, drivers int, cohorts int, page int, pool int,
                             pause float8, stop_at float8)
LANGUAGE plpgsql AS $$
DECLARE
    mine int := (cohorts - driver + drivers - 1) / drivers;
    seq int := 0;
    c int;
    act text;
    members jsonb;
    err text;
    answer jsonb;
BEGIN
    WHILE extract(epoch FROM clock_timestamp()) < stop_at LOOP
        seq := seq + 1;
        c := driver + drivers * floor(random() * mine)::int;
        act := CASE WHEN random() < 0.55 THEN 'add_members' ELSE 'remove_members' END;
        SELECT jsonb_agg(jsonb_build_object('mixpanel_distinct_id', id, 'email', id || '@example.com',
                                            'first_name', 'Soak', 'last_name', id))
          INTO members
          FROM (SELECT DISTINCT 'm' || floor(random() * pool)::int AS id
                  FROM generate_series(1, page)) m;
        err := NULL;
        answer := NULL;
        BEGIN
            answer := cohortsync.ingest(jsonb_build_object(
                'action', act,
                'parameters', jsonb_build_object(
                    'mixpanel_project_id', 1001, 'mixpanel_cohort_id', 'soak-' || c,
                    'mixpanel_cohort_name', 'Soak cohort ' || c,
                    'mixpanel_session_id', 'soak-' || driver || '-' || seq,
                    'page_info', jsonb_build_object('total_pages', 1, 'page_count', 1),
                    'members', members)));
        EXCEPTION WHEN OTHERS THEN
            err := SQLERRM;
        END;
        INSERT INTO bench.pages
            VALUES (driver, act, jsonb_array_length(members), answer ->> 'status', err);
        COMMIT;
        PERFORM pg_sleep(pause);
    END LOOP;
END $$;

-- What each record should say, one line per change: identity, cohort name, added.
CREATE VIEW bench.expected AS
SELECT mc.distinct_id, c.name, mc.change = 'added' AS added
  FROM cohortsync.membership_changes mc
  JOIN cohortsync.cohorts c USING (project_id, cohort_id);
