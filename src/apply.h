/*-------------------------------------------------------------------------
 *
 * apply.h
 *	  Full syncs applied in the background: the apply queue and its worker.
 *
 *-------------------------------------------------------------------------
 */
#ifndef COHORTSYNC_APPLY_H
#define COHORTSYNC_APPLY_H

#include "nodes/pg_list.h"

/* A cohort with entries in cohortsync.apply_queue. */
typedef struct CsQueuedCohort
{
	char	   *project_id;
	char	   *cohort_id;
} CsQueuedCohort;

/* apply_queue.c: the cohorts with queued entries, oldest entry first (SPI connected or not). */
extern List *cs_queued_cohorts(MemoryContext cxt);

/*
 * apply_queue.c: apply up to max_entries (0: all) of one cohort's queue, in
 * order, in the current transaction. wait: wait for the cohort's row lock,
 * else give up at once if it is taken (returns -1).
 */
extern int64 cs_apply_cohort_queue(const char *project_id, const char *cohort_id,
								   bool wait, int max_entries);

/* apply_queue.c: does the schema have the queue (0.3.0 and later)? */
extern bool cs_apply_queue_installed(void);

/* apply_worker.c: settings and, when preloading, the worker. */
extern void cs_apply_init(void);

#endif							/* COHORTSYNC_APPLY_H */
