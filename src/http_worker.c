/*-------------------------------------------------------------------------
 *
 * http_worker.c
 *	  The webhook listener's database workers: each runs the transactions of
 *	  one request at a time, handed to it by the acceptor (http_pool.c).
 *
 * cohortsync.http_workers of them are registered, "cohortsync http listener
 * 1" to N. Like the listener before them, they connect to cohortsync.database
 * only once cohortsync.http_listen is set, leave it for DROP DATABASE (between
 * two requests: a request's transaction is never cut short for it) and wait
 * quietly while it does not exist (worker_db.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/guc.h"
#include "utils/memutils.h"

#include "http_common.h"
#include "http_listener.h"
#include "http_pool.h"
#include "pg_compat.h"
#include "worker_db.h"

static uint32 wait_event_worker;	/* our wait for a job, in pg_stat_activity */

/* each worker has a slot of its own in worker_db.c too */
StaticAssertDecl(CS_HTTP_MAX_WORKERS <= CS_MAX_WORKER_INSTANCES,
				 "worker_db.c has fewer slots than cohortsync.http_workers allows");

static void
reload_if_asked(void)
{
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
	}
}

static void
wait_for_latch(void)
{
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_EXIT_ON_PM_DEATH, -1L,
					 wait_event_worker);
	ResetLatch(MyLatch);
	/* a cancel between requests has nothing to cancel (see http_listener.c) */
	QueryCancelPending = false;
	CHECK_FOR_INTERRUPTS();
}

void
cs_http_worker_main(Datum main_arg)
{
	int			index = DatumGetInt32(main_arg);
	char		name[BGW_MAXLEN];
	MemoryContext job_cxt;

	snprintf(name, sizeof(name), "%s %d", CS_HTTP_WORKER_NAME, index + 1);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, cs_http_handle_sigterm);
	BackgroundWorkerUnblockSignals();
	wait_event_worker = cs_wait_event_new("CohortsyncHttpWorker");

	/* off: wait for a reload that turns the listener on, unconnected */
	while (!cs_http_shutdown_requested && cs_http_listen[0] == '\0')
	{
		wait_for_latch();
		reload_if_asked();
	}
	if (cs_http_shutdown_requested)
		proc_exit(1);

	cs_worker_set_instance(index);
	cs_worker_connect(CS_WORKER_LISTENER, name);
	SetConfigOption("application_name", name, PGC_USERSET, PGC_S_SESSION);
	pgstat_report_activity(STATE_IDLE, NULL);
	cs_http_pool_worker_ready(index);

	job_cxt = AllocSetContextCreate(TopMemoryContext, "cohortsync http job",
									ALLOCSET_DEFAULT_SIZES);
	while (!cs_http_shutdown_requested)
	{
		MemoryContext oldcxt;
		bool		served;

		/* DROP DATABASE: go, between two requests */
		if (cs_worker_leave_requested(CS_WORKER_LISTENER))
			cs_worker_leave(CS_WORKER_LISTENER, name);
		reload_if_asked();

		oldcxt = MemoryContextSwitchTo(job_cxt);
		served = cs_http_pool_worker_serve(index);
		MemoryContextSwitchTo(oldcxt);
		MemoryContextReset(job_cxt);

		if (!served)
			wait_for_latch();
	}

	ereport(DEBUG1, (errmsg("%s: shutting down", name)));
	/* exit 1: restarted if it was pg_terminate_backend(); not at shutdown */
	proc_exit(1);
}
