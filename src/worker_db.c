/*-------------------------------------------------------------------------
 *
 * worker_db.c
 *	  How the background workers (delivery, HTTP listener) connect to
 *	  cohortsync.database, leave it for DROP DATABASE, and wait while it
 *	  does not exist.
 *
 * DROP DATABASE: a worker connected to the database would make dropdb() wait
 * five seconds and fail ("database is being accessed by other users"). The
 * library is preloaded, so every backend sees the statement first (the
 * ProcessUtility hook below); it asks the connected workers to leave (a flag
 * in shared memory, and their latch) and gives them a moment. They exit at
 * once; the postmaster starts them again bgw_restart_time later.
 *
 * A missing database: a worker that connects to a database that does not
 * exist fails with FATAL, and the postmaster tries again every five seconds,
 * filling the log. So a worker that has reason to doubt the database is
 * there (it left for DROP DATABASE, or its predecessor never got connected)
 * first attaches to no database at all, as the logical replication launcher
 * does, and looks the name up in the shared catalog pg_database. If it is
 * missing, the worker says so once and waits, woken by CREATE DATABASE of that
 * name, by a reload, or by a look every WAIT_POLL_MS. Once the database is
 * there it exits, to be started again connected: a process cannot attach to a
 * database twice.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "commands/dbcommands.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/guc.h"
#include "utils/syscache.h"

#include "guc_common.h"
#include "pg_compat.h"
#include "worker_db.h"

/* A waiting worker looks for the database this often (ms). */
#define WAIT_POLL_MS 10000

typedef struct CsWorkerSlot
{
	ProcNumber	pgprocno;		/* connected to cohortsync.database, else
								 * INVALID_PROC_NUMBER */
	ProcNumber	waiting_pgprocno;	/* waiting for the database to exist */
	bool		leave_requested;	/* DROP DATABASE asks the worker to go */
	bool		check_database; /* the next start looks before connecting */
} CsWorkerSlot;

/* one slot per process: kind * CS_MAX_WORKER_INSTANCES + instance */
#define CS_NUM_SLOTS (CS_NUM_WORKERS * CS_MAX_WORKER_INSTANCES)

typedef struct CsWorkerShared
{
	CsWorkerSlot slots[CS_NUM_SLOTS];
} CsWorkerShared;

static CsWorkerShared *cs_workers = NULL;

/* Which process of its kind this one is. */
static int	my_instance = 0;

/* Workers registered by cs_worker_register, while preloading. */
static int	workers_requested = 0;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;
static ProcessUtility_hook_type prev_process_utility_hook = NULL;

static void
worker_db_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(CsWorkerShared)));
}

static void
worker_db_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	cs_workers = ShmemInitStruct("cohortsync workers", sizeof(CsWorkerShared), &found);
	if (!found)
	{
		for (int i = 0; i < CS_NUM_SLOTS; i++)
		{
			cs_workers->slots[i].pgprocno = INVALID_PROC_NUMBER;
			cs_workers->slots[i].waiting_pgprocno = INVALID_PROC_NUMBER;
			cs_workers->slots[i].leave_requested = false;
			cs_workers->slots[i].check_database = false;
		}
	}
	LWLockRelease(AddinShmemInitLock);
}

static void
set_latch_of(ProcNumber procno)
{
	if (procno != INVALID_PROC_NUMBER)
		SetLatch(&GetPGProcByNumber(procno)->procLatch);
}

static bool
any_worker_connected(void)
{
	for (int i = 0; i < CS_NUM_SLOTS; i++)
		if (cs_workers->slots[i].pgprocno != INVALID_PROC_NUMBER)
			return true;
	return false;
}

/*
 * May this DROP DATABASE push the workers out? Only when it names their
 * database, that database exists, it is not our own (that drop fails anyway)
 * and we own it: a role that cannot drop the database must not be able to
 * interrupt delivery by trying.
 */
static bool
drop_concerns_workers(const char *dbname)
{
	Oid			dboid;

	if (cs_database == NULL || strcmp(dbname, cs_database) != 0)
		return false;
	dboid = get_database_oid(dbname, true);
	if (!OidIsValid(dboid) || dboid == MyDatabaseId)
		return false;
	return object_ownercheck(DatabaseRelationId, dboid, GetUserId());
}

static bool wake_waiters = false;

static void
wake_waiters_at_commit(XactEvent event, void *arg)
{
	if (!wake_waiters)
		return;
	if (event == XACT_EVENT_COMMIT)
		for (int i = 0; i < CS_NUM_SLOTS; i++)
			set_latch_of(cs_workers->slots[i].waiting_pgprocno);
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT)
		wake_waiters = false;
}

/*
 * Kinds whose workers the current transaction wakes at commit (a bit per
 * kind). A worker that is between two processes (restarting) is not woken;
 * it looks at everything when it starts.
 */
static uint32 wake_kinds = 0;

static void
wake_kinds_at_commit(XactEvent event, void *arg)
{
	if (wake_kinds == 0)
		return;
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			pg_read_barrier();
			for (int kind = 0; kind < CS_NUM_WORKERS; kind++)
				if (wake_kinds & (1U << kind))
					for (int i = 0; i < CS_MAX_WORKER_INSTANCES; i++)
						set_latch_of(cs_workers->slots[kind * CS_MAX_WORKER_INSTANCES + i].pgprocno);
			wake_kinds = 0;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			/* prepared transactions are found by the workers' polls */
			wake_kinds = 0;
			break;
		default:
			break;
	}
}

void
cs_worker_wake_at_commit(CsWorkerKind kind)
{
	static bool registered = false;

	if (cs_workers == NULL)
		return;
	if (!registered)
	{
		RegisterXactCallback(wake_kinds_at_commit, NULL);
		registered = true;
	}
	wake_kinds |= 1U << kind;
}

static void
worker_db_process_utility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
						  ProcessUtilityContext context, ParamListInfo params,
						  QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *parsetree = pstmt->utilityStmt;
	bool		created = false;

	if (cs_workers != NULL && IsA(parsetree, DropdbStmt) &&
		drop_concerns_workers(((DropdbStmt *) parsetree)->dbname))
	{
		/* whatever comes of the drop, the next start looks before it connects */
		for (int i = 0; i < CS_NUM_SLOTS; i++)
		{
			cs_workers->slots[i].check_database = true;
			cs_workers->slots[i].leave_requested = true;
		}
		pg_write_barrier();
		for (int i = 0; i < CS_NUM_SLOTS; i++)
			set_latch_of(cs_workers->slots[i].pgprocno);

		/*
		 * Give them a moment to go before dropdb counts the database's users
		 * (it would wait up to five seconds more, polling every 100 ms).
		 */
		for (int i = 0; i < 100 && any_worker_connected(); i++)
			pg_usleep(10 * 1000L);
	}
	else if (cs_workers != NULL && IsA(parsetree, CreatedbStmt) && cs_database != NULL &&
			 strcmp(((CreatedbStmt *) parsetree)->dbname, cs_database) == 0)
		created = true;

	if (prev_process_utility_hook)
		prev_process_utility_hook(pstmt, queryString, readOnlyTree, context, params,
								  queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
								queryEnv, dest, qc);

	/*
	 * The database the workers wait for is there once this commits: wake them
	 * then (not now, they would not see it yet) rather than at their next look.
	 */
	if (created)
	{
		static bool registered = false;

		if (!registered)
			RegisterXactCallback(wake_waiters_at_commit, NULL);
		registered = true;
		wake_waiters = true;
	}
}

void
cs_worker_db_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		return;

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = worker_db_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = worker_db_shmem_startup;
	prev_process_utility_hook = ProcessUtility_hook;
	ProcessUtility_hook = worker_db_process_utility;
}

void
cs_worker_register(BackgroundWorker *worker)
{
	workers_requested++;
	RegisterBackgroundWorker(worker);
}

/*
 * The postmaster registers a worker beyond max_worker_processes with a LOG line
 * only, and never starts it. The parts register the workers cohortsync cannot
 * do without first (delivery, apply), so the listener's pool is what is cut,
 * and this says so where a DBA looks.
 */
void
cs_worker_check_slots(void)
{
	if (!process_shared_preload_libraries_in_progress ||
		workers_requested <= max_worker_processes)
		return;
	ereport(WARNING,
			(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
			 errmsg("cohortsync needs %d background workers, but max_worker_processes is %d",
					workers_requested, max_worker_processes),
			 errdetail("The webhook listener's workers beyond the limit will not start; "
					   "other extensions, parallel query and logical replication share the same slots."),
			 errhint("Raise max_worker_processes to at least %d plus what else uses it, "
					 "or lower cohortsync.http_workers.", workers_requested)));
}

/*-------------------------------------------------------------------------
 * In the workers.
 *-------------------------------------------------------------------------
 */

void
cs_worker_set_instance(int instance)
{
	Assert(instance >= 0 && instance < CS_MAX_WORKER_INSTANCES);
	my_instance = instance;
}

static int
slot_number(CsWorkerKind kind)
{
	return kind * CS_MAX_WORKER_INSTANCES + my_instance;
}

static void
unpublish_connected(int code, Datum arg)
{
	if (cs_workers != NULL)
		cs_workers->slots[DatumGetInt32(arg)].pgprocno = INVALID_PROC_NUMBER;
}

static void
unpublish_waiting(int code, Datum arg)
{
	if (cs_workers != NULL)
		cs_workers->slots[DatumGetInt32(arg)].waiting_pgprocno = INVALID_PROC_NUMBER;
}

/*
 * Can a worker connect to cohortsync.database now? It must exist, allow
 * connections and not be half-dropped. Runs attached to no database:
 * pg_database is a shared catalog.
 */
static bool
database_usable(void)
{
	Oid			dboid;
	bool		usable = false;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	dboid = get_database_oid(cs_database, true);
	if (OidIsValid(dboid))
	{
		HeapTuple	tuple = SearchSysCache1(DATABASEOID, ObjectIdGetDatum(dboid));

		if (HeapTupleIsValid(tuple))
		{
			Form_pg_database form = (Form_pg_database) GETSTRUCT(tuple);

			usable = form->datallowconn && !database_is_invalid_form(form);
			ReleaseSysCache(tuple);
		}
	}
	CommitTransactionCommand();
	return usable;
}

/*
 * Wait, attached to no database, until cohortsync.database can be connected
 * to; then exit so that the postmaster starts the worker again, connected.
 * One log line when the wait starts, none while it lasts.
 */
pg_noreturn static void
wait_for_database(CsWorkerKind kind, const char *name)
{
	bool		logged = false;
	uint32		wait_event;

	/* this process never returns to the worker's own loop: our handlers */
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);

	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	pgstat_report_appname(name);
	pgstat_report_activity(STATE_IDLE, NULL);
	cs_workers->slots[slot_number(kind)].waiting_pgprocno = MyProcNumber;
	before_shmem_exit(unpublish_waiting, Int32GetDatum(slot_number(kind)));
	wait_event = cs_wait_event_new("CohortsyncWaitForDatabase");

	for (;;)
	{
		CHECK_FOR_INTERRUPTS();
		if (ShutdownRequestPending)
			proc_exit(1);
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		if (database_usable())
		{
			/* the next start connects straight away */
			cs_workers->slots[slot_number(kind)].check_database = false;
			pg_write_barrier();
			if (logged)
				ereport(LOG,
						(errmsg("%s: database \"%s\" is there now; connecting to it",
								name, cs_database)));
			/* exit 1: started again (connected) after bgw_restart_time */
			proc_exit(1);
		}
		if (!logged)
			ereport(LOG,
					(errmsg("%s: cohortsync.database: database \"%s\" does not exist or does not allow connections; waiting for it",
							name, cs_database)));
		logged = true;

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 WAIT_POLL_MS, wait_event);
		ResetLatch(MyLatch);
	}
}

void
cs_worker_connect(CsWorkerKind kind, const char *name)
{
	CsWorkerSlot *slot;

	if (cs_workers == NULL)
	{
		/* not preloaded: cannot happen in a background worker, but be plain */
		BackgroundWorkerInitializeConnection(cs_database, NULL, 0);
		return;
	}
	slot = &cs_workers->slots[slot_number(kind)];

	pg_read_barrier();
	if (slot->check_database)
		wait_for_database(kind, name);

	/*
	 * Should the connection fail (FATAL: the database is gone), the next
	 * start looks first instead of failing again every five seconds. A
	 * DROP DATABASE that asks us to leave while we connect keeps its request.
	 */
	slot->check_database = true;
	slot->leave_requested = false;
	pg_write_barrier();

	BackgroundWorkerInitializeConnection(cs_database, NULL, 0);

	slot->pgprocno = MyProcNumber;
	before_shmem_exit(unpublish_connected, Int32GetDatum(slot_number(kind)));
	pg_memory_barrier();
	if (!slot->leave_requested)
		slot->check_database = false;
}

bool
cs_worker_leave_requested(CsWorkerKind kind)
{
	if (cs_workers == NULL)
		return false;
	pg_read_barrier();
	return cs_workers->slots[slot_number(kind)].leave_requested;
}

void
cs_worker_leave(CsWorkerKind kind, const char *name)
{
	ereport(LOG,
			(errmsg("%s: leaving database \"%s\" for DROP DATABASE", name, cs_database),
			 errdetail("It is started again in a few seconds and waits for the database if it is gone.")));
	proc_exit(1);				/* restarted after bgw_restart_time */
}
