/*-------------------------------------------------------------------------
 *
 * cohortsync.c
 *	  Module entry point: the magic block and _PG_init.
 *
 * The SQL functions work whether or not the library is preloaded. Only the
 * background workers need shared_preload_libraries; each part registers its
 * GUCs and, when preloading, its worker from an init function called here.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/guc.h"

#include "apply.h"
#include "change_origin.h"
#include "delivery.h"
#include "guc_common.h"
#include "history_prune.h"
#include "http_listener.h"
#include "outbox.h"
#include "pg_compat.h"
#include "worker_db.h"

CS_MODULE_MAGIC;

void		_PG_init(void);

void
_PG_init(void)
{
	/* each part's init function goes here, before the prefix is reserved */
	cs_define_common_gucs();
	cs_change_origin_init();
	cs_history_prune_init();
	cs_outbox_plan_init();
	cs_worker_db_init();
	/* workers cohortsync cannot do without first: see cs_worker_check_slots */
	cs_delivery_init();
	cs_apply_init();
	cs_http_listener_init();
	cs_worker_check_slots();

	MarkGUCPrefixReserved("cohortsync");
}
