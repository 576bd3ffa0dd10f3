/*-------------------------------------------------------------------------
 *
 * worker_db.h
 *	  How the background workers connect to cohortsync.database and leave it.
 *
 *-------------------------------------------------------------------------
 */
#ifndef COHORTSYNC_WORKER_DB_H
#define COHORTSYNC_WORKER_DB_H

#include "pg_compat.h"
#include "postmaster/bgworker.h"

typedef enum CsWorkerKind
{
	CS_WORKER_DELIVERY,
	CS_WORKER_LISTENER,
	CS_WORKER_APPLY,
	CS_NUM_WORKERS
} CsWorkerKind;

/* Most processes of one kind (the HTTP listener has cohortsync.http_workers). */
#define CS_MAX_WORKER_INSTANCES 64

/* _PG_init, while preloading: shared memory and the DROP DATABASE hook */
extern void cs_worker_db_init(void);

/*
 * Register a worker while preloading, counting it; after every part has,
 * cs_worker_check_slots() warns when max_worker_processes cannot hold them all.
 */
extern void cs_worker_register(BackgroundWorker *worker);
extern void cs_worker_check_slots(void);

/*
 * Which of the processes of its kind the caller is (0, the default, for a
 * kind that has one); call before cs_worker_connect.
 */
extern void cs_worker_set_instance(int instance);

/*
 * Connect the calling background worker to cohortsync.database. When the
 * database may not exist, this does not return: the process waits quietly,
 * attached to no database, until it does, and then exits to be started again.
 */
extern void cs_worker_connect(CsWorkerKind kind, const char *name);

/*
 * Wake the workers of this kind when (and only if) the current transaction
 * commits, so that they never look before what it wrote is visible: the
 * outbox trigger wakes delivery, the page that queues a swap wakes apply.
 * Nothing happens without preloading, when there is no worker to wake.
 */
extern void cs_worker_wake_at_commit(CsWorkerKind kind);

/* Does DROP DATABASE ask this (connected) worker to leave? */
extern bool cs_worker_leave_requested(CsWorkerKind kind);

/* Leave for DROP DATABASE: one log line, exit; the postmaster restarts us. */
pg_noreturn extern void cs_worker_leave(CsWorkerKind kind, const char *name);

#endif							/* COHORTSYNC_WORKER_DB_H */
