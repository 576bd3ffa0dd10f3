-- The public surface of cohortsync: what CREATE EXTENSION makes, by name.
CREATE EXTENSION cohortsync;

SELECT e.extname, e.extversion, n.nspname AS schema, e.extrelocatable
  FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
 WHERE e.extname = 'cohortsync';

-- tables and their columns
SELECT c.relname, string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
                             || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END,
                             ', ' ORDER BY a.attnum) AS columns
  FROM pg_class c
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
 WHERE c.relnamespace = 'cohortsync'::regnamespace AND c.relkind = 'r'
 GROUP BY c.relname ORDER BY c.relname;

-- primary keys
SELECT conrelid::regclass AS tbl, pg_get_constraintdef(oid) AS pkey
  FROM pg_constraint
 WHERE connamespace = 'cohortsync'::regnamespace AND contype = 'p'
 ORDER BY conrelid::regclass::text;

-- functions, and who may call them: nobody but the owner until granted
SELECT p.oid::regprocedure AS function, pg_get_function_result(p.oid) AS returns,
       p.prosecdef AS security_definer,
       has_function_privilege('public', p.oid, 'EXECUTE') AS public_may_execute
  FROM pg_proc p
 WHERE p.pronamespace = 'cohortsync'::regnamespace
 ORDER BY p.oid::regprocedure::text;

-- the data is dumped by pg_dump
SELECT d::regclass AS dumped
  FROM pg_extension, unnest(extconfig) AS d
 WHERE extname = 'cohortsync' ORDER BY d::regclass::text;
