/*-------------------------------------------------------------------------
 *
 * delivery_worker.c
 *	  The background worker that drains cohortsync.outbox into CleverTap.
 *
 * One worker per cluster, connected to cohortsync.database. Its loop:
 *
 *	1. settle every finished request, each in one short transaction
 *	   (cohortsync._record_outcome);
 *	2. when woken (a commit queued records), when a request finished, or when
 *	   the poll interval or the next retry is due: for every active
 *	   destination with a free slot, claim a batch in a short read-only
 *	   transaction (cohortsync._claim_due), commit, and start its request at
 *	   once, then claim the next;
 *	3. wait on the latch, postmaster death and libcurl's sockets and timer.
 *
 * Leases live in this process's memory, not in rows: there is exactly one
 * worker, so what it has in flight is simply what its requests carry. A claim
 * walks the queue from a cursor per destination (the highest id it has looked
 * at), which starts it after everything in flight; records it had to pass
 * over (blocked by an identity in flight, waiting for a retry, or committed
 * late below the cursor) are found by scanning from the start again once
 * nothing of the destination is in flight. See claim_for().
 *
 * No transaction, lock or snapshot is held while requests are in flight. A
 * record is deleted only after CleverTap answered for it, so a crash at any
 * point loses nothing: the next worker starts with no leases and sends again
 * what was in flight (at least once; duplicates are bounded by the batches in
 * flight).
 *
 * Committing backends wake the worker through its latch, found in a small
 * piece of shared memory (see cohortsync_wake_delivery below).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/tuplestore.h"
#include "executor/spi.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "clevertap_http.h"
#include "delivery.h"
#include "guc_common.h"
#include "history_prune.h"
#include "outbox.h"
#include "pg_compat.h"
#include "worker_db.h"

PGDLLEXPORT void cs_delivery_main(Datum main_arg);
PG_FUNCTION_INFO_V1(cohortsync_wake_delivery);
PG_FUNCTION_INFO_V1(cohortsync_worker_in_flight);

/* GUCs */
static int	cs_batch_size = 1000;
static int	cs_max_inflight = 4;
static int	cs_max_retry_age_s = 3 * 24 * 3600;
static int	cs_poll_interval_ms = 5000;

/* CleverTap's limits: records per request, concurrent requests per account */
#define CT_MAX_BATCH 1000
#define CT_MAX_CONCURRENT 15

/* While a pass of history pruning goes on, its steps run this often (ms). */
#define PRUNE_PAUSE_MS 1000

/* Errors of the same kind are logged at most this often. */
#define LOG_INTERVAL_MS 60000

/*-------------------------------------------------------------------------
 * Shared memory: where committing backends find the worker.
 *-------------------------------------------------------------------------
 */
/*
 * Records in flight per destination, as the worker last published them, for
 * destination_status.in_flight (the leases are in the worker's memory, so the
 * view cannot count them in the table). Destinations beyond CS_PUBLISHED_MAX,
 * or with names too long for a slot, show 0.
 */
#define CS_PUBLISHED_MAX 64
#define CS_PUBLISHED_NAMELEN 128

typedef struct CsPublishedInFlight
{
	char		destination[CS_PUBLISHED_NAMELEN];
	int64		records;
} CsPublishedInFlight;

typedef struct CsDeliveryShared
{
	ProcNumber	worker_pgprocno;	/* INVALID_PROC_NUMBER when no worker runs */
	slock_t		mutex;			/* protects npublished and published */
	int			npublished;
	CsPublishedInFlight published[CS_PUBLISHED_MAX];
} CsDeliveryShared;

static CsDeliveryShared *cs_shared = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void
cs_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(CsDeliveryShared)));
}

static void
cs_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	cs_shared = ShmemInitStruct("cohortsync delivery", sizeof(CsDeliveryShared), &found);
	if (!found)
	{
		cs_shared->worker_pgprocno = INVALID_PROC_NUMBER;
		SpinLockInit(&cs_shared->mutex);
		cs_shared->npublished = 0;
	}
	LWLockRelease(AddinShmemInitLock);
}

/*
 * cohortsync._wake_delivery(): the outbox trigger calls it when it queued
 * records; the worker looks once the transaction commits (worker_db.c).
 */
Datum
cohortsync_wake_delivery(PG_FUNCTION_ARGS)
{
	cs_worker_wake_at_commit(CS_WORKER_DELIVERY);
	PG_RETURN_VOID();
}

/*
 * cohortsync._worker_in_flight(): the worker's published in-flight counts.
 * Nothing when the library is not preloaded or no worker has published.
 */
Datum
cohortsync_worker_in_flight(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	CsPublishedInFlight copy[CS_PUBLISHED_MAX];
	int			n = 0;

	InitMaterializedSRF(fcinfo, 0);
	if (cs_shared != NULL)
	{
		SpinLockAcquire(&cs_shared->mutex);
		n = cs_shared->npublished;
		memcpy(copy, cs_shared->published, sizeof(CsPublishedInFlight) * n);
		SpinLockRelease(&cs_shared->mutex);
	}
	for (int i = 0; i < n; i++)
	{
		Datum		values[2];
		bool		nulls[2] = {false, false};

		values[0] = CStringGetTextDatum(copy[i].destination);
		values[1] = Int64GetDatum(copy[i].records);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/*
 * For the status functions (status.c): false when shared memory is absent (the
 * library is not preloaded); else *dboid is the database the delivery worker
 * is connected to, InvalidOid when none runs.
 */
bool
cs_delivery_worker_database(Oid *dboid)
{
	ProcNumber	procno;

	*dboid = InvalidOid;
	if (cs_shared == NULL)
		return false;
	procno = cs_shared->worker_pgprocno;
	pg_read_barrier();
	if (procno != INVALID_PROC_NUMBER)
		*dboid = GetPGProcByNumber(procno)->databaseId;
	return true;
}

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
							"Records per CleverTap upload request.",
							"CleverTap accepts at most 1000.",
							&cs_batch_size, 1000, 1, CT_MAX_BATCH,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("cohortsync.max_inflight",
							"Upload requests in flight per destination.",
							"CleverTap allows at most 15 concurrent requests per account.",
							&cs_max_inflight, 4, 1, CT_MAX_CONCURRENT,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("cohortsync.max_retry_age",
							"How long a record is retried before it is moved to failed_records.",
							NULL,
							&cs_max_retry_age_s, 3 * 24 * 3600, 1, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("cohortsync.connect_timeout",
							"Timeout for connecting to CleverTap.",
							NULL,
							&cs_connect_timeout_ms, 10000, 100, 600000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("cohortsync.request_timeout",
							"Timeout for a whole upload request, connecting included.",
							NULL,
							&cs_request_timeout_ms, 60000, 100, 3600000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomStringVariable("cohortsync.ca_file",
							   "File of CA certificates to verify CleverTap's with (empty: the system's).",
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

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = cs_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = cs_shmem_startup;

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
 * The worker.
 *-------------------------------------------------------------------------
 */

/*
 * One claim of records for one destination, sent as one request, or, after a
 * 400, as consecutive pieces: ranges [lo, hi) of the claim, one at a time, so
 * that the records of an identity still go out in order.
 */
typedef struct CsRequest
{
	MemoryContext cxt;
	char	   *destination;
	char	   *base_url;
	char	   *account_id;
	char	   *passcode;
	CsClaim		claim;
	int			lo;				/* the piece in flight */
	int			hi;
	int			npending;		/* pieces still to send, a stack: top is next */
	int		   *pending_lo;
	int		   *pending_hi;
	StringInfoData body;
	CsHttpCall	call;
} CsRequest;

/*
 * What the worker knows of one destination's queue. cursor: every record with
 * an id above it has not been looked at since the last scan from the start;
 * everything in flight is at or below it. holes: a record at or below the
 * cursor may be waiting (it was passed over, came back for a retry, or was
 * committed late by a transaction in progress); rescan: the last walk reached
 * the end of the queue with holes, so no more is claimed until nothing of the
 * destination is in flight, and then the walk starts from the beginning.
 */
typedef struct CsDestState
{
	char	   *name;
	int64		cursor;
	bool		holes;
	bool		rescan;
	bool		full_pass;		/* the walks since the cursor was 0 have not reached the end */
	bool		active;			/* seen active at the last claim */
} CsDestState;

/* Walks that claim nothing (whole batches blocked) allowed per turn of the loop. */
#define MAX_EMPTY_WALKS 8

static List *dest_states = NIL;		/* CsDestState *, in worker_cxt */
static MemoryContext worker_cxt;	/* the worker's long-lived data */
static MemoryContext loop_cxt;		/* reset on every turn of the loop */
static List *requests = NIL;		/* CsRequest *, in flight */
static int	known_destinations = 0; /* active destinations at the last claim */
static bool leases_released = false;
static bool extension_missing_logged = false;
static bool version_checked = false;	/* the SQL objects' version was compared */
static TimestampTz last_error_log = 0;
static uint32 wait_event_delivery;	/* the worker's waits, in pg_stat_activity */

static int
lease_ms(void)
{
	/* a request cannot outlive its timeout; the margin covers the outcome */
	return cs_request_timeout_ms + cs_connect_timeout_ms + 60000;
}

static void
unpublish_worker(int code, Datum arg)
{
	if (cs_shared != NULL)
	{
		SpinLockAcquire(&cs_shared->mutex);
		cs_shared->npublished = 0;
		SpinLockRelease(&cs_shared->mutex);
		cs_shared->worker_pgprocno = INVALID_PROC_NUMBER;
	}
}

/* Log a caught error, at most once a minute. */
static void
log_caught_error(const char *doing, ErrorData *edata)
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

/* Whether a retry is worth a log line: at most one a minute. */
static bool
retry_log_due(void)
{
	static TimestampTz last_retry_log = 0;
	TimestampTz now = GetCurrentTimestamp();

	if (last_retry_log != 0 && !TimestampDifferenceExceeds(last_retry_log, now, LOG_INTERVAL_MS))
		return false;
	last_retry_log = now;
	return true;
}

static void
start_transaction(const char *activity)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "cohortsync: SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, activity);
}

static void
finish_transaction(void)
{
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
}

/* Abort after a caught error; returns the error, copied into loop_cxt. */
static ErrorData *
recover_from_error(void)
{
	ErrorData  *edata;

	MemoryContextSwitchTo(loop_cxt);
	edata = CopyErrorData();
	FlushErrorState();
	AbortCurrentTransaction();
	MemoryContextSwitchTo(loop_cxt);
	pgstat_report_activity(STATE_IDLE, NULL);
	return edata;
}

static void
free_request(CsRequest *req)
{
	if (req->call.easy != NULL)
		cs_http_abandon(&req->call);
	/* wipe the passcode before the memory goes back to the allocator */
	if (req->passcode)
		explicit_bzero(req->passcode, strlen(req->passcode));
	requests = list_delete_ptr(requests, req);
	MemoryContextDelete(req->cxt);
}

static CsRequest *
new_request(CsDestination *dest)
{
	MemoryContext cxt = AllocSetContextCreate(worker_cxt, "cohortsync request",
											  ALLOCSET_DEFAULT_SIZES);
	CsRequest  *req = MemoryContextAllocZero(cxt, sizeof(CsRequest));

	req->cxt = cxt;
	req->destination = MemoryContextStrdup(cxt, dest->name);
	req->base_url = MemoryContextStrdup(cxt, dest->base_url);
	req->account_id = MemoryContextStrdup(cxt, dest->account_id);
	req->passcode = MemoryContextStrdup(cxt, dest->passcode);
	return req;
}

/* Send records [lo, hi) of the request's claim. */
static void
send_piece(CsRequest *req, int lo, int hi)
{
	MemoryContext old = MemoryContextSwitchTo(req->cxt);

	req->lo = lo;
	req->hi = hi;
	if (req->body.data == NULL)
		initStringInfo(&req->body);
	else
		resetStringInfo(&req->body);
	appendStringInfoString(&req->body, "{\"d\":[");
	for (int i = lo; i < hi; i++)
	{
		if (i > lo)
			appendStringInfoChar(&req->body, ',');
		appendStringInfoString(&req->body, req->claim.records[i]);
	}
	appendStringInfoString(&req->body, "]}");
	if (req->call.response.data != NULL)
	{
		pfree(req->call.response.data);
		req->call.response.data = NULL;
	}
	req->call.owner = req;
	cs_http_start(&req->call, req->base_url, req->account_id, req->passcode, &req->body);
	MemoryContextSwitchTo(old);
}

static int
in_flight_for(const char *destination)
{
	ListCell   *lc;
	int			n = 0;

	foreach(lc, requests)
	{
		CsRequest  *req = (CsRequest *) lfirst(lc);

		if (strcmp(req->destination, destination) == 0)
			n++;
	}
	return n;
}

/* Records a request still carries: the piece in flight and the pieces to come. */
static int64
records_of(CsRequest *req)
{
	int64		n = req->hi - req->lo;

	for (int p = 0; p < req->npending; p++)
		n += req->pending_hi[p] - req->pending_lo[p];
	return n;
}

/* Publish the records in flight per destination for destination_status. */
static void
publish_in_flight(void)
{
	CsPublishedInFlight pub[CS_PUBLISHED_MAX];
	int			n = 0;
	ListCell   *lc;

	if (cs_shared == NULL)
		return;
	foreach(lc, requests)
	{
		CsRequest  *req = (CsRequest *) lfirst(lc);
		int			i;

		if (strlen(req->destination) >= CS_PUBLISHED_NAMELEN)
			continue;
		for (i = 0; i < n; i++)
			if (strcmp(pub[i].destination, req->destination) == 0)
				break;
		if (i == n)
		{
			if (n == CS_PUBLISHED_MAX)
				continue;
			strlcpy(pub[n].destination, req->destination, CS_PUBLISHED_NAMELEN);
			pub[n].records = 0;
			n++;
		}
		pub[i].records += records_of(req);
	}
	SpinLockAcquire(&cs_shared->mutex);
	memcpy(cs_shared->published, pub, sizeof(CsPublishedInFlight) * n);
	cs_shared->npublished = n;
	SpinLockRelease(&cs_shared->mutex);
}

static CsDestState *
dest_state(const char *name)
{
	ListCell   *lc;
	CsDestState *st;
	MemoryContext old;

	foreach(lc, dest_states)
	{
		st = (CsDestState *) lfirst(lc);
		if (strcmp(st->name, name) == 0)
			return st;
	}
	old = MemoryContextSwitchTo(worker_cxt);
	st = palloc0(sizeof(CsDestState));
	st->name = pstrdup(name);
	st->full_pass = true;
	dest_states = lappend(dest_states, st);
	MemoryContextSwitchTo(old);
	return st;
}

/* Something of this destination went back to waiting below its cursor. */
static void
note_holes(const char *name)
{
	dest_state(name)->holes = true;
}

/*
 * One claim for a destination, in its own short read-only transaction, walking
 * from the destination's cursor. Returns the request to start, or NULL; sets
 * *more when the walk stopped at the batch size (the queue goes on) and
 * *failed on an error (logged).
 */
static CsRequest *
claim_for(CsDestination *dest, CsDestState *st, bool *more, bool *failed)
{
	CsRequest  *volatile req = new_request(dest);
	volatile bool claimed = false;
	CsWalk		walk;

	*more = false;
	*failed = false;
	PG_TRY();
	{
		start_transaction("cohortsync: claiming records");
		claimed = cs_outbox_claim_due(dest->name, cs_batch_size, st->cursor,
									  req->cxt, &req->claim, &walk);
		finish_transaction();
	}
	PG_CATCH();
	{
		ErrorData  *edata = recover_from_error();

		log_caught_error("claiming records", edata);
		MemoryContextDelete(req->cxt);
		*failed = true;
		return NULL;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(loop_cxt);

	if (walk.walked > 0)
		st->cursor = Max(st->cursor, walk.last_id);
	if (walk.blocked || walk.writers_busy)
		st->holes = true;
	if (walk.more)
		*more = true;
	else
	{
		/*
		 * At the end of the queue. If something may wait behind the cursor, look
		 * there from the start, unless this pass started there: then what it
		 * passed over waits for something to change (a request to finish, a
		 * retry to come due, a commit), and the next turn looks again.
		 */
		if (st->holes && !st->full_pass)
			st->rescan = true;
		st->full_pass = false;
	}

	if (!claimed)
	{
		MemoryContextDelete(req->cxt);
		return NULL;
	}
	return req;
}

/*
 * Claim batches for every active destination with free slots and start each
 * request as soon as its claim has committed. poll: nothing woke the worker,
 * the poll interval (or a retry's time) has come. Returns how long (ms) the loop
 * may sleep before it should claim again if nothing wakes it.
 */
static long
claim_and_send(bool poll)
{
	List	   *volatile dests = NIL;
	volatile bool installed = true;
	volatile double next_due = -1;
	ListCell   *lc;
	long		sleep_ms;
	volatile bool claimed_any = false;
	volatile bool come_back = false;

	/* a standby sends nothing (the worker only starts after recovery anyway) */
	if (RecoveryInProgress())
		return cs_poll_interval_ms;

	/* every known destination is at its limit: nothing to do until one finishes */
	if (known_destinations > 0 &&
		list_length(requests) >= known_destinations * cs_max_inflight)
		return cs_poll_interval_ms;

	PG_TRY();
	{
		start_transaction("cohortsync: reading destinations");
		installed = cs_outbox_installed();
		if (installed)
		{
			if (!leases_released)
			{
				/* rows leased the 0.1.0 way (cohortsync._claim) by a predecessor */
				int64		n = cs_outbox_release_leases();

				if (n > 0)
					ereport(LOG,
							(errmsg("cohortsync delivery: released the leases of " INT64_FORMAT
									" records left in flight by a previous worker", n)));
				leases_released = true;
			}
			dests = cs_outbox_destinations(loop_cxt);
			if (!version_checked)
			{
				char	   *sql_version;

				/* once per installation of the extension */
				if (cs_sql_version_differs(&sql_version))
					ereport(LOG,
							(errmsg("cohortsync delivery: the extension's SQL objects in database \"%s\" are version %s, the library %s; "
									"run ALTER EXTENSION cohortsync UPDATE there",
									cs_database, sql_version, cs_library_version())));
				version_checked = true;
			}
		}
		finish_transaction();
	}
	PG_CATCH();
	{
		ErrorData  *edata = recover_from_error();

		log_caught_error("claiming records", edata);
		return cs_poll_interval_ms;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(loop_cxt);

	if (!installed)
	{
		/* wait quietly for CREATE EXTENSION */
		if (!extension_missing_logged)
			ereport(LOG,
					(errmsg("cohortsync delivery: extension \"cohortsync\" is not installed in database \"%s\"; waiting "
							"(run CREATE EXTENSION cohortsync there, or set cohortsync.database to the database that has it)",
							cs_database)));
		extension_missing_logged = true;
		version_checked = false;
		known_destinations = 0;
		/* a new extension has a new queue: forget the cursors */
		foreach(lc, dest_states)
			((CsDestState *) lfirst(lc))->rescan = true;
		return cs_poll_interval_ms;
	}
	extension_missing_logged = false;
	known_destinations = list_length(dests);

	foreach(lc, dest_states)
	{
		CsDestState *st = (CsDestState *) lfirst(lc);

		st->active = false;
	}

	foreach(lc, dests)
	{
		CsDestination *dest = (CsDestination *) lfirst(lc);
		CsDestState *st = dest_state(dest->name);
		int			nfly = in_flight_for(dest->name);
		int			free_slots = cs_max_inflight - nfly;
		int			empty_walks = 0;

		st->active = true;

		/*
		 * A safety net: the cursor relies on every writer of the queue having a
		 * transaction id before it takes ids from the sequence (then writers_busy
		 * sees it). The extension's writers do; a row inserted by hand into the
		 * outbox might not. The poll, when nothing else woke the worker, looks
		 * behind the cursor, so nothing waits longer than poll_interval.
		 */
		if (poll)
		{
			if (nfly == 0)
				st->rescan = true;
			else
				st->holes = true;
		}
		if (st->rescan)
		{
			/* records behind the cursor: wait until nothing is in flight, then look */
			if (nfly > 0)
				continue;
			st->cursor = 0;
			st->holes = false;
			st->rescan = false;
			st->full_pass = true;
		}
		while (free_slots > 0 && !st->rescan)
		{
			bool		more;
			bool		failed;
			CsRequest  *req = claim_for(dest, st, &more, &failed);

			if (failed)
				return cs_poll_interval_ms;
			if (req != NULL)
			{
				/* committed: only now does anything leave */
				MemoryContext old;

				req->pending_lo = MemoryContextAlloc(req->cxt, sizeof(int) * (req->claim.nrecords + 1));
				req->pending_hi = MemoryContextAlloc(req->cxt, sizeof(int) * (req->claim.nrecords + 1));
				old = MemoryContextSwitchTo(worker_cxt);
				requests = lappend(requests, req);
				MemoryContextSwitchTo(old);
				send_piece(req, 0, req->claim.nrecords);
				/* on the wire while the next batch is claimed */
				cs_http_kick();
				free_slots--;
				claimed_any = true;
			}
			else if (more && ++empty_walks >= MAX_EMPTY_WALKS)
			{
				/* whole batches blocked: go on after a look at the sockets */
				come_back = true;
				break;
			}
			if (!more)
				break;
		}
		/* a rescan is due and nothing is in flight: start it now */
		if (st->rescan && in_flight_for(dest->name) == 0)
			come_back = true;
	}

	/* a destination paused or gone: start from the beginning when it is back */
	foreach(lc, dest_states)
	{
		CsDestState *st = (CsDestState *) lfirst(lc);

		if (!st->active)
			st->rescan = true;
	}
	publish_in_flight();

	if (!claimed_any && !come_back)
	{
		PG_TRY();
		{
			start_transaction("cohortsync: looking for retries");
			next_due = cs_outbox_next_due();
			finish_transaction();
		}
		PG_CATCH();
		{
			ErrorData  *edata = recover_from_error();

			log_caught_error("claiming records", edata);
		}
		PG_END_TRY();
		MemoryContextSwitchTo(loop_cxt);
		/* a retry came due behind a cursor */
		if (next_due >= 0)
			foreach(lc, dest_states)
				((CsDestState *) lfirst(lc))->holes = true;
	}

	if (come_back)
		return 0;
	sleep_ms = cs_poll_interval_ms;
	if (next_due >= 0)
		sleep_ms = Min(sleep_ms, (long) (next_due * 1000.0) + 1);
	return sleep_ms;
}

/* The answer's body as text we may hand to SQL: valid in the database encoding. */
static const char *
usable_body(CsHttpCall *call)
{
	if (call->http_status == 0 || call->response.data == NULL)
		return NULL;
	if (!pg_verifymbstr(call->response.data, call->response.len, true))
		return "(an answer that is not valid text)";
	return call->response.data;
}

/* Record the outcome of the request's finished piece; send the next piece or free it. */
static void
settle(CsRequest *req)
{
	volatile CsOutcome outcome = CS_OUTCOME_RETRY;
	int64	   *rest;
	int			nrest = 0;

	/* the records still to send after this piece, in order */
	rest = MemoryContextAlloc(req->cxt, sizeof(int64) * (req->claim.nrecords + 1));
	for (int p = req->npending - 1; p >= 0; p--)
		for (int i = req->pending_lo[p]; i < req->pending_hi[p]; i++)
			rest[nrest++] = req->claim.ids[i];

	PG_TRY();
	{
		start_transaction("cohortsync: recording a delivery outcome");
		outcome = cs_outbox_record_outcome(req->destination,
										   req->claim.ids + req->lo, req->hi - req->lo,
										   req->call.http_status, usable_body(&req->call),
										   req->call.http_status == 0 ? req->call.errbuf : NULL,
										   cs_max_retry_age_s, lease_ms(), rest, nrest);
		finish_transaction();
	}
	PG_CATCH();
	{
		ErrorData  *edata = recover_from_error();

		/* the leases run out and the records go again: at least once */
		log_caught_error("recording a delivery outcome", edata);
		outcome = CS_OUTCOME_RETRY;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(loop_cxt);

	/*
	 * Records that stay queued (a retry, a pause, a 555 inside a 200, an outcome
	 * not recorded) are behind the cursor now: look there again. A "555" anywhere
	 * in the answer counts; a false alarm only costs a scan from the start.
	 */
	if (outcome != CS_OUTCOME_DONE || req->call.http_status != 200 ||
		req->call.response.data == NULL || strstr(req->call.response.data, "555") != NULL)
	{
		if (!(outcome == CS_OUTCOME_DONE && req->call.http_status == 400))
			note_holes(req->destination);
	}

	if (outcome == CS_OUTCOME_RETRY && req->call.http_status != 401 &&
		req->call.http_status != 403 && retry_log_due())
		ereport(LOG,
				(errmsg("cohortsync delivery: destination \"%s\": %s; the records will be retried",
						req->destination,
						req->call.http_status == 0 ? req->call.errbuf :
						psprintf("HTTP %ld", req->call.http_status)),
				 errhint("Further retries are logged at most once a minute; "
						 "see cohortsync.destination_status.")));
	if (req->call.http_status == 401 || req->call.http_status == 403)
		ereport(LOG,
				(errmsg("cohortsync delivery: CleverTap refused the credentials of destination \"%s\" (HTTP %ld); it is paused",
						req->destination, req->call.http_status),
				 errhint("Check its account id, passcode and region, then call cohortsync.resume_destination().")));

	switch (outcome)
	{
		case CS_OUTCOME_SPLIT:
			{
				int			mid = req->lo + (req->hi - req->lo) / 2;

				req->pending_lo[req->npending] = mid;
				req->pending_hi[req->npending] = req->hi;
				req->npending++;
				send_piece(req, req->lo, mid);
				publish_in_flight();
				return;
			}
		case CS_OUTCOME_DONE:
			if (req->npending > 0)
			{
				req->npending--;
				send_piece(req, req->pending_lo[req->npending], req->pending_hi[req->npending]);
				publish_in_flight();
				return;
			}
			break;
		case CS_OUTCOME_RETRY:
			break;
	}
	free_request(req);
	publish_in_flight();
}

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
	if (cs_shared != NULL)
	{
		cs_shared->worker_pgprocno = MyProcNumber;
		before_shmem_exit(unpublish_worker, (Datum) 0);
	}
	pgstat_report_appname("cohortsync delivery");
	pgstat_report_activity(STATE_IDLE, NULL);
	wait_event_delivery = cs_wait_event_new("CohortsyncDelivery");

	worker_cxt = AllocSetContextCreate(TopMemoryContext, "cohortsync delivery",
									   ALLOCSET_DEFAULT_SIZES);
	loop_cxt = AllocSetContextCreate(worker_cxt, "cohortsync delivery loop",
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

		MemoryContextSwitchTo(loop_cxt);
		MemoryContextReset(loop_cxt);
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
			settle((CsRequest *) call->owner);
			settled_any = true;
		}

		now = GetCurrentTimestamp();
		if (woken || settled_any || now >= next_claim)
		{
			long		sleep_ms = claim_and_send(!woken && !settled_any);

			next_claim = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), sleep_ms);
		}

		/* cohortsync.history_retention: a few ms of pruning, when a pass is due */
		pruning = cs_history_prune_tick();
		/* a drained outbox gives its space back */
		cs_outbox_shrink_tick(requests == NIL);

		now = GetCurrentTimestamp();
		timeout_ms = next_claim > now ? (long) ((next_claim - now + 999) / 1000) : 0;
		if (pruning)
			timeout_ms = Min(timeout_ms, PRUNE_PAUSE_MS);
		woken = cs_http_wait(timeout_ms, wait_event_delivery);
	}

	/* SIGTERM: abandon what is in flight; the leases are released by the next worker */
	while (requests != NIL)
		free_request((CsRequest *) linitial(requests));
	ereport(LOG, (errmsg("cohortsync delivery worker shutting down")));
	/* exit 1, not 0: a worker terminated on its own (DROP DATABASE ... FORCE) is restarted */
	proc_exit(1);
}
