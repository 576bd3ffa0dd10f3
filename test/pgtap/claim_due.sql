-- The worker's claim since 0.2.0 (cohortsync._claim_due): it only reads, walks
-- from a cursor, and keeps the per-identity rules with the leases in the
-- worker's memory (everything in flight is at or below the cursor).
BEGIN;
SET client_min_messages = warning;
SELECT plan(14);

-- queue records by hand: (identity, change_id); ids follow the order given
CREATE FUNCTION pg_temp.q(dest text, ident text, change bigint) RETURNS bigint LANGUAGE sql AS $$
  INSERT INTO cohortsync.outbox (destination, identity, record, change_id)
  VALUES (dest, ident, jsonb_build_object('identity', ident, 'type', 'event', 'change', change), change)
  RETURNING id
$$;
CREATE TEMP TABLE ids (name text PRIMARY KEY, id bigint);
INSERT INTO ids VALUES
  ('a1e', pg_temp.q('d', 'a', 1)),      -- a: change 1 (event, profile), then change 2
  ('a1p', pg_temp.q('d', 'a', 1)),
  ('b3e', pg_temp.q('d', 'b', 3)),
  ('x',   pg_temp.q('other', 'b', 9)),  -- another destination's row in between
  ('a2e', pg_temp.q('d', 'a', 2)),
  ('c4e', pg_temp.q('d', 'c', 4)),
  ('c4p', pg_temp.q('d', 'c', 4)),
  ('u',   pg_temp.q('d', 'u', NULL));   -- a profile update: a change of its own
CREATE FUNCTION pg_temp.i(n text) RETURNS bigint LANGUAGE sql AS $$ SELECT id FROM ids WHERE name = n $$;
CREATE FUNCTION pg_temp.walk(after bigint, lim int DEFAULT 100)
RETURNS TABLE (name text, claimable boolean) LANGUAGE sql AS $$
  SELECT i.name, c.claimable FROM cohortsync._claim_due('d', lim, after) c JOIN ids i USING (id) ORDER BY c.id
$$;

SELECT results_eq($$SELECT * FROM pg_temp.walk(0)$$,
  $$VALUES ('a1e', true), ('a1p', true), ('b3e', true), ('a2e', false), ('c4e', true), ('c4p', true), ('u', true)$$,
  'from the start: every identity''s oldest change (event and profile), later changes wait, other destinations are not walked');
SELECT is((SELECT record::jsonb FROM cohortsync._claim_due('d', 1, 0)),
          (SELECT record FROM cohortsync.outbox WHERE id = pg_temp.i('a1e')),
          'a claimable record comes with its JSON');
SELECT is((SELECT count(*) FROM cohortsync._claim_due('d', 100, 0) WHERE NOT claimable AND record IS NOT NULL),
          0::bigint, 'a blocked one without');
SELECT results_eq($$SELECT change_key FROM cohortsync._claim_due('d', 100, 0) ORDER BY id$$,
  $$VALUES (1::bigint), (1), (3), (2), (4), (4), (-pg_temp.i('u'))$$,
  'change_key: the change, or minus the id for a profile update');
SELECT results_eq($$SELECT * FROM pg_temp.walk(0, 3)$$,
  $$VALUES ('a1e', true), ('a1p', true), ('b3e', true)$$,
  'a walk stops after the limit, blocked records included');
SELECT results_eq($$SELECT * FROM pg_temp.walk(pg_temp.i('b3e'))$$,
  $$VALUES ('a2e', false), ('c4e', true), ('c4p', true), ('u', true)$$,
  'from a cursor: only what lies after it; a1 (at or below the cursor, maybe in flight) still blocks a2');
SELECT results_eq($$SELECT * FROM pg_temp.walk(pg_temp.i('c4e'))$$,
  $$VALUES ('c4p', false), ('u', true)$$,
  'a change cut by the cursor: its second record waits (the first may be in flight)');
SELECT is((SELECT count(*) FROM cohortsync.outbox WHERE lease_until IS NOT NULL OR leased_by IS NOT NULL),
          0::bigint, 'a claim writes nothing');

-- a record waiting for its retry (e.g. CleverTap's 555) is not due and blocks its identity
UPDATE cohortsync.outbox SET attempts = 1, next_attempt_at = now() + interval '1 hour'
 WHERE id = pg_temp.i('b3e');
SELECT pg_temp.q('d', 'b', 5) AS b5 \gset
INSERT INTO ids VALUES ('b5e', :b5);
SELECT results_eq($$SELECT * FROM pg_temp.walk(0) WHERE name LIKE 'b%'$$,
  $$VALUES ('b3e', false), ('b5e', false)$$,
  'a record waiting for a retry is not claimed, nor is its user''s next change');
UPDATE cohortsync.outbox SET next_attempt_at = now() WHERE id = pg_temp.i('b3e');
SELECT results_eq($$SELECT * FROM pg_temp.walk(0) WHERE name LIKE 'b%'$$,
  $$VALUES ('b3e', true), ('b5e', false)$$,
  'once due, it goes first, alone');

-- after a1 is delivered, a2 goes
DELETE FROM cohortsync.outbox WHERE id IN (pg_temp.i('a1e'), pg_temp.i('a1p'));
SELECT results_eq($$SELECT * FROM pg_temp.walk(0) WHERE name LIKE 'a%'$$,
  $$VALUES ('a2e', true)$$, 'an identity''s next change goes once the previous one is gone');

-- rows leased the 0.1.0 way (an upgrade with records in flight) are walked like any other
UPDATE cohortsync.outbox SET lease_until = now() + interval '1 hour', leased_by = 1
 WHERE id = pg_temp.i('c4e');
SELECT results_eq($$SELECT * FROM pg_temp.walk(0) WHERE name LIKE 'c%'$$,
  $$VALUES ('c4e', true), ('c4p', true)$$,
  'a lease left by 0.1.0 does not hold a record back');

-- destination_status: without the worker's published count, in_flight is the old leases only
SELECT cohortsync.connect_clevertap('d', 'ACC', 'PASS', 'eu1', 'http://127.0.0.1:9');
SELECT results_eq($$SELECT pending, in_flight FROM cohortsync.destination_status WHERE name = 'd'$$,
  $$SELECT count(*) FILTER (WHERE lease_until IS NULL), count(*) FILTER (WHERE lease_until IS NOT NULL)
      FROM cohortsync.outbox WHERE destination = 'd'$$,
  'destination_status: pending and in flight add up to the queue');
SELECT is((SELECT count(*) FROM cohortsync._worker_in_flight() WHERE destination = 'd'), 0::bigint,
          'no worker serves this database: nothing published for it');

SELECT * FROM finish();
ROLLBACK;
