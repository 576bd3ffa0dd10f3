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

-- Every privilege held on the extension's schema, relations (and their columns) and
-- functions by anyone but their owner. Installed, that is nobody: a grant added
-- by an install or upgrade script shows up here.
CREATE VIEW pg_temp.grants AS
SELECT x.kind, x.object,
       CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE x.grantee::regrole::text END AS grantee,
       string_agg(x.privilege_type, ', ' ORDER BY x.privilege_type) AS privileges
  FROM (SELECT 'schema' AS kind, n.nspname::text AS object, a.grantee, a.privilege_type
          FROM pg_namespace n, aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a
         WHERE n.nspname = 'cohortsync' AND a.grantee <> n.nspowner
        UNION ALL
        SELECT CASE c.relkind WHEN 'r' THEN 'table' WHEN 'v' THEN 'view' WHEN 'S' THEN 'sequence'
                              ELSE c.relkind::text END,
               c.relname::text, a.grantee, a.privilege_type
          FROM pg_class c, aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a
         WHERE c.relnamespace = 'cohortsync'::regnamespace AND a.grantee <> c.relowner
        UNION ALL
        SELECT 'column', c.relname || '.' || att.attname, a.grantee, a.privilege_type
          FROM pg_class c JOIN pg_attribute att ON att.attrelid = c.oid, aclexplode(att.attacl) a
         WHERE c.relnamespace = 'cohortsync'::regnamespace AND a.grantee <> c.relowner
        UNION ALL
        SELECT 'function', p.oid::regprocedure::text, a.grantee, a.privilege_type
          FROM pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
         WHERE p.pronamespace = 'cohortsync'::regnamespace AND a.grantee <> p.proowner) x
 GROUP BY 1, 2, 3;
SELECT * FROM pg_temp.grants ORDER BY kind, object, grantee;

-- The two roles README.md documents, as grant_ingest() and grant_read() make them.
SET client_min_messages = warning;
CREATE ROLE regress_cs_ingest;
CREATE ROLE regress_cs_reader;
RESET client_min_messages;
SELECT cohortsync.grant_ingest('regress_cs_ingest');
SELECT cohortsync.grant_read('regress_cs_reader');
SELECT * FROM pg_temp.grants ORDER BY grantee, kind, object;
SELECT cohortsync.revoke_access('regress_cs_ingest');
SELECT cohortsync.revoke_access('regress_cs_reader');
SELECT * FROM pg_temp.grants ORDER BY grantee, kind, object;
DROP ROLE regress_cs_ingest, regress_cs_reader;
