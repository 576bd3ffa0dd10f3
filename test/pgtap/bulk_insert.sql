-- A page of new members, and a staged page of a full sync, are written as COPY
-- writes (src/bulk_insert.c): one heap multi-insert per table. They must write
-- exactly what the INSERT statements they replace wrote, and leave tables a user
-- changed to those statements: their own triggers fire for every member, a BEFORE
-- ROW trigger's changes are kept.
BEGIN;
SET client_min_messages = warning;
\ir 00_helpers.inc
SELECT plan(24);

SELECT cohortsync.connect_clevertap('ct', 'ACC', 'cs-secret-bulk', 'eu1', 'http://127.0.0.1:9');
SELECT cohortsync.connect_mparticle('mp', 'KEY', 'cs-secret-bulk-mp');
SELECT cohortsync.connect_braze('bz', 'cs-secret-bulk-bz', 'eu-02');
SELECT cohortsync.pause_destination(name) FROM cohortsync.destinations;

-- What a cohort's page queued, comparable between cohorts: per history row (in id
-- order), its member, change and the records queued for it, the cohort's id masked.
CREATE FUNCTION pg_temp.queued(cohort text) RETURNS text[] LANGUAGE sql AS $$
  SELECT coalesce(array_agg(concat_ws(' ', c.change, c.distinct_id, x.destination, x.identity,
                                      x.phone_dropped, x.email_dropped,
                                      replace(x.record::text, cohort, '<cohort>'))
                            ORDER BY c.id, x.destination, x.record::text), '{}')
    FROM cohortsync.membership_changes c
    JOIN cohortsync.outbox x ON x.change_id = c.id
   WHERE c.cohort_id = cohort
$$;

CREATE FUNCTION pg_temp.members_page(cohort text, session text, ids text[]) RETURNS jsonb
LANGUAGE sql AS $$
  SELECT jsonb_set(pg_temp.page('add_members', cohort, session, ids),
                   '{parameters,members}',
                   (SELECT jsonb_agg(jsonb_build_object(
                       'mixpanel_distinct_id', id, 'email', id || '@example.com',
                       'phone_number', '+1 555 0100' || right(id, 3),
                       'first_name', 'F' || id, 'last_name', 'L' || id,
                       '$CleverTap_user_id', 'ct-' || id) ORDER BY id)
                      FROM unnest(ids) id))
$$;

-------------------------------------------------------------------------------
-- The fast path (no trigger but ours) against the statements (a user's trigger)
-------------------------------------------------------------------------------
SELECT is(pg_temp.ingest(pg_temp.members_page('bulk-fast', 's1', pg_temp.ids('m', 300))),
          'success', 'a page of new members, tables as installed');
SELECT is((SELECT count(*) FROM cohortsync.members WHERE cohort_id = 'bulk-fast'), 300::bigint,
          'every member is stored');
SELECT is((SELECT array_agg(distinct_id ORDER BY id) FROM cohortsync.membership_changes
            WHERE cohort_id = 'bulk-fast'), pg_temp.ids('m', 300),
          'their history rows, numbered in the page''s order');
SELECT ok((SELECT bool_and(joined_at = now() AND updated_at = now() AND email = distinct_id || '@example.com'
                           AND properties ->> 'mixpanel_distinct_id' = distinct_id)
             FROM cohortsync.members WHERE cohort_id = 'bulk-fast')
          AND (SELECT bool_and(changed_at = now() AND session_id = 's1' AND change = 'added')
                 FROM cohortsync.membership_changes WHERE cohort_id = 'bulk-fast'),
          'the columns not given take their defaults, the given ones their values');

-- the same page through the statements: a user's trigger on each table sends it there
CREATE FUNCTION public.bulk_noop() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
CREATE TRIGGER user_noop AFTER INSERT ON cohortsync.members
  FOR EACH STATEMENT EXECUTE FUNCTION public.bulk_noop();
CREATE TRIGGER user_noop AFTER INSERT ON cohortsync.membership_changes
  FOR EACH STATEMENT EXECUTE FUNCTION public.bulk_noop();
SELECT is(pg_temp.ingest(pg_temp.members_page('bulk-stmt', 's1', pg_temp.ids('m', 300))),
          'success', 'the same page with a user''s trigger on the tables');
SELECT cmp_ok(cardinality(pg_temp.queued('bulk-fast')), '>=', 900,
              'the fast path queued records for every destination');
SELECT is(pg_temp.queued('bulk-fast'), pg_temp.queued('bulk-stmt'),
          'the outbox got exactly the records the statements queue');
DROP TRIGGER user_noop ON cohortsync.members;
DROP TRIGGER user_noop ON cohortsync.membership_changes;

-- a batch larger than the thousand rows stored at a time (a page sent through SQL)
SELECT is(pg_temp.ingest(pg_temp.members_page('bulk-big', 's1', pg_temp.ids('g', 2500))),
          'success', 'a page of 2500 new members');
SELECT is((SELECT array_agg(distinct_id ORDER BY id) FROM cohortsync.membership_changes c
            WHERE cohort_id = 'bulk-big'
              AND EXISTS (SELECT FROM cohortsync.members m
                           WHERE m.cohort_id = 'bulk-big' AND m.distinct_id = c.distinct_id)),
          pg_temp.ids('g', 2500), 'every member stored and recorded, in the page''s order');

-- a stored member still raises the unique violation that sends the page to the probe
SELECT is(pg_temp.ingest(pg_temp.members_page('bulk-fast', 's2',
                                              pg_temp.ids('m', 5, 299))), 'success',
          'a page whose first members are stored');
SELECT is((SELECT array_agg(distinct_id ORDER BY id) FROM cohortsync.membership_changes
            WHERE cohort_id = 'bulk-fast' AND session_id = 's2'), pg_temp.ids('m', 3, 301),
          'only who was new is recorded');

-------------------------------------------------------------------------------
-- A user's own AFTER ROW triggers fire for every member
-------------------------------------------------------------------------------
CREATE TABLE public.bulk_seen (tab text, distinct_id text);
CREATE FUNCTION public.bulk_seen_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO public.bulk_seen VALUES (TG_TABLE_NAME, NEW.distinct_id);
  RETURN NULL;
END $$;
CREATE TRIGGER user_seen AFTER INSERT ON cohortsync.members
  FOR EACH ROW EXECUTE FUNCTION public.bulk_seen_row();
CREATE TRIGGER user_seen AFTER INSERT ON cohortsync.membership_changes
  FOR EACH ROW EXECUTE FUNCTION public.bulk_seen_row();
SELECT is(pg_temp.ingest(pg_temp.members_page('bulk-rows', 's1', pg_temp.ids('r', 200))),
          'success', 'a page of new members under the user''s AFTER ROW triggers');
SELECT is((SELECT array_agg(distinct_id ORDER BY distinct_id) FROM public.bulk_seen WHERE tab = 'members'),
          pg_temp.ids('r', 200), 'the trigger on members fired for every member');
SELECT is((SELECT array_agg(distinct_id ORDER BY distinct_id) FROM public.bulk_seen
            WHERE tab = 'membership_changes'),
          pg_temp.ids('r', 200), 'the trigger on membership_changes fired for every member');
DROP TRIGGER user_seen ON cohortsync.members;
DROP TRIGGER user_seen ON cohortsync.membership_changes;

-------------------------------------------------------------------------------
-- A BEFORE ROW trigger that changes the row is honoured
-------------------------------------------------------------------------------
CREATE FUNCTION public.bulk_mask() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_TABLE_NAME = 'members' THEN
    NEW.email := 'masked';
  ELSE
    NEW.properties := NEW.properties - 'email';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER user_mask BEFORE INSERT ON cohortsync.members
  FOR EACH ROW EXECUTE FUNCTION public.bulk_mask();
CREATE TRIGGER user_mask BEFORE INSERT ON cohortsync.membership_changes
  FOR EACH ROW EXECUTE FUNCTION public.bulk_mask();
SELECT is(pg_temp.ingest(pg_temp.members_page('bulk-mask', 's1', pg_temp.ids('b', 50))),
          'success', 'a page of new members under the user''s BEFORE ROW triggers');
SELECT is((SELECT array_agg(DISTINCT email) FROM cohortsync.members WHERE cohort_id = 'bulk-mask'),
          ARRAY['masked'], 'the members are stored as the trigger made them');
SELECT is((SELECT count(*) FROM cohortsync.membership_changes
            WHERE cohort_id = 'bulk-mask' AND NOT properties ? 'email'), 50::bigint,
          'and so are their history rows');
DROP TRIGGER user_mask ON cohortsync.members;
DROP TRIGGER user_mask ON cohortsync.membership_changes;

-------------------------------------------------------------------------------
-- A staged page of a full sync: the fast path against the statement
-------------------------------------------------------------------------------
-- page 1 of 2 (the session stays unfinished), some members without phone or email
CREATE FUNCTION pg_temp.staged_page(cohort text, ids text[]) RETURNS jsonb
LANGUAGE sql AS $$
  SELECT jsonb_set(pg_temp.page('members', cohort, 'st1', ids, 1, 2),
                   '{parameters,members}',
                   (SELECT jsonb_agg(jsonb_strip_nulls(jsonb_build_object(
                       'mixpanel_distinct_id', id,
                       'email', CASE WHEN right(id, 1) <> '3' THEN id || '@example.com' END,
                       'phone_number', CASE WHEN right(id, 1) = '7' THEN '+1 555 0100' || right(id, 3) END,
                       'first_name', 'F' || id, 'last_name', 'L' || id,
                       'plan', 'p' || right(id, 1))) ORDER BY id)
                      FROM unnest(ids) id))
$$;
-- a cohort's staged rows, comparable between cohorts
CREATE FUNCTION pg_temp.staged(cohort text) RETURNS text[] LANGUAGE sql AS $$
  SELECT coalesce(array_agg((to_jsonb(s) - 'cohort_id')::text ORDER BY s.distinct_id), '{}')
    FROM cohortsync.staged_members s WHERE s.cohort_id = cohort
$$;

SELECT is(pg_temp.ingest(pg_temp.staged_page('stage-fast', pg_temp.ids('s', 400))), 'success',
          'a full sync''s page, staging as installed');
SELECT is(pg_temp.ingest(pg_temp.staged_page('stage-fast', pg_temp.ids('s', 400))), 'success',
          'the same page again');
SELECT results_eq($$SELECT count(*), count(DISTINCT distinct_id), min(page_count), max(page_count),
                           count(*) FILTER (WHERE phone IS NOT NULL), count(*) FILTER (WHERE email IS NULL)
                      FROM cohortsync.staged_members WHERE cohort_id = 'stage-fast' AND session_id = 'st1'$$,
                  $$VALUES (400::bigint, 400::bigint, 1, 1, 40::bigint, 40::bigint)$$,
                  'the page sent twice is staged once, with its page number and missing fields');

CREATE TRIGGER user_noop AFTER INSERT ON cohortsync.staged_members
  FOR EACH STATEMENT EXECUTE FUNCTION public.bulk_noop();
SELECT is(pg_temp.ingest(pg_temp.staged_page('stage-stmt', pg_temp.ids('s', 400))), 'success',
          'the same page with a user''s trigger on staged_members');
SELECT is(pg_temp.ingest(pg_temp.staged_page('stage-stmt', pg_temp.ids('s', 400))), 'success',
          'and again');
DROP TRIGGER user_noop ON cohortsync.staged_members;
SELECT is(cardinality(pg_temp.staged('stage-stmt')), 400, 'the statement staged it once too');
SELECT is(pg_temp.staged('stage-fast'), pg_temp.staged('stage-stmt'),
          'the fast path staged exactly the rows the statement stages');

SELECT * FROM finish();
ROLLBACK;
