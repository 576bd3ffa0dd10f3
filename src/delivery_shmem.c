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
 */
typedef struct CsDeliveryShared
{
	ProcNumber	worker_pgprocno;	/* INVALID_PROC_NUMBER when no worker runs */
	slock_t		mutex;			/* protects npublished and published */
	int			npublished;
	CsPublished published[CS_PUBLISHED_MAX];
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
