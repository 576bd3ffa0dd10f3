/*-------------------------------------------------------------------------
 *
 * pg_compat.h
 *	  What differs between the PostgreSQL major versions cohortsync builds
 *	  against (15, 16, 17 and 18), each difference in one place.
 *
 * The rest of the code is written against the newest server API; for older
 * servers this header supplies it, named as the newest server names it (or
 * with a cs_ prefix where the older call cannot take the newer arguments).
 * Each section says which version changed what. When a version leaves the
 * supported range, its branches go.
 *
 *-------------------------------------------------------------------------
 */
#ifndef COHORTSYNC_PG_COMPAT_H
#define COHORTSYNC_PG_COMPAT_H

#include "common/base64.h"
#include "common/scram-common.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "utils/resowner.h"
#include "utils/wait_event.h"

#if PG_VERSION_NUM < 150000
#error "cohortsync requires PostgreSQL 15 or later"
#endif

/*
 * The module's magic block. 18 can record the module's name and version
 * (pg_get_loaded_modules()). CS_VERSION is default_version of
 * cohortsync.control, passed by the Makefile.
 */
#ifndef CS_VERSION
#error "CS_VERSION is not defined: build with the Makefile, which takes it from cohortsync.control"
#endif
#ifdef PG_MODULE_MAGIC_EXT
#define CS_MODULE_MAGIC PG_MODULE_MAGIC_EXT(.name = "cohortsync", .version = CS_VERSION)
#else
#define CS_MODULE_MAGIC PG_MODULE_MAGIC
#endif

/*
 * 18 replaced the pg_attribute_noreturn() suffix with the pg_noreturn
 * prefix (C11 _Noreturn where the compiler has it). Write pg_noreturn before
 * the declaration: GCC and Clang accept the older attribute there too.
 */
#ifndef pg_noreturn
#define pg_noreturn pg_attribute_noreturn()
#endif

/*
 * 17 numbers processes with ProcNumber (storage/procnumber.h): PGPROC lost
 * its pgprocno field, the running process's number is MyProcNumber, and
 * INVALID_PGPROCNO became INVALID_PROC_NUMBER.
 */
#if PG_VERSION_NUM < 170000
typedef int ProcNumber;

#define INVALID_PROC_NUMBER INVALID_PGPROCNO
#define MyProcNumber (MyProc->pgprocno)
#endif

/*
 * 17: CreateWaitEventSet() takes the ResourceOwner that releases the set (and
 * its epoll descriptor) on error; the set itself lives in TopMemoryContext.
 * Before 17 it takes the memory context to allocate the set in. Callers name
 * both, and each server gets the one it understands.
 */
#if PG_VERSION_NUM >= 170000
#define cs_CreateWaitEventSet(context, resowner, nevents) \
	CreateWaitEventSet((resowner), (nevents))
#else
#define cs_CreateWaitEventSet(context, resowner, nevents) \
	CreateWaitEventSet((context), (nevents))
#endif

/*
 * 17 lets an extension name its waits (WaitEventExtensionNew()): they show in
 * pg_stat_activity.wait_event under that name instead of "Extension". Before
 * 17 every wait of an extension is PG_WAIT_EXTENSION. The name is looked up
 * in shared memory under a lock, so a process calls this once, after it
 * started (not in _PG_init), and keeps the result.
 */
#if PG_VERSION_NUM >= 170000
#define cs_wait_event_new(name) WaitEventExtensionNew(name)
#else
#define cs_wait_event_new(name) ((void) (name), (uint32) PG_WAIT_EXTENSION)
#endif

/*
 * 16 replaced the pg_<object>_ownercheck() family with object_ownercheck().
 * cohortsync asks only about databases.
 */
#if PG_VERSION_NUM < 160000
#include "catalog/pg_database_d.h"
#include "utils/acl.h"

static inline bool
cs_object_ownercheck(Oid classid, Oid objectid, Oid roleid)
{
	if (classid != DatabaseRelationId)
		elog(ERROR, "cohortsync: no ownership check for class %u", classid);
	return pg_database_ownercheck(objectid, roleid);
}

#define object_ownercheck(classid, objectid, roleid) \
	cs_object_ownercheck((classid), (objectid), (roleid))
#endif

/*
 * 16 replaced the pg_<object>_aclcheck() family with object_aclcheck().
 * cohortsync asks only about functions (ingest.c).
 */
#if PG_VERSION_NUM < 160000
#include "catalog/pg_proc_d.h"
#include "utils/acl.h"

static inline AclResult
cs_object_aclcheck(Oid classid, Oid objectid, Oid roleid, AclMode mode)
{
	if (classid != ProcedureRelationId)
		elog(ERROR, "cohortsync: no privilege check for class %u", classid);
	return pg_proc_aclcheck(objectid, roleid, mode);
}

#define object_aclcheck(classid, objectid, roleid, mode) \
	cs_object_aclcheck((classid), (objectid), (roleid), (mode))
#endif

/*
 * 16 added ExecInsertIndexTuples()'s last argument, onlySummarizing (an
 * UPDATE that changed only summarized columns); bulk_insert.c passes false,
 * and 15 takes the call without it.
 */
#if PG_VERSION_NUM >= 160000
#define cs_ExecInsertIndexTuples ExecInsertIndexTuples
#else
#define cs_ExecInsertIndexTuples(rri, slot, estate, update, noDupErr, specConflict, \
								 arbiterIndexes, onlySummarizing) \
	ExecInsertIndexTuples((rri), (slot), (estate), (update), (noDupErr), \
						  (specConflict), (arbiterIndexes))
#endif

/*
 * SCRAM (webhook_auth.c).
 *
 * libpq/scram.h cannot be included: it pulls in libpq-be.h and with it the
 * GSSAPI headers, absent from a server build environment without Kerberos
 * development files. Its two functions are declared here.
 *
 * 16 made the hash a parameter (hash type and key length) of
 * parse_scram_secret(), scram_SaltedPassword() and scram_ServerKey(); before,
 * SCRAM meant SHA-256 and its key length. The cs_ versions take the 16
 * arguments on every server.
 *
 * 18 made binary data uint8 rather than char: the salt that pg_b64_decode()
 * writes and scram_SaltedPassword() reads. The cs_ versions take uint8.
 */
extern char *pg_be_scram_build_secret(const char *password);

#if PG_VERSION_NUM >= 160000
extern bool parse_scram_secret(const char *secret, int *iterations,
							   pg_cryptohash_type *hash_type, int *key_length,
							   char **salt, uint8 *stored_key, uint8 *server_key);

#define CS_SCRAM_MAX_KEY_LEN SCRAM_MAX_KEY_LEN
#define cs_parse_scram_secret parse_scram_secret
#define cs_scram_ServerKey scram_ServerKey
#else
extern bool parse_scram_secret(const char *secret, int *iterations, char **salt,
							   uint8 *stored_key, uint8 *server_key);

#define CS_SCRAM_MAX_KEY_LEN SCRAM_KEY_LEN

static inline bool
cs_parse_scram_secret(const char *secret, int *iterations,
					  pg_cryptohash_type *hash_type, int *key_length,
					  char **salt, uint8 *stored_key, uint8 *server_key)
{
	*hash_type = PG_SHA256;
	*key_length = SCRAM_KEY_LEN;
	return parse_scram_secret(secret, iterations, salt, stored_key, server_key);
}

#define cs_scram_ServerKey(salted_password, hash_type, key_length, result, errstr) \
	scram_ServerKey((salted_password), (result), (errstr))
#endif

#if PG_VERSION_NUM >= 180000
#define cs_pg_b64_decode pg_b64_decode
#define cs_scram_SaltedPassword scram_SaltedPassword
#else
#define cs_pg_b64_decode(src, len, dst, dstlen) \
	pg_b64_decode((src), (len), (char *) (dst), (dstlen))
#if PG_VERSION_NUM >= 160000
#define cs_scram_SaltedPassword(password, hash_type, key_length, salt, saltlen, \
								iterations, result, errstr) \
	scram_SaltedPassword((password), (hash_type), (key_length), \
						 (const char *) (salt), (saltlen), (iterations), \
						 (result), (errstr))
#else
#define cs_scram_SaltedPassword(password, hash_type, key_length, salt, saltlen, \
								iterations, result, errstr) \
	scram_SaltedPassword((password), (const char *) (salt), (saltlen), \
						 (iterations), (result), (errstr))
#endif
#endif

#endif							/* COHORTSYNC_PG_COMPAT_H */
