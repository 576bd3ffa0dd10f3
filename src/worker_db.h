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

typedef enum CsWorkerKind
{
	CS_WORKER_DELIVERY,
	CS_WORKER_LISTENER,
	CS_NUM_WORKERS
} CsWorkerKind;

/* _PG_init, while preloading: shared memory and the DROP DATABASE hook */
extern void cs_worker_db_init(void);

/*
 * Connect the calling background worker to cohortsync.database. When the
 * database may not exist, this does not return: the process waits quietly,
 * attached to no database, until it does, and then exits to be started again.
 */
extern void cs_worker_connect(CsWorkerKind kind, const char *name);

/* Does DROP DATABASE ask this (connected) worker to leave? */
extern bool cs_worker_leave_requested(CsWorkerKind kind);

/* Leave for DROP DATABASE: one log line, exit; the postmaster restarts us. */
pg_noreturn extern void cs_worker_leave(CsWorkerKind kind, const char *name);

#endif							/* COHORTSYNC_WORKER_DB_H */
