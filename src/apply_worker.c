/*-------------------------------------------------------------------------
 *
 * apply_worker.c
 *	  The "cohortsync apply" background worker: applies the full-sync swaps
 *	  (and the diff pages queued behind them) waiting in cohortsync.apply_queue.
 *
 * One worker per cluster, connected to cohortsync.database. Its loop:
 *
 *	1. list the cohorts with queued entries (a short read-only transaction);
 *	2. for each, apply its entries one per transaction, oldest first (see
 *	   apply_queue.c), skipping a cohort whose row another transaction holds;
 *	3. wait on the latch (set at the commit of a page that queued something),
 *	   postmaster death, or a timeout: short when a cohort was skipped or an
 *	   entry failed, else POLL_MS as a safety net.
 *
 * Between entries it holds no transaction. Everything it does for an entry
 * commits at once, so after a crash, an immediate shutdown or a failover the
 * next worker (on the promoted primary; none runs during recovery) finds the
 * entry still queued and applies it, exactly once.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "tcop/tcopprot.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "apply.h"
#include "guc_common.h"
#include "pg_compat.h"
#include "worker_db.h"

PGDLLEXPORT void cs_apply_main(Datum main_arg);

#define WORKER_NAME "cohortsync apply"

/* Look at the queue this often without being woken (a commit wakes the worker). */
#define POLL_MS 10000
/* Come back this soon to a cohort that was locked or whose entry failed. */
#define RETRY_MS 1000
/* Errors are logged at most this often. */
#define LOG_INTERVAL_MS 60000

/*-------------------------------------------------------------------------
 * Shared memory: where committing backends find the worker's latch.
 *-------------------------------------------------------------------------
 */
/*-------------------------------------------------------------------------
 * Registration.
 *-------------------------------------------------------------------------
 */
void
cs_apply_init(void)
{
	BackgroundWorker worker;

	if (!process_shared_preload_libraries_in_progress)
		return;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	/* never on a standby: it starts when recovery has finished (promotion) */
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 5;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "cohortsync");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "cs_apply_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, WORKER_NAME);
	snprintf(worker.bgw_type, BGW_MAXLEN, WORKER_NAME);
	cs_worker_register(&worker);
}

/*-------------------------------------------------------------------------
 * The worker.
 *-------------------------------------------------------------------------
 */
static MemoryContext loop_cxt;
static TimestampTz last_error_log = 0;
static bool extension_missing_logged = false;
/* what the wait loop shows in pg_stat_activity.wait_event (named on 17+) */
static uint32 wait_event_apply;

static void
start_transaction(const char *activity)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, activity);
}

static void
finish_transaction(void)
{
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
}

/* Abort after a caught error and log it, at most once a minute. */
static void
recover_from_error(const char *doing)
{
	ErrorData  *edata;
	TimestampTz now = GetCurrentTimestamp();

	MemoryContextSwitchTo(loop_cxt);
	edata = CopyErrorData();
	FlushErrorState();
	AbortCurrentTransaction();
	MemoryContextSwitchTo(loop_cxt);
	pgstat_report_activity(STATE_IDLE, NULL);

	if (last_error_log != 0 && !TimestampDifferenceExceeds(last_error_log, now, LOG_INTERVAL_MS))
		return;
	last_error_log = now;
	ereport(LOG,
			(errmsg(WORKER_NAME ": error while %s: %s", doing, edata->message),
			 errhint("The entry stays queued and is tried again. Further errors are "
					 "logged at most once a minute.")));
}

/* The cohorts with queued entries; NIL when none, the extension is missing or on error. */
static List *
queued_cohorts(void)
{
	List	   *volatile cohorts = NIL;
	volatile bool installed = false;

	PG_TRY();
	{
		start_transaction(WORKER_NAME ": reading the queue");
		installed = cs_apply_queue_installed();
		if (installed)
			cohorts = cs_queued_cohorts(loop_cxt);
		finish_transaction();
	}
	PG_CATCH();
	{
		recover_from_error("reading the queue");
		return NIL;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(loop_cxt);

	if (!installed && !extension_missing_logged)
		ereport(LOG,
				(errmsg(WORKER_NAME ": extension \"cohortsync\" 0.3.0 or later is not installed in database \"%s\"; waiting",
						cs_database)));
	extension_missing_logged = !installed;
	return cohorts;
}

/*
 * Apply the next entry of a cohort in its own transaction. Returns 1 when one
 * was applied, 0 when the queue is empty, -1 when the cohort is busy (its row
 * locked by a page or by apply_pending()) or the entry failed.
 */
static int
apply_one(CsQueuedCohort *c)
{
	volatile int64 n = 0;

	PG_TRY();
	{
		start_transaction(WORKER_NAME ": applying a queued full sync or page");
		n = cs_apply_cohort_queue(c->project_id, c->cohort_id, false, 1);
		finish_transaction();
	}
	PG_CATCH();
	{
		recover_from_error("applying a queued entry");
		n = -1;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(loop_cxt);
	return (int) n;
}

/* One pass over the queue. Returns whether something must be tried again soon. */
static bool
apply_queued(void)
{
	List	   *cohorts = queued_cohorts();
	ListCell   *lc;
	bool		retry = false;

	foreach(lc, cohorts)
	{
		CsQueuedCohort *c = (CsQueuedCohort *) lfirst(lc);
		int			rc;

		do
		{
			CHECK_FOR_INTERRUPTS();
			if (cs_worker_leave_requested(CS_WORKER_APPLY))
				return false;
			rc = apply_one(c);
		} while (rc > 0);
		if (rc < 0)
			retry = true;
	}
	return retry;
}

void
cs_apply_main(Datum main_arg)
{
	pqsignal(SIGHUP, SignalHandlerForConfigReload);

	/*
	 * SIGTERM ends the process at the next CHECK_FOR_INTERRUPTS, in the middle
	 * of a swap too: the swap is rolled back and stays queued for the next
	 * worker, and a shutdown does not wait for a ten-million-member swap.
	 */
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	/* DROP DATABASE and a missing database: see worker_db.c */
	cs_worker_connect(CS_WORKER_APPLY, WORKER_NAME);
	pgstat_report_appname(WORKER_NAME);
	pgstat_report_activity(STATE_IDLE, NULL);

	loop_cxt = AllocSetContextCreate(TopMemoryContext, WORKER_NAME " loop",
									 ALLOCSET_DEFAULT_SIZES);

	wait_event_apply = cs_wait_event_new("CohortsyncApply");
	ereport(LOG, (errmsg(WORKER_NAME " worker started in database \"%s\"", cs_database)));

	for (;;)
	{
		bool		retry;

		MemoryContextSwitchTo(loop_cxt);
		MemoryContextReset(loop_cxt);
		CHECK_FOR_INTERRUPTS();

		if (cs_worker_leave_requested(CS_WORKER_APPLY))
			cs_worker_leave(CS_WORKER_APPLY, WORKER_NAME);
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		/* reset before looking, so that a commit during the pass wakes us again */
		ResetLatch(MyLatch);
		retry = apply_queued();

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 retry ? RETRY_MS : POLL_MS, wait_event_apply);
	}
}
