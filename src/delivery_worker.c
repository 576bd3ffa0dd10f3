/*-------------------------------------------------------------------------
 *
 * delivery_worker.c
 *	  The background worker that drains cohortsync.outbox into the
 *	  destinations: its registration, settings and main loop.
 *
 * One worker per cluster, connected to cohortsync.database. Its loop:
 *
 *	1. settle every finished request, each in one short transaction
 *	   (delivery_outcome.c);
 *	2. when woken (a commit queued records), when a request finished, or when
 *	   the poll interval or the next retry is due: for every active
 *	   destination with a free slot, claim a batch in a short read-only
 *	   transaction, commit, and start its request at once, then claim the
 *	   next (delivery_schedule.c, delivery_request.c);
 *	3. wait on the latch, postmaster death and libcurl's sockets and timer
 *	   (http_client.c).
 *
 * No transaction, lock or snapshot is held while requests are in flight. A
 * record is deleted only after the destination answered for it, so a crash at
 * any point loses nothing: the next worker starts with no leases and sends
 * again what was in flight (at least once; duplicates are bounded by the
 * batches in flight).
 *
 * Committing backends wake the worker through its latch, found in a small
 * piece of shared memory (delivery_shmem.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "delivery.h"
#include "delivery_worker.h"
#include "guc_common.h"
#include "history_prune.h"
#include "pg_compat.h"
#include "worker_db.h"

PGDLLEXPORT void cs_delivery_main(Datum main_arg);

/* GUCs */
int			cs_batch_size = 1000;
int			cs_max_inflight = 4;
int			cs_max_retry_age_s = 3 * 24 * 3600;
int			cs_poll_interval_ms = 5000;

/*
 * The largest values the defaults below may take: no kind allows more. Each
 * destination's effective value is capped by its kind's own limit in SQL
 * (cohortsync._kind_limits, _delivery_targets); the worker applies none.
 */
#define MAX_BATCH_ANY_KIND 1000
#define MAX_INFLIGHT_ANY_KIND 15

/* While a pass of history pruning goes on, its steps run this often (ms). */
#define PRUNE_PAUSE_MS 1000

/* Errors of the same kind are logged at most this often. */
#define LOG_INTERVAL_MS 60000

MemoryContext cs_worker_cxt;
MemoryContext cs_loop_cxt;
static TimestampTz last_error_log = 0;
static uint32 wait_event_delivery;	/* the worker's waits, in pg_stat_activity */

/*-------------------------------------------------------------------------
 * Registration.
 *-------------------------------------------------------------------------
 */
void
cs_delivery_init(void)
{
	BackgroundWorker worker;

	cs_define_common_gucs();

	DefineCustomIntVariable("cohortsync.batch_size",
							"Records per request, for destinations that set none.",
							"Capped by the destination's kind's limit (cohortsync._kind_limits).",
							&cs_batch_size, 1000, 1, MAX_BATCH_ANY_KIND,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("cohortsync.max_inflight",
							"Requests in flight per destination, for destinations that set none.",
							"Capped by the destination's kind's limit (cohortsync._kind_limits).",
							&cs_max_inflight, 4, 1, MAX_INFLIGHT_ANY_KIND,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("cohortsync.max_retry_age",
							"How long a record is retried before it is moved to failed_records.",
							NULL,
							&cs_max_retry_age_s, 3 * 24 * 3600, 1, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("cohortsync.connect_timeout",
							"Timeout for connecting to a destination.",
							NULL,
							&cs_connect_timeout_ms, 10000, 100, 600000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("cohortsync.request_timeout",
							"Timeout for a whole upload request, connecting included.",
							NULL,
							&cs_request_timeout_ms, 60000, 100, 3600000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomStringVariable("cohortsync.ca_file",
							   "File of CA certificates to verify destinations' with (empty: the system's).",
							   NULL,
							   &cs_ca_file, "",
							   PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("cohortsync.poll_interval",
							"How often the delivery worker looks for records without being woken.",
							"Commits wake it at once; this is a safety net.",
							&cs_poll_interval_ms, 5000, 100, 3600000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);

	if (!process_shared_preload_libraries_in_progress)
		return;

	cs_delivery_shmem_init();

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	/* never on a standby: it starts when recovery has finished (promotion) */
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 5;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "cohortsync");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "cs_delivery_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "cohortsync delivery");
	snprintf(worker.bgw_type, BGW_MAXLEN, "cohortsync delivery");
	cs_worker_register(&worker);
}

/*-------------------------------------------------------------------------
 * What the files of the worker share.
 *-------------------------------------------------------------------------
 */
int
cs_delivery_lease_ms(void)
{
	/* a request cannot outlive its timeout; the margin covers the outcome */
	return cs_request_timeout_ms + cs_connect_timeout_ms + 60000;
}

/* Log a caught error, at most once a minute. */
void
cs_delivery_log_error(const char *doing, ErrorData *edata)
{
	TimestampTz now = GetCurrentTimestamp();

	if (last_error_log != 0 && !TimestampDifferenceExceeds(last_error_log, now, LOG_INTERVAL_MS))
		return;
	last_error_log = now;
	ereport(LOG,
			(errmsg("cohortsync delivery: error while %s: %s", doing, edata->message),
			 errhint("The worker carries on; records stay queued. Further errors are "
					 "logged at most once a minute.")));
}

void
cs_delivery_start_transaction(const char *activity)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "cohortsync: SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, activity);
}

void
cs_delivery_finish_transaction(void)
{
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
}

/* Abort after a caught error; returns the error, copied into cs_loop_cxt. */
ErrorData *
cs_delivery_recover_from_error(void)
{
	ErrorData  *edata;

	MemoryContextSwitchTo(cs_loop_cxt);
	edata = CopyErrorData();
	FlushErrorState();
	AbortCurrentTransaction();
	MemoryContextSwitchTo(cs_loop_cxt);
	pgstat_report_activity(STATE_IDLE, NULL);
	return edata;
}

/*-------------------------------------------------------------------------
 * The main loop.
 *-------------------------------------------------------------------------
 */
void
cs_delivery_main(Datum main_arg)
{
	TimestampTz next_claim = 0;
	bool		woken = true;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();

	/* DROP DATABASE and a missing database: see worker_db.c */
	cs_worker_connect(CS_WORKER_DELIVERY, "cohortsync delivery");
	cs_delivery_publish_worker();
	pgstat_report_appname("cohortsync delivery");
	pgstat_report_activity(STATE_IDLE, NULL);
	wait_event_delivery = cs_wait_event_new("CohortsyncDelivery");

	cs_worker_cxt = AllocSetContextCreate(TopMemoryContext, "cohortsync delivery",
									   ALLOCSET_DEFAULT_SIZES);
	cs_loop_cxt = AllocSetContextCreate(cs_worker_cxt, "cohortsync delivery loop",
									 ALLOCSET_DEFAULT_SIZES);
	cs_http_init();

	ereport(LOG, (errmsg("cohortsync delivery worker started in database \"%s\"", cs_database)));

	for (;;)
	{
		bool		settled_any = false;
		bool		pruning;
		CsHttpCall *call;
		TimestampTz now;
		long		timeout_ms;

		MemoryContextSwitchTo(cs_loop_cxt);
		MemoryContextReset(cs_loop_cxt);
		CHECK_FOR_INTERRUPTS();

		if (ShutdownRequestPending)
			break;
		/* requests in flight are abandoned; the next worker sends them again */
		if (cs_worker_leave_requested(CS_WORKER_DELIVERY))
			cs_worker_leave(CS_WORKER_DELIVERY, "cohortsync delivery");
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		while ((call = cs_http_next_finished()) != NULL)
		{
			cs_outcome_settle((CsRequest *) call->owner);
			settled_any = true;
		}

		now = GetCurrentTimestamp();
		if (woken || settled_any || now >= next_claim)
		{
			long		sleep_ms = cs_schedule_claim_and_send(!woken && !settled_any);

			next_claim = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), sleep_ms);
		}

		/* cohortsync.history_retention: a few ms of pruning, when a pass is due */
		pruning = cs_history_prune_tick();
		/* a drained outbox gives its space back */
		cs_outbox_shrink_tick(cs_requests == NIL);

		now = GetCurrentTimestamp();
		timeout_ms = next_claim > now ? (long) ((next_claim - now + 999) / 1000) : 0;
		if (pruning)
			timeout_ms = Min(timeout_ms, PRUNE_PAUSE_MS);
		woken = cs_http_wait(timeout_ms, wait_event_delivery);
	}

	/* SIGTERM: abandon what is in flight; the leases are released by the next worker */
	while (cs_requests != NIL)
		cs_request_free((CsRequest *) linitial(cs_requests));
	ereport(LOG, (errmsg("cohortsync delivery worker shutting down")));
	/* exit 1, not 0: a worker terminated on its own (DROP DATABASE ... FORCE) is restarted */
	proc_exit(1);
}
