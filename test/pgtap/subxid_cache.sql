-- Many add_members pages applied in one transaction (a script calling ingest for each
-- page, apply_pending() with many queued): every page is applied, and the backend's
-- cache of subtransaction ids is left room, so that it does not overflow (from then on
-- every other backend's snapshots would look this transaction's subtransactions up in
-- pg_subtrans). A page of new members takes a subtransaction only while half of that
-- cache (64 ids) is free; later pages take the probing statement, which needs none.
BEGIN;
SET client_min_messages = warning;
\ir 00_helpers.inc
SELECT plan(6);

SELECT is((SELECT count(*) FROM generate_series(1, 100) i
            WHERE pg_temp.ingest(pg_temp.page('add_members', 'sx' || i, 'sx', ARRAY['m' || i, 'n' || i])) = 'success'),
          100::bigint, '100 pages of new members applied in one transaction');
SELECT is((SELECT count(*) FROM cohortsync.members WHERE cohort_id LIKE 'sx%'), 200::bigint,
          'every member stored');
SELECT is((SELECT count(*) FROM cohortsync.membership_changes WHERE cohort_id LIKE 'sx%' AND change = 'added'),
          200::bigint, 'every member recorded once');
SELECT is((SELECT sum(member_count) FROM cohortsync.cohorts WHERE cohort_id LIKE 'sx%'), 200::numeric,
          'member counts');

-- Rows written in a subtransaction carry its id: one per page of new members before,
-- when 100 pages took 100 of them; now the first 32 pages, then the transaction's own.
SELECT cmp_ok((SELECT count(DISTINCT xmin::text) FROM cohortsync.members WHERE cohort_id LIKE 'sx%'),
              '<=', 33::bigint, 'at most half the cache of subtransaction ids (32) taken for 100 pages');

-- PostgreSQL 16 and later show whether a backend's cache overflowed.
CREATE FUNCTION pg_temp.subxids_overflowed() RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    o boolean;
BEGIN
    PERFORM pg_stat_clear_snapshot();
    EXECUTE 'SELECT s.subxact_overflowed
               FROM pg_stat_get_backend_idset() AS b(id), pg_stat_get_backend_subxact(b.id) AS s
              WHERE pg_stat_get_backend_pid(b.id) = pg_backend_pid()' INTO o;
    RETURN o;
END $$;
SELECT CASE WHEN current_setting('server_version_num')::int < 160000
            THEN skip('pg_stat_get_backend_subxact() is PostgreSQL 16 and later', 1)
            ELSE is(pg_temp.subxids_overflowed(), false, 'the cache of subtransaction ids did not overflow')
       END;

SELECT * FROM finish();
ROLLBACK;
