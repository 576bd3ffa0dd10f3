-- public.fuzz_case(n, body): run one fuzz case through cohortsync.ingest and say
-- how it went, in one short line "n|outcome[|detail]":
--   n|a                 accepted: {"action": <the page's action>, "status": "success"}
--   n|r                 rejected: a failure answer with code 400, and nothing written
--   n|i|SQLSTATE        the text is not jsonb (the cast failed): never reaches ingest
--   n|E|SQLSTATE msg    ingest raised an error              -> the test fails
--   n|W|message         rejected, but the transaction wrote  -> the test fails
--   n|S|answer          an answer of another shape          -> the test fails
-- "Nothing written" is checked by the transaction id: every write (a row, a
-- sequence value) assigns one, and each call runs in a transaction of its own.
CREATE FUNCTION public.fuzz_case(n int, body text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    page jsonb;
    r jsonb;
    msg text;
BEGIN
    BEGIN
        page := body::jsonb;
    EXCEPTION WHEN OTHERS THEN
        RETURN n || '|i|' || SQLSTATE;
    END;
    BEGIN
        r := cohortsync.ingest(page);
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
        RETURN n || '|E|' || SQLSTATE || ' ' || msg;
    END;
    IF r = jsonb_build_object('action', page->'action', 'status', 'success')
       AND jsonb_typeof(page->'action') = 'string' THEN
        RETURN n || '|a';
    END IF;
    IF r->>'status' = 'failure' AND r->'error'->'code' = '400'
       AND r ? 'action' AND jsonb_typeof(r->'action') IN ('string', 'null')
       AND length(r->'error'->>'message') > 0
       AND (SELECT count(*) FROM jsonb_object_keys(r)) = 3 THEN
        IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
            RETURN n || '|W|' || (r->'error'->>'message');
        END IF;
        RETURN n || '|r';
    END IF;
    RETURN n || '|S|' || left(r::text, 300);
END
$$;

-- Run cases first, first + 1, ... each in a transaction of its own (the procedure
-- commits after each), and return "accepted rejected invalid" counts followed by
-- the lines of every case that went wrong.
CREATE PROCEDURE public.fuzz_batch(first int, bodies text[], INOUT result text DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
    o text;
    na int := 0;
    nr int := 0;
    ni int := 0;
    bad text := '';
BEGIN
    FOR k IN 1 .. coalesce(array_length(bodies, 1), 0) LOOP
        o := public.fuzz_case(first + k - 1, bodies[k]);
        COMMIT;
        CASE split_part(o, '|', 2)
            WHEN 'a' THEN na := na + 1;
            WHEN 'r' THEN nr := nr + 1;
            WHEN 'i' THEN ni := ni + 1; bad := bad || E'\n' || o;
            ELSE bad := bad || E'\n' || o;
        END CASE;
    END LOOP;
    result := format('batch %s: %s %s %s', first, na, nr, ni) || bad;
END
$$;
