/*-------------------------------------------------------------------------
 *
 * apply_queue.c
 *	  Apply what waits in cohortsync.apply_queue: full-sync swaps and the diff
 *	  pages queued behind them, per cohort in id order, exactly once.
 *
 * An entry is applied and deleted in one transaction, which first locks the
 * entry at the head of the cohort's queue (FOR UPDATE): two appliers (the
 * worker, apply_pending()) never apply the same entry or overtake each other,
 * a crash before the commit leaves the entry queued and nothing applied, and
 * a commit leaves it applied and gone. Exactly once.
 *
 * The applier does not hold the cohort's row lock during a swap, so pages of
 * the cohort are still answered at once: while the swap runs its entry is
 * still visible to them (its deletion is not committed), so a diff page
 * queues itself behind it (see membership.c) and never touches the members
 * the swap is replacing. The applier takes the cohort's row lock only at the
 * end, for the counters, in the order pages take their locks (cohort, then
 * session), so that the two cannot deadlock.
 *
 * Used by the apply worker (one entry per transaction, skipping a cohort whose
 * head entry another applier holds) and by cohortsync.apply_pending()
 * (everything, in the caller's transaction, waiting for the locks).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "apply.h"
#include "membership.h"

PG_FUNCTION_INFO_V1(cohortsync_apply_pending);

#define COHORT_KEY "project_id = $1 AND cohort_id = $2"

/*
 * The head of the cohort's queue, locked. Waiting, nothing comes back when the
 * head was applied meanwhile; skipping, also when another applier holds it.
 */
#define HEAD_OF_QUEUE \
	"SELECT id, session_id, action, distinct_ids, emails, phones, first_names," \
	"       last_names, properties" \
	"  FROM cohortsync.apply_queue" \
	" WHERE id = (SELECT min(id) FROM cohortsync.apply_queue WHERE " COHORT_KEY ")"
static const char *const lock_head_wait = HEAD_OF_QUEUE " FOR UPDATE";
static const char *const lock_head_nowait = HEAD_OF_QUEUE " FOR UPDATE SKIP LOCKED";

static const char *const queue_nonempty =
	"SELECT FROM cohortsync.apply_queue WHERE " COHORT_KEY " LIMIT 1";

static const char *const delete_entry =
	"DELETE FROM cohortsync.apply_queue WHERE id = $1";

static const char *const queued_cohorts =
	"SELECT project_id, cohort_id FROM cohortsync.apply_queue"
	" GROUP BY project_id, cohort_id ORDER BY min(id)";

bool
cs_apply_queue_installed(void)
{
	Oid			nsp = get_namespace_oid("cohortsync", true);

	return OidIsValid(nsp) && OidIsValid(get_relname_relid("apply_queue", nsp));
}

List *
cs_queued_cohorts(MemoryContext cxt)
{
	List	   *cohorts = NIL;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "cohortsync: SPI_connect failed");
	if (SPI_execute(queued_cohorts, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "cohortsync: could not read the apply queue");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tuple = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		CsQueuedCohort *c = MemoryContextAlloc(cxt, sizeof(CsQueuedCohort));

		MemoryContext old;

		c->project_id = MemoryContextStrdup(cxt, SPI_getvalue(tuple, desc, 1));
		c->cohort_id = MemoryContextStrdup(cxt, SPI_getvalue(tuple, desc, 2));
		old = MemoryContextSwitchTo(cxt);
		cohorts = lappend(cohorts, c);
		MemoryContextSwitchTo(old);
	}
	SPI_finish();
	return cohorts;
}

static CsAction
action_of(const char *name)
{
	if (strcmp(name, "members") == 0)
		return CS_ACTION_MEMBERS;
	if (strcmp(name, "add_members") == 0)
		return CS_ACTION_ADD_MEMBERS;
	if (strcmp(name, "remove_members") == 0)
		return CS_ACTION_REMOVE_MEMBERS;
	ereport(ERROR,
			(errcode(ERRCODE_DATA_CORRUPTED),
			 errmsg("cohortsync: unknown action \"%s\" in apply_queue", name)));
	return CS_ACTION_MEMBERS;	/* keep compiler quiet */
}

typedef enum CsNextEntry
{
	CS_ENTRY_APPLIED,
	CS_ENTRY_NONE,				/* the queue is empty */
	CS_ENTRY_BUSY				/* another applier holds the head */
} CsNextEntry;

/* Whether the cohort has anything queued (seen by a new snapshot). */
static bool
has_queue(Datum *key)
{
	Oid			argtypes[2] = {TEXTOID, TEXTOID};

	if (SPI_execute_with_args(queue_nonempty, 2, argtypes, key, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "cohortsync: could not read the apply queue");
	return SPI_processed > 0;
}

/* Lock the head of the cohort's queue, apply it and delete it. */
static CsNextEntry
apply_next_entry(Datum *key, bool wait)
{
	Oid			argtypes[2] = {TEXTOID, TEXTOID};
	Oid			idtype[1] = {INT8OID};
	HeapTuple	tuple;
	TupleDesc	desc;
	Datum		id;
	Datum		session_key[3];
	Datum		arrays[6];
	bool		isnull;
	CsAction	action;
	CsApplyResult result;

	if (SPI_execute_with_args(wait ? lock_head_wait : lock_head_nowait, 2, argtypes, key,
							  NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "cohortsync: could not read the apply queue");
	if (SPI_processed == 0)
	{
		/*
		 * Empty, or the head is another applier's: it is busy (skipped), or it
		 * was applied while we waited for it (look again).
		 */
		if (!has_queue(key))
			return CS_ENTRY_NONE;
		return CS_ENTRY_BUSY;
	}

	/* the tuple stays in this SPI level's memory while cs_apply_queued nests */
	tuple = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	id = SPI_getbinval(tuple, desc, 1, &isnull);
	session_key[0] = key[0];
	session_key[1] = key[1];
	session_key[2] = SPI_getbinval(tuple, desc, 2, &isnull);
	action = action_of(SPI_getvalue(tuple, desc, 3));
	for (int i = 0; i < 6; i++)
	{
		arrays[i] = SPI_getbinval(tuple, desc, 4 + i, &isnull);
		if (isnull && action != CS_ACTION_MEMBERS)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("cohortsync: a queued diff page has no members array")));
	}

	cs_apply_queued(session_key, action, arrays, &result);

	if (SPI_execute_with_args(delete_entry, 1, idtype, &id, NULL, false, 0) != SPI_OK_DELETE ||
		SPI_processed != 1)
		elog(ERROR, "cohortsync: could not delete an applied entry of the apply queue");
	return CS_ENTRY_APPLIED;
}

int64
cs_apply_cohort_queue(const char *project_id, const char *cohort_id, bool wait,
					  int max_entries)
{
	Datum		key[2];
	int64		applied = 0;
	CsNextEntry next = CS_ENTRY_NONE;

	key[0] = CStringGetTextDatum(project_id);
	key[1] = CStringGetTextDatum(cohort_id);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "cohortsync: SPI_connect failed");
	while (max_entries == 0 || applied < max_entries)
	{
		next = apply_next_entry(key, wait);
		if (next == CS_ENTRY_APPLIED)
			applied++;
		else if (next == CS_ENTRY_NONE || !wait)
			break;
		CHECK_FOR_INTERRUPTS();
	}
	SPI_finish();
	return (next == CS_ENTRY_BUSY && applied == 0) ? -1 : applied;
}

/*
 * cohortsync.apply_pending(): apply everything queued now, in the caller's
 * transaction, so that a script or a test sees a full sync at once. Waits for
 * a cohort the worker is applying (then finds its entries gone).
 */
Datum
cohortsync_apply_pending(PG_FUNCTION_ARGS)
{
	MemoryContext cxt = AllocSetContextCreate(CurrentMemoryContext, "cohortsync apply_pending",
											  ALLOCSET_DEFAULT_SIZES);
	List	   *cohorts = cs_queued_cohorts(cxt);
	ListCell   *lc;
	int64		applied = 0;

	foreach(lc, cohorts)
	{
		CsQueuedCohort *c = (CsQueuedCohort *) lfirst(lc);

		applied += cs_apply_cohort_queue(c->project_id, c->cohort_id, true, 0);
	}
	MemoryContextDelete(cxt);
	PG_RETURN_INT64(applied);
}
