/*-------------------------------------------------------------------------
 *
 * status.c
 *	  What the status functions need from the library: its version, and
 *	  whether a delivery worker serves the calling database.
 *
 * cohortsync.version(), cohortsync.status() and the view destination_status
 * are SQL; they call these two.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"

#include "delivery.h"
#include "guc_common.h"

/* The Makefile passes the control file's default_version; a build without it says so. */
#ifndef CS_VERSION
#define CS_VERSION "unknown"
#endif

PG_FUNCTION_INFO_V1(cohortsync_library_version);
PG_FUNCTION_INFO_V1(cohortsync_delivery_blocker);

/* cohortsync._library_version(): the version the loaded library was built as. */
Datum
cohortsync_library_version(PG_FUNCTION_ARGS)
{
	PG_RETURN_TEXT_P(cstring_to_text(CS_VERSION));
}

/*
 * cohortsync._delivery_blocker(sql_version text): why nothing of this
 * database is being delivered, or NULL when a delivery worker serves it and
 * the SQL objects (sql_version, pg_extension.extversion) are those of the
 * loaded library.
 */
Datum
cohortsync_delivery_blocker(PG_FUNCTION_ARGS)
{
	Oid			dboid;
	const char *here = get_database_name(MyDatabaseId);

	if (!cs_delivery_worker_database(&dboid))
		PG_RETURN_TEXT_P(cstring_to_text(
			"cohortsync is not in shared_preload_libraries: no delivery worker runs"));
	if (dboid != MyDatabaseId)
	{
		if (cs_database == NULL || here == NULL || strcmp(cs_database, here) != 0)
			PG_RETURN_TEXT_P(cstring_to_text(psprintf(
				"no delivery worker serves this database: cohortsync.database is \"%s\"",
				cs_database ? cs_database : "")));
		PG_RETURN_TEXT_P(cstring_to_text(
			"the delivery worker is not connected to this database yet (starting or restarting)"));
	}
	if (!PG_ARGISNULL(0) && strcmp(CS_VERSION, "unknown") != 0)
	{
		char	   *sql_version = text_to_cstring(PG_GETARG_TEXT_PP(0));

		if (strcmp(sql_version, CS_VERSION) != 0)
			PG_RETURN_TEXT_P(cstring_to_text(psprintf(
				"the extension's SQL objects are version %s, the loaded library %s: "
				"run ALTER EXTENSION cohortsync UPDATE", sql_version, CS_VERSION)));
	}
	PG_RETURN_NULL();
}

/*
 * For the delivery worker, inside a transaction with SPI connected: whether
 * the extension's SQL objects are of another version than the library (the
 * server was restarted with a new library, ALTER EXTENSION ... UPDATE has not
 * run yet). The old objects have no status that could say so; the worker's
 * log does. Fills *sql_version (palloc'd) when they differ.
 */
bool
cs_sql_version_differs(char **sql_version)
{
	char	   *v;

	if (strcmp(CS_VERSION, "unknown") == 0)
		return false;
	if (SPI_execute("SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'cohortsync'",
					true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		return false;
	v = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	if (v == NULL || strcmp(v, CS_VERSION) == 0)
		return false;
	*sql_version = v;
	return true;
}

const char *
cs_library_version(void)
{
	return CS_VERSION;
}
