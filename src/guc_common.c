/*-------------------------------------------------------------------------
 *
 * guc_common.c
 *	  GUCs shared by the parts of cohortsync that run background workers.
 *
 * Both the delivery worker and the HTTP listener connect to one database,
 * named by cohortsync.database. Each part calls cs_define_common_gucs() from
 * its init function; the static flag makes the second call a no-op, because
 * defining a GUC twice is an error.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/guc.h"

#include "guc_common.h"

char	   *cs_database = NULL;

void
cs_define_common_gucs(void)
{
	static bool defined = false;

	if (defined)
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
