/*-------------------------------------------------------------------------
 *
 * delivery_shmem.c
 *	  The delivery worker's piece of shared memory: where committing
 *	  backends find its latch, and what it publishes per destination for
 *	  cohortsync.destination_status (its leases and backoff live in its own
 *	  memory, so the view cannot read them from a table).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "delivery.h"
#include "delivery_worker.h"
#include "pg_compat.h"
#include "worker_db.h"

PG_FUNCTION_INFO_V1(cohortsync_wake_delivery);
PG_FUNCTION_INFO_V1(cohortsync_worker_in_flight);

/*
 * Destinations beyond CS_PUBLISHED_MAX, or with names too long for a slot,
 * show nothing.
 *
 * resets: the destinations whose backoff committed replays asked to end, until
 * the worker takes them (a mailbox rather than counters per destination: the
 * worker keeps no state for it, and nothing is left to clean up when a
 * destination goes away).
 */
typedef struct CsDeliveryShared
{
	ProcNumber	worker_pgprocno;	/* INVALID_PROC_NUMBER when no worker runs */
	slock_t		mutex;			/* protects npublished, published and resets */
	int			npublished;
	CsPublished published[CS_PUBLISHED_MAX];
	CsBackoffResets resets;
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
		cs_shared->resets.all = false;
		cs_shared->resets.n = 0;
	}
	LWLockRelease(AddinShmemInitLock);
}

/* While preloading: ask for the shared memory. */
void
cs_delivery_shmem_init(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = cs_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = cs_shmem_startup;
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

/* The worker: say that this process is the one, until it exits. */
void
cs_delivery_publish_worker(void)
{
	if (cs_shared == NULL)
		return;
	cs_shared->worker_pgprocno = MyProcNumber;
	before_shmem_exit(unpublish_worker, (Datum) 0);
}

/* The worker: replace what it published per destination. */
void
cs_delivery_publish(const CsPublished *pub, int n)
{
	if (cs_shared == NULL)
		return;
	Assert(n <= CS_PUBLISHED_MAX);
	SpinLockAcquire(&cs_shared->mutex);
	memcpy(cs_shared->published, pub, sizeof(CsPublished) * n);
	cs_shared->npublished = n;
	SpinLockRelease(&cs_shared->mutex);
}

/*
 * A committed transaction: end the backoff of these destinations (all of them
 * when "all"), then wake the worker so that it sends to them at once (the wake
 * of _wake_delivery may come first, and the worker would find no reset). A
 * name that does not fit, or one more than the mailbox holds, ends every
 * destination's backoff: more than was asked, which costs at most one early
 * request to a destination that still fails.
 */
void
cs_delivery_post_resets(List *names, bool all)
{
	ListCell   *lc;
	ProcNumber	procno;

	if (cs_shared == NULL)
		return;
	SpinLockAcquire(&cs_shared->mutex);
	foreach(lc, names)
	{
		const char *name = (const char *) lfirst(lc);
		CsBackoffResets *r = &cs_shared->resets;
		int			i;

		if (all || r->all)
			break;
		for (i = 0; i < r->n; i++)
			if (strcmp(r->names[i], name) == 0)
				break;
		if (i < r->n)
			continue;
		if (strlen(name) >= CS_PUBLISHED_NAMELEN || r->n == CS_PUBLISHED_MAX)
			all = true;
		else
			strlcpy(r->names[r->n++], name, CS_PUBLISHED_NAMELEN);
	}
	if (all)
		cs_shared->resets.all = true;
	SpinLockRelease(&cs_shared->mutex);

	procno = cs_shared->worker_pgprocno;
	if (procno != INVALID_PROC_NUMBER)
		SetLatch(&GetPGProcByNumber(procno)->procLatch);
}

/* The worker: take the backoff resets posted since it last looked. */
bool
cs_delivery_take_resets(CsBackoffResets *resets)
{
	if (cs_shared == NULL)
		return false;
	SpinLockAcquire(&cs_shared->mutex);
	resets->all = cs_shared->resets.all;
	resets->n = cs_shared->resets.n;
	memcpy(resets->names, cs_shared->resets.names, sizeof(resets->names[0]) * resets->n);
	cs_shared->resets.all = false;
	cs_shared->resets.n = 0;
	SpinLockRelease(&cs_shared->mutex);
	return resets->all || resets->n > 0;
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
 * cohortsync._worker_in_flight(): what the worker published per destination.
 * Nothing when the library is not preloaded or no worker has published.
 */
Datum
cohortsync_worker_in_flight(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	CsPublished copy[CS_PUBLISHED_MAX];
	int			n = 0;

	InitMaterializedSRF(fcinfo, 0);
	if (cs_shared != NULL)
	{
		SpinLockAcquire(&cs_shared->mutex);
		n = cs_shared->npublished;
		memcpy(copy, cs_shared->published, sizeof(CsPublished) * n);
		SpinLockRelease(&cs_shared->mutex);
	}
	/*
	 * SQL objects older than the library (before ALTER EXTENSION UPDATE)
	 * declare only the first two columns: a tuple takes as many values as its
	 * descriptor has columns.
	 */
	Assert(rsinfo->setDesc->natts <= 4);
	for (int i = 0; i < n; i++)
	{
		Datum		values[4];
		bool		nulls[4] = {false, false, false, false};

		values[0] = CStringGetTextDatum(copy[i].destination);
		values[1] = Int64GetDatum(copy[i].records);
		values[2] = Int32GetDatum(copy[i].consecutive_failures);
		values[3] = TimestampTzGetDatum(copy[i].backoff_until);
		nulls[3] = copy[i].backoff_until == 0;
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
