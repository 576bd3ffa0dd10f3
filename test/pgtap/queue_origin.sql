-- Only what ingest records is queued for delivery (issue #12): rows a restore COPYs
-- into membership_changes, or anyone writes by hand, queue nothing unless
-- cohortsync.queue_changes is on; users' own triggers on the tables fire as before.
BEGIN;
SET client_min_messages = warning;
\ir 00_helpers.inc
SELECT plan(11);

SELECT cohortsync.connect_clevertap('ct', 'ACC', 'cs-secret-origin', 'eu1', 'http://127.0.0.1:9');
SELECT cohortsync.pause_destination('ct');

-- a user's own trigger on the history, counting what it sees
CREATE TABLE public.seen (n bigint);
CREATE FUNCTION public.count_changes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO public.seen SELECT count(*) FROM new_rows;
  RETURN NULL;
END $$;
CREATE TRIGGER user_counts AFTER INSERT ON cohortsync.membership_changes
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION public.count_changes();

SELECT is(current_setting('cohortsync.queue_changes'), 'off', 'queue_changes is off outside ingest');
SELECT is(pg_temp.ingest(pg_temp.page('add_members', 'q1', 's1', ARRAY['a', 'b'])), 'success', 'ingest');
SELECT is((SELECT count(*) FROM cohortsync.outbox), 4::bigint, 'ingest''s changes are queued (event and profile each)');
SELECT is(current_setting('cohortsync.queue_changes'), 'off', 'and it is off again after ingest');

-- what a restore does: COPY rows into the history (with their ids, as pg_dump's data)
COPY cohortsync.membership_changes (id, project_id, cohort_id, distinct_id, change, session_id, changed_at, properties) FROM STDIN;
1000001	1001	q1	restored-a	added	old	2024-01-01 00:00:00+00	{"mixpanel_distinct_id": "restored-a"}
1000002	1001	q1	restored-b	added	old	2024-01-01 00:00:00+00	{"mixpanel_distinct_id": "restored-b"}
\.
SELECT is((SELECT count(*) FROM cohortsync.outbox), 4::bigint, 'rows COPYed in, as by a restore, queue nothing');
INSERT INTO cohortsync.membership_changes (project_id, cohort_id, distinct_id, change, session_id, properties)
VALUES ('1001', 'q1', 'hand-1', 'added', 'h', '{}');
SELECT is((SELECT count(*) FROM cohortsync.outbox), 4::bigint, 'rows written by hand queue nothing');
UPDATE cohortsync.members SET email = 'new@example.com' WHERE distinct_id = 'a';
SELECT is((SELECT count(*) FROM cohortsync.outbox), 4::bigint, 'nor does a member updated by hand');

SET LOCAL cohortsync.queue_changes = on;
INSERT INTO cohortsync.membership_changes (project_id, cohort_id, distinct_id, change, session_id, properties)
VALUES ('1001', 'q1', 'by-hand', 'added', 'h', '{}');
SELECT is((SELECT count(*) FROM cohortsync.outbox WHERE record ->> 'identity' = 'by-hand'), 2::bigint,
          'with queue_changes on (SET LOCAL), a row written by hand is queued');
RESET cohortsync.queue_changes;

SELECT is((SELECT array_agg(n ORDER BY n) FROM public.seen), ARRAY[1, 1, 2, 2]::bigint[],
          'the user''s trigger saw every insert: ingest''s, the COPY, the hand-made ones');

CREATE ROLE cs_test_origin;
SET ROLE cs_test_origin;
SELECT throws_ok($$SET cohortsync.queue_changes = on$$, '42501', NULL,
                 'a role without superuser may not turn it on');
RESET ROLE;
SELECT is(pg_temp.ingest(pg_temp.page('remove_members', 'q1', 's2', ARRAY['b'])), 'success',
          'ingest still queues after all that');

SELECT * FROM finish();
ROLLBACK;
