-- The delivery worker's statements must not depend on the outbox's statistics. A
-- queue analyzed while (nearly) empty and filled again has many pages and a density of
-- about zero: the planner then takes every index to be one page big and cannot tell a
-- probe by key from a walk of a whole index. Under those statistics the DELETE of
-- accepted records walked all of outbox_claim_idx for every request, and the claim's
-- identity probe walked all of it for every record. This file sets that trap, shows
-- that it is real (the statements, planned without the worker's settings, fall into
-- it), and checks that the worker's statements, as they run, do not.
BEGIN;
SET client_min_messages = warning;
SELECT plan(14);

SELECT cohortsync.connect_clevertap('ct', 'ACC', 'cs-secret-plan', 'eu1', 'http://127.0.0.1:9');
SELECT cohortsync.connect_clevertap('other', 'ACC2', 'cs-secret-plan', 'eu1', 'http://127.0.0.1:9');

-- n records of a destination as ingest queues them: an event and a profile per change
CREATE FUNCTION pg_temp.fill(dest text, n integer) RETURNS void LANGUAGE sql AS $$
    INSERT INTO cohortsync.outbox (destination, identity, record, change_id)
    SELECT dest, 'user' || lpad((g / 2 % 5000)::text, 6, '0'),
           jsonb_build_object('identity', 'user' || (g / 2 % 5000), 'type', 'event', 'ts', 1732270000,
                              'evtName', 'Partner Sync',
                              'evtData', jsonb_build_object('Partner Segment Name', 'Power users',
                                                            'Action', 'Added', 'Partner Segment ID', '4242')),
           g / 2
      FROM generate_series(1, n) g
$$;

-- The plan of a statement of one of the worker's SQL functions, as the function runs
-- it: the function's own text with its arguments bound, under its SET clauses (with
-- cohortsync.plan_outbox_full off when not guarded), as a generic plan (a SQL function
-- plans without its arguments' values) or a custom one. One line per scan of the
-- outbox or its indexes: "<node>[ on <index>]".
CREATE FUNCTION pg_temp.plan_of(f regprocedure, args text, guarded boolean DEFAULT true,
                                mode text DEFAULT 'force_generic_plan', body text DEFAULT NULL)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    p pg_proc;
    names text[];
    cfg text;
    saved text[] := '{}';
    j jsonb;
BEGIN
    SELECT * INTO p FROM pg_proc WHERE oid = f;
    body := regexp_replace(coalesce(body, p.prosrc), ';\s*$', '');
    SELECT array_agg(n ORDER BY o) INTO names
      FROM unnest(p.proargnames, coalesce(p.proargmodes::text[], array_fill('i'::text, ARRAY[p.pronargs])))
           WITH ORDINALITY u(n, m, o) WHERE m IN ('i', 'b');
    FOR i IN 1 .. coalesce(cardinality(names), 0) LOOP
        body := regexp_replace(body, '\m' || names[i] || '\M', '$' || i, 'g');
    END LOOP;
    FOREACH cfg IN ARRAY coalesce(p.proconfig, '{}') || ('plan_cache_mode=' || mode)
                         || ('cohortsync.plan_outbox_full=' || CASE WHEN guarded THEN 'on' ELSE 'off' END) LOOP
        IF (NOT guarded OR split_part(cfg, '=', 1) <> 'cohortsync.plan_outbox_full')
           AND current_setting(split_part(cfg, '=', 1), true) IS NOT NULL THEN
            saved := saved || (split_part(cfg, '=', 1) || '=' || current_setting(split_part(cfg, '=', 1)));
            PERFORM set_config(split_part(cfg, '=', 1), substr(cfg, strpos(cfg, '=') + 1), true);
        END IF;
    END LOOP;
    EXECUTE format('PREPARE pg_temp_plan_of%s AS %s',
                   (SELECT '(' || string_agg(format_type(t, NULL), ', ' ORDER BY o) || ')'
                      FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY u(t, o)), body);
    EXECUTE format('EXPLAIN (FORMAT JSON) EXECUTE pg_temp_plan_of%s', '(' || nullif(args, '') || ')') INTO j;
    DEALLOCATE pg_temp_plan_of;
    FOREACH cfg IN ARRAY saved LOOP
        PERFORM set_config(split_part(cfg, '=', 1), substr(cfg, strpos(cfg, '=') + 1), true);
    END LOOP;
    RETURN (SELECT string_agg((x ->> 'Node Type') || coalesce(' on ' || (x ->> 'Index Name'), ''), E'\n')
              FROM jsonb_path_query(j, 'strict $.**') x
             WHERE jsonb_typeof(x) = 'object' AND x ->> 'Node Type' LIKE '%Scan'
               AND (x ->> 'Relation Name' = 'outbox' OR x ->> 'Index Name' LIKE 'outbox%'));
END
$$;

-- The trap: a full queue drains, is analyzed while empty (as autovacuum does after a
-- drain: it sees only dead rows) and fills again.
SELECT pg_temp.fill('ct', 4000);
DELETE FROM cohortsync.outbox;
ANALYZE cohortsync.outbox;
SELECT pg_temp.fill('other', 2000);
SELECT pg_temp.fill('ct', 20000);
SELECT pg_temp.fill('other', 2000);
SELECT is((SELECT reltuples FROM pg_class WHERE oid = 'cohortsync.outbox'::regclass), 0::real,
          'the statistics say the queue is empty');

-------------------------------------------------------------------------------
-- The trap is real: unguarded, the statements walk a whole index.

-- _record_outcome's DELETE of accepted records as it was (enable_seqscan off, by id and
-- destination): PostgreSQL 15 walks outbox_claim_idx, 17 and 18 outbox_identity_idx
SELECT matches(pg_temp.plan_of('cohortsync._record_outcome(text,bigint[],integer,text,text,interval,interval,bigint[],integer)',
                               $$'ct', '{1,2,3}', 200, NULL, NULL, '1 day', '1 minute', '{}', NULL$$, false,
                               body => 'DELETE FROM cohortsync.outbox o WHERE o.id = ANY (p_ids) AND o.destination = p_destination'),
               'outbox_(claim|identity)_idx',
               'the trap is set: unguarded, the DELETE of accepted records walks an index that does not lead with id');

-------------------------------------------------------------------------------
-- The worker's statements as they run.

-- the DELETE of accepted records as it is now: by id alone. Under these statistics the
-- planner cannot tell the primary key from a walk of all of outbox_claim_idx (id is its
-- second column) or outbox_identity_idx, and picks one or the other depending on the
-- indexes' heights (the claim's identity probe likewise walked outbox_claim_idx for
-- every record); cohortsync.plan_outbox_full settles it
SELECT matches(pg_temp.plan_of('cohortsync._record_outcome(text,bigint[],integer,text,text,interval,interval,bigint[],integer)',
                               $$'ct', '{1,2,3}', 200, NULL, NULL, '1 day', '1 minute', '{}', NULL$$,
                               body => 'DELETE FROM cohortsync.outbox o WHERE o.id = ANY (p_ids) AND NOT o.id = ANY (p_rest)'),
               E'^(Index Scan on outbox_pkey|Bitmap Heap Scan\nBitmap Index Scan on outbox_pkey)$',
               'the DELETE of accepted records reads the primary key');

SELECT is(pg_temp.plan_of('cohortsync._claim_due(text,integer,bigint)', $$'ct', 1001, 0$$),
          E'Index Scan on outbox_claim_idx\nIndex Scan on outbox_identity_idx',
          '_claim_due walks outbox_claim_idx and probes outbox_identity_idx');
SELECT is(pg_temp.plan_of('cohortsync._claim_due(text,integer,bigint)', $$'ct', 1001, 0$$, mode => 'force_custom_plan'),
          E'Index Scan on outbox_claim_idx\nIndex Scan on outbox_identity_idx',
          'with its arguments'' values known too');
SELECT is(pg_temp.plan_of('cohortsync._claim(text,integer,interval)', $$'ct', 1000, '1 minute'$$),
          E'Index Scan on outbox_claim_idx\nIndex Scan on outbox_identity_idx\nIndex Scan on outbox_pkey',
          '_claim walks outbox_claim_idx, probes outbox_identity_idx, leases by primary key');
SELECT matches(pg_temp.plan_of('cohortsync._next_due()', ''),
               '^Index (Only )?Scan on outbox_retry_idx$',
               '_next_due reads outbox_retry_idx only');

-- _record_outcome is PL/pgSQL: count what its statements read. Generic plans are the
-- worst case (the worker's session plans them after a few calls).
CREATE TEMP TABLE reads AS
SELECT c.relname, pg_stat_get_xact_tuples_returned(c.oid) AS returned,
       pg_stat_get_xact_numscans(c.oid) AS scans
  FROM pg_class c WHERE c.relnamespace = 'cohortsync'::regnamespace AND c.relname LIKE 'outbox%';
CREATE FUNCTION pg_temp.read_since() RETURNS TABLE (relname name, returned bigint, scans bigint)
LANGUAGE sql AS $$
    WITH now AS (SELECT c.relname, pg_stat_get_xact_tuples_returned(c.oid) AS returned,
                        pg_stat_get_xact_numscans(c.oid) AS scans
                   FROM pg_class c
                  WHERE c.relnamespace = 'cohortsync'::regnamespace AND c.relname LIKE 'outbox%')
    SELECT n.relname, n.returned - r.returned, n.scans - r.scans
      FROM now n JOIN reads r USING (relname)
$$;
CREATE FUNCTION pg_temp.reset_reads() RETURNS void LANGUAGE sql AS $$
    DELETE FROM reads;
    INSERT INTO reads SELECT c.relname, pg_stat_get_xact_tuples_returned(c.oid), pg_stat_get_xact_numscans(c.oid)
      FROM pg_class c WHERE c.relnamespace = 'cohortsync'::regnamespace AND c.relname LIKE 'outbox%';
$$;
SET LOCAL plan_cache_mode = force_generic_plan;

-- a request of the 1000 records in the middle of the queue: accepted, but for one
-- refused and one to be retried (555)
CREATE TEMP TABLE sent AS
SELECT array_agg(id ORDER BY id) AS ids FROM (
    SELECT id FROM cohortsync.outbox WHERE destination = 'ct' ORDER BY id OFFSET 10000 LIMIT 1000) s;
SELECT pg_temp.reset_reads();
SELECT is(cohortsync._record_outcome('ct', (SELECT ids FROM sent), 200,
              '{"status":"partial","processed":998,"unprocessed":['
              '{"status":"fail","code":516,"error":"Invalid phone. Skipped record number : 3"},'
              '{"status":"fail","code":555,"error":"Server error. Skipped record number : 7"}]}',
              NULL, '1 day', '1 minute'), 'requeued', 'a partial answer is recorded (the 555 stays queued)');
SELECT is((SELECT coalesce(sum(returned), 0) FROM pg_temp.read_since()
            WHERE relname IN ('outbox_claim_idx', 'outbox_identity_idx')), 0::numeric,
          'recording it read nothing of outbox_claim_idx or outbox_identity_idx');
SELECT cmp_ok((SELECT returned FROM pg_temp.read_since() WHERE relname = 'outbox_pkey'), '<=', 2000::bigint,
              'and at most two primary-key entries per record');
SELECT is((SELECT count(*) FROM cohortsync.outbox WHERE id IN (SELECT unnest(ids) FROM sent)), 1::bigint,
          'of the 1000 records only the one to retry is left');

-- a 503 for the next 1000: all of them wait for a retry
UPDATE sent SET ids = (SELECT array_agg(id ORDER BY id) FROM (
    SELECT id FROM cohortsync.outbox WHERE destination = 'ct' ORDER BY id OFFSET 12000 LIMIT 1000) s);
SELECT pg_temp.reset_reads();
SELECT is(cohortsync._record_outcome('ct', (SELECT ids FROM sent), 503, 'busy', NULL, '1 day', '1 minute'),
          'retry', 'a 503 is recorded');
SELECT is((SELECT coalesce(sum(returned), 0) FROM pg_temp.read_since()
            WHERE relname IN ('outbox_claim_idx', 'outbox_identity_idx')), 0::numeric,
          'recording it read nothing of outbox_claim_idx or outbox_identity_idx');
SELECT cmp_ok((SELECT returned FROM pg_temp.read_since() WHERE relname = 'outbox_pkey'), '<=', 3000::bigint,
              'and at most three primary-key entries per record');

SELECT * FROM finish();
ROLLBACK;
