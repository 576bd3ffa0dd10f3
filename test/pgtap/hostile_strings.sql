-- SQL injection: ids, names and member fields full of quotes, backslashes, dollar
-- quotes, format directives, newlines and SQL are stored byte for byte, through
-- diffs, full syncs and removals, and reach the outbox records verbatim; a
-- destination or webhook user named like that is managed like any other.
BEGIN;
SET client_min_messages = warning;
\ir 00_helpers.inc
SELECT plan(27);

-- The strings, numbered. Dollar-quoted with a tag none of them contains.
CREATE TEMP TABLE hostile (n int PRIMARY KEY, s text NOT NULL);
INSERT INTO hostile VALUES
  (1, $q$'; DROP TABLE cohortsync.members; --$q$),
  (2, $q$\x27$q$),
  (3, $q$O'Brien$q$),
  (4, $q$"quoted"$q$),
  (5, $q$\\$q$),
  (6, $q$$$$q$),
  (7, $q$%s%n%x$q$),
  (8, 'two' || chr(10) || 'lines' || chr(13) || chr(9) || 'tab'),
  (9, $q$Robert'); DELETE FROM cohortsync.cohorts WHERE ('1' = '1$q$),
  (10, $q$$1 $CleverTap_user_id ${x} `id` \N \. E'\'' U&'\0041'$q$),
  (11, $q$Zoë 🚀 ‮rtl$q$),
  (12, $q$*/ /* -- ; \gexec$q$);
SELECT is((SELECT count(*) FROM hostile), 12::bigint, 'twelve hostile strings');

CREATE FUNCTION pg_temp.hostile_member(i int) RETURNS jsonb LANGUAGE sql AS $f$
  SELECT jsonb_build_object('mixpanel_distinct_id', h.s,
                            'email', h.s || '@example.com',
                            'first_name', h.s, 'last_name', r.s,
                            '$CleverTap_user_id', 'ct ' || h.s,
                            h.s, r.s)                   -- a key of its own, too
    FROM hostile h, hostile r WHERE h.n = i AND r.n = 13 - i
$f$;

-- A page of them: project, cohort, name, description, session, and per member its
-- distinct id, email, names and CleverTap identity.
CREATE FUNCTION pg_temp.hostile_page(action text, session text, ns int[],
                                     page_count int DEFAULT 1, total_pages int DEFAULT 1)
RETURNS jsonb LANGUAGE sql AS $f$
  SELECT jsonb_build_object(
    'action', action,
    'parameters', jsonb_build_object(
      'mixpanel_project_id', (SELECT s FROM hostile WHERE n = 1),
      'mixpanel_cohort_id', (SELECT s FROM hostile WHERE n = 9),
      'mixpanel_cohort_name', (SELECT s FROM hostile WHERE n = 3) || ' & ' || (SELECT s FROM hostile WHERE n = 8),
      'mixpanel_cohort_description', (SELECT s FROM hostile WHERE n = 10),
      'mixpanel_session_id', session,
      'page_info', jsonb_build_object('total_pages', total_pages, 'page_count', page_count),
      'members', coalesce((SELECT jsonb_agg(pg_temp.hostile_member(h.n) ORDER BY h.n)
                             FROM hostile h WHERE h.n = ANY (ns)), '[]')))
$f$;
CREATE VIEW pg_temp.ids AS
SELECT (SELECT s FROM hostile WHERE n = 1) AS project, (SELECT s FROM hostile WHERE n = 9) AS cohort;

-- what is stored, and what was sent, as text that compares byte for byte
CREATE FUNCTION pg_temp.stored_members() RETURNS text LANGUAGE sql AS $f$
  SELECT jsonb_agg(jsonb_build_array(m.distinct_id, m.email, m.first_name, m.last_name, m.properties)
                   ORDER BY m.distinct_id)::text
    FROM cohortsync.members m, pg_temp.ids i WHERE m.project_id = i.project AND m.cohort_id = i.cohort
$f$;
CREATE FUNCTION pg_temp.sent_members(ns int[]) RETURNS text LANGUAGE sql AS $f$
  SELECT jsonb_agg(jsonb_build_array(h.s, h.s || '@example.com', h.s, r.s, pg_temp.hostile_member(h.n))
                   ORDER BY h.s COLLATE "C")::text
    FROM hostile h, hostile r WHERE h.n = ANY (ns) AND r.n = 13 - h.n
$f$;

-------------------------------------------------------------------------------
-- diffs
-------------------------------------------------------------------------------
SELECT is(pg_temp.ingest(pg_temp.hostile_page('add_members', (SELECT s FROM hostile WHERE n = 6),
                                               ARRAY[1,2,3,4,5,6,7,8,9,10,11,12])),
          'success', 'a page of hostile strings is applied');
SELECT is(pg_temp.stored_members(), pg_temp.sent_members(ARRAY[1,2,3,4,5,6,7,8,9,10,11,12]),
          'members: ids, email, names and properties stored byte for byte');
SELECT is((SELECT (jsonb_agg(jsonb_build_array(c.project_id, c.cohort_id, c.name, c.description)) -> 0)::text
             FROM cohortsync.cohorts c
            HAVING count(*) = 1),
          (SELECT jsonb_build_array(i.project, i.cohort,
                                    (SELECT s FROM hostile WHERE n = 3) || ' & ' || (SELECT s FROM hostile WHERE n = 8),
                                    (SELECT s FROM hostile WHERE n = 10))::text
             FROM pg_temp.ids i),
          'cohorts: project id, cohort id, name and description stored byte for byte');
SELECT is((SELECT jsonb_agg(jsonb_build_array(c.distinct_id, c.change, c.session_id, c.properties)
                            ORDER BY c.distinct_id)::text
             FROM cohortsync.membership_changes c),
          (SELECT jsonb_agg(jsonb_build_array(h.s, 'added', (SELECT s FROM hostile WHERE n = 6),
                                              pg_temp.hostile_member(h.n)) ORDER BY h.s COLLATE "C")::text
             FROM hostile h),
          'membership_changes: ids, session id and properties stored byte for byte');
SELECT is((SELECT session_id FROM cohortsync.sync_sessions), '$$', 'sync_sessions: the session id');
SELECT is(pg_temp.ingest(pg_temp.hostile_page('add_members', (SELECT s FROM hostile WHERE n = 6),
                                               ARRAY[1,2,3,4,5,6,7,8,9,10,11,12])),
          'success', 'the same page again');
SELECT is((SELECT count(*) FROM cohortsync.membership_changes), 12::bigint,
          'changes nothing: every hostile id matched itself');
SELECT is(pg_temp.ingest(pg_temp.hostile_page('remove_members', (SELECT s FROM hostile WHERE n = 2),
                                               ARRAY[1,3,5,7,9,11])),
          'success', 'removing half of them');
SELECT is(pg_temp.stored_members(), pg_temp.sent_members(ARRAY[2,4,6,8,10,12]),
          'exactly those left');
SELECT is((SELECT array_agg(c.distinct_id ORDER BY c.distinct_id)::text FROM cohortsync.membership_changes c
            WHERE c.change = 'removed'),
          (SELECT array_agg(h.s ORDER BY h.s COLLATE "C")::text FROM hostile h WHERE h.n IN (1,3,5,7,9,11)),
          'and the history says who');

-------------------------------------------------------------------------------
-- a full sync over two pages: staged, then swapped
-------------------------------------------------------------------------------
SELECT is(pg_temp.ingest(pg_temp.hostile_page('members', (SELECT s FROM hostile WHERE n = 4),
                                               ARRAY[1,2,3], 1, 2)), 'success', 'full sync, page 1 of 2');
SELECT is((SELECT array_agg(s.distinct_id ORDER BY s.distinct_id)::text FROM cohortsync.staged_members s),
          (SELECT array_agg(h.s ORDER BY h.s COLLATE "C")::text FROM hostile h WHERE h.n IN (1,2,3)),
          'staged byte for byte');
SELECT ok(cohortsync.explain_swap((SELECT project FROM pg_temp.ids), (SELECT cohort FROM pg_temp.ids),
                                  (SELECT s FROM hostile WHERE n = 4)) IS NOT NULL,
          'explain_swap takes hostile ids as values');
SELECT is(pg_temp.ingest(pg_temp.hostile_page('members', (SELECT s FROM hostile WHERE n = 4),
                                               ARRAY[10,11,12], 2, 2)), 'success', 'full sync, page 2 of 2');
SELECT cohortsync.apply_pending();   -- the swap, at once rather than in the background
SELECT is(pg_temp.stored_members(), pg_temp.sent_members(ARRAY[1,2,3,10,11,12]),
          'the swap leaves exactly the synced members, byte for byte');

-------------------------------------------------------------------------------
-- the outbox: a destination named with quotes, records holding the strings
-------------------------------------------------------------------------------
SELECT lives_ok($f$SELECT cohortsync.connect_clevertap(
                     (SELECT s FROM hostile WHERE n = 3) || ' ' || (SELECT s FROM hostile WHERE n = 1),
                     (SELECT s FROM hostile WHERE n = 4), 'cs-secret-hostile', 'eu1', 'http://127.0.0.1:9')$f$,
                'a destination named with quotes and SQL');
SELECT is((SELECT array_agg(name)::text FROM cohortsync.destinations),
          (SELECT ARRAY[(SELECT s FROM hostile WHERE n = 3) || ' ' || (SELECT s FROM hostile WHERE n = 1)]::text),
          'its name is stored as given');
SELECT is(pg_temp.ingest(pg_temp.hostile_page('add_members', 'again', ARRAY[5,6,7])), 'success',
          'hostile members join with the destination connected');
SELECT is((SELECT jsonb_agg(jsonb_build_array(o.identity, o.record -> 'evtData' ->> 'Partner Segment Name',
                                              o.record -> 'evtData' ->> 'Partner Segment ID')
                            ORDER BY o.identity COLLATE "C")::text
             FROM cohortsync.outbox o WHERE o.record ->> 'type' = 'event'),
          (SELECT jsonb_agg(jsonb_build_array('ct ' || h.s,
                                              (SELECT s FROM hostile WHERE n = 3) || ' & ' || (SELECT s FROM hostile WHERE n = 8),
                                              (SELECT s FROM hostile WHERE n = 9))
                            ORDER BY ('ct ' || h.s) COLLATE "C")::text
             FROM hostile h WHERE h.n IN (5,6,7)),
          'events: identity, cohort name and id verbatim');
SELECT is((SELECT jsonb_agg(jsonb_build_array(o.identity, o.record -> 'profileData' ->> 'Email',
                                              o.record -> 'profileData' ->> 'Name')
                            ORDER BY o.identity COLLATE "C")::text
             FROM cohortsync.outbox o WHERE o.record ->> 'type' = 'profile'),
          (SELECT jsonb_agg(jsonb_build_array('ct ' || h.s, h.s || '@example.com', h.s || ' ' || r.s)
                            ORDER BY ('ct ' || h.s) COLLATE "C")::text
             FROM hostile h, hostile r WHERE h.n IN (5,6,7) AND r.n = 13 - h.n),
          'profiles: identity, Email and Name verbatim');
SELECT lives_ok($f$SELECT cohortsync.pause_destination(
                     (SELECT name FROM cohortsync.destinations), (SELECT s FROM hostile WHERE n = 9))$f$,
                'pause by that name, with a hostile reason');
SELECT is((SELECT state_reason FROM cohortsync.destination_status), (SELECT s FROM hostile WHERE n = 9),
          'the reason is shown as given');
SELECT lives_ok($f$SELECT cohortsync.disconnect_clevertap((SELECT name FROM cohortsync.destinations))$f$,
                'disconnect by that name');

-------------------------------------------------------------------------------
-- a webhook user named like that (no colon: Basic auth could not carry it)
-------------------------------------------------------------------------------
SELECT lives_ok($f$SELECT cohortsync.add_webhook_user((SELECT s FROM hostile WHERE n = 1), 'cs-secret-hostile-pw')$f$,
                'a webhook user named with SQL');
SELECT is((SELECT array_agg(username)::text FROM cohortsync.webhook_users),
          (SELECT ARRAY[s]::text FROM hostile WHERE n = 1), 'stored as given');
SELECT lives_ok($f$SELECT cohortsync.drop_webhook_user((SELECT s FROM hostile WHERE n = 1))$f$,
                'and dropped by that name');

SELECT * FROM finish();
ROLLBACK;
