/*-------------------------------------------------------------------------
 *
 * membership.h
 *	  Apply a validated page to the membership tables.
 *
 *-------------------------------------------------------------------------
 */
#ifndef COHORTSYNC_MEMBERSHIP_H
#define COHORTSYNC_MEMBERSHIP_H

#include "page.h"

/* What applying one page did, for callers that report it. */
typedef struct CsApplyResult
{
	uint64		added;
	uint64		removed;
	bool		duplicate_page; /* the page had been received before */
	bool		ignored;		/* page of a completed or superseded full sync */
	bool		session_completed;	/* this page completed its session */
	bool		queued;			/* a swap or this diff page waits in apply_queue */
} CsApplyResult;

/* Apply a page in the caller's transaction. Raises ERROR on server trouble. */
extern void cs_apply_page(const CsPage *page, CsApplyResult *result);

/*
 * Apply one entry of cohortsync.apply_queue (see apply_queue.c). key: project,
 * cohort and session (text); arrays: for a diff page, its six member arrays.
 */
extern void cs_apply_queued(Datum *key, CsAction action, Datum *arrays,
							CsApplyResult *result);

/* EXPLAIN (COSTS OFF) of the full-sync swap statements for one staged session. */
extern char *cs_explain_swap(const char *project_id, const char *cohort_id,
							 const char *session_id, bool guarded);

#endif							/* COHORTSYNC_MEMBERSHIP_H */
