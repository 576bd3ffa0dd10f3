/*-------------------------------------------------------------------------
 *
 * guc_common.c
 *	  Settings shared by more than one part of cohortsync.
 *
 * Each background worker's init function calls cs_define_common_gucs(), so
 * that no part depends on another having been initialised first. Defining a
 * custom variable twice is an error, hence the guard.
 *
 * PGC_POSTMASTER variables can only be created while shared_preload_libraries
 * is being processed (later it is a FATAL error). Without preloading there
 * are no workers, so there is nothing to define.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "utils/guc.h"

#include "guc_common.h"

char	   *cs_database = NULL;

void
cs_define_common_gucs(void)
{
	static bool defined = false;

	if (defined || !process_shared_preload_libraries_in_progress)
		return;
	defined = true;

	DefineCustomStringVariable("cohortsync.database",
							   "Database the cohortsync background workers connect to.",
							   "The extension must be installed in this database.",
							   &cs_database,
							   "postgres",
							   PGC_POSTMASTER,
							   0,
							   NULL, NULL, NULL);
}
