/*-------------------------------------------------------------------------
 *
 * delivery_reset.c
 *	  Ending a destination's backoff when a replay commits.
 *
 * The worker's backoff (delivery_schedule.c) lives in its own memory. A replay
 * of failed records follows a human's fix, like a resume, so the destinations
 * it replayed are tried at once rather than after the current step of the
 * schedule (up to 5 minutes). cohortsync.replay_failed() asks for it through
 * cohortsync._reset_backoff(); what was asked is posted to the worker's shared
 * memory only when the transaction commits, so that a replay rolled back, or
 * made in a subtransaction that was, ends nothing.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "fmgr.h"
#include "nodes/pg_list.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "delivery_worker.h"

PG_FUNCTION_INFO_V1(cohortsync_reset_backoff);

/* One request of the current transaction: a destination, NULL for all. */
typedef struct PendingReset
{
	int			level;			/* the subtransaction that asked */
	char	   *destination;
} PendingReset;

static List *pending = NIL;		/* PendingReset *, in TopTransactionContext */

/* At commit: post what is left; at abort: forget it (its memory goes too). */
static void
reset_at_commit(XactEvent event, void *arg)
{
	List	   *names = NIL;
	bool		all = false;
	ListCell   *lc;

	if (pending == NIL)
		return;
	switch (event)
	{
		case XACT_EVENT_COMMIT:
			foreach(lc, pending)
			{
				PendingReset *p = (PendingReset *) lfirst(lc);

				if (p->destination == NULL)
					all = true;
				else
					names = lappend(names, p->destination);
			}
			cs_delivery_post_resets(names, all);
			pending = NIL;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PREPARE:
			/* a prepared replay is committed later, by another backend: no reset */
			pending = NIL;
			break;
		default:
			break;
	}
}

/* A subtransaction ends: its requests go to its parent, or away with it. */
static void
reset_at_subxact_end(SubXactEvent event, SubTransactionId mySubid,
					 SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();
	ListCell   *lc;

	if (pending == NIL ||
		(event != SUBXACT_EVENT_COMMIT_SUB && event != SUBXACT_EVENT_ABORT_SUB))
		return;
	foreach(lc, pending)
	{
		PendingReset *p = (PendingReset *) lfirst(lc);

		if (p->level < level)
			continue;
		if (event == SUBXACT_EVENT_COMMIT_SUB)
			p->level = level - 1;
		else
			pending = foreach_delete_current(pending, lc);
	}
}

/*
 * cohortsync._reset_backoff(destination text): when the current transaction
 * commits, the delivery worker ends the backoff of this destination (of every
 * destination when NULL). A no-op without preloading (there is no worker).
 */
Datum
cohortsync_reset_backoff(PG_FUNCTION_ARGS)
{
	static bool registered = false;
	MemoryContext old;
	PendingReset *p;

	if (!registered)
	{
		RegisterXactCallback(reset_at_commit, NULL);
		RegisterSubXactCallback(reset_at_subxact_end, NULL);
		registered = true;
	}
	old = MemoryContextSwitchTo(TopTransactionContext);
	p = palloc(sizeof(PendingReset));
	p->level = GetCurrentTransactionNestLevel();
	p->destination = PG_ARGISNULL(0) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(0));
	pending = lappend(pending, p);
	MemoryContextSwitchTo(old);
	PG_RETURN_VOID();
}
