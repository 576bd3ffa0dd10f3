/*-------------------------------------------------------------------------
 *
 * outbox_plan.c
 *	  Plan the delivery worker's statements on cohortsync.outbox as if its
 *	  pages were full, whatever its statistics say.
 *
 * The outbox is a queue: it fills by millions in one statement and drains to
 * nothing, so the statistics of its last ANALYZE or VACUUM rarely describe it.
 * The harmful case is a queue analyzed while (nearly) empty and filled again:
 * its pages are many but its density (reltuples / relpages) is about zero, so
 * the planner takes every scan of it to return one row, and every index costs
 * one page. It then cannot tell a probe that descends to one key from a scan
 * of a whole index that merely checks a key on a later column: a DELETE by id
 * walked every entry of outbox_claim_idx (destination, id) for every request,
 * and the claim's identity probe walked the whole of outbox_claim_idx for
 * every record it looked at. Costing settings (enable_seqscan and the like)
 * cannot tell those apart either: both are index scans.
 *
 * Every statement the worker runs reaches a few rows through an index, so it
 * wants the planner to believe the queue is as big as it can be: then a scan
 * of a whole index costs what it would really cost, and the plans that reach
 * rows by their keys win. The worker's SQL functions set
 * cohortsync.plan_outbox_full; while it is on, the estimates for the outbox
 * (and its indexes) are those of its pages filled with rows of the width the
 * planner expects, when that is more than the statistics say. Statements of
 * other sessions are planned as usual.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "access/htup_details.h"
#include "access/table.h"
#include "nodes/pathnodes.h"
#include "optimizer/plancat.h"
#include "storage/bufpage.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

#include "outbox.h"

static bool cs_plan_outbox_full = false;
static get_relation_info_hook_type prev_get_relation_info_hook = NULL;

static bool
is_outbox(Oid relid)
{
	char	   *relname = get_rel_name(relid);
	char	   *nspname;

	if (relname == NULL || strcmp(relname, "outbox") != 0)
		return false;
	nspname = get_namespace_name(get_rel_namespace(relid));
	return nspname != NULL && strcmp(nspname, "cohortsync") == 0;
}

/* How many rows rel's pages hold when full, as estimate_rel_size() reckons a row. */
static double
full_tuples(Oid relid, BlockNumber pages)
{
	Relation	rel = table_open(relid, NoLock);	/* the planner holds a lock */
	int32		width = get_rel_data_width(rel, NULL);
	double		per_page;

	table_close(rel, NoLock);
	width += MAXALIGN(SizeofHeapTupleHeader) + sizeof(ItemIdData);
	per_page = (double) (BLCKSZ - SizeOfPageHeaderData) / width;
	return floor(per_page * pages);
}

static void
cs_outbox_relation_info(PlannerInfo *root, Oid relid, bool inhparent, RelOptInfo *rel)
{
	double		full;
	ListCell   *lc;

	if (prev_get_relation_info_hook)
		prev_get_relation_info_hook(root, relid, inhparent, rel);

	if (!cs_plan_outbox_full || rel->pages == 0 || !is_outbox(relid))
		return;
	full = full_tuples(relid, rel->pages);
	if (rel->tuples >= full)
		return;
	rel->tuples = full;
	/* get_relation_info() gave a full index the table's count: keep it so */
	foreach(lc, rel->indexlist)
	{
		IndexOptInfo *index = (IndexOptInfo *) lfirst(lc);

		if (index->indpred == NIL)
			index->tuples = full;
	}
}

void
cs_outbox_plan_init(void)
{
	DefineCustomBoolVariable("cohortsync.plan_outbox_full",
							 "Plans statements on cohortsync.outbox as if its pages were full.",
							 "Set by the delivery worker's SQL functions, so that their plans do not "
							 "depend on the queue's statistics.",
							 &cs_plan_outbox_full,
							 false,
							 PGC_USERSET,
							 GUC_NOT_IN_SAMPLE,
							 NULL, NULL, NULL);
	prev_get_relation_info_hook = get_relation_info_hook;
	get_relation_info_hook = cs_outbox_relation_info;
}
