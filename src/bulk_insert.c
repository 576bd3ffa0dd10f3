/*-------------------------------------------------------------------------
 *
 * bulk_insert.c
 *	  Insert a batch of rows into a table the way COPY does.
 *
 * An INSERT statement writes its rows one at a time: one heap_insert, and
 * one WAL record, per row. COPY buffers its rows and hands them to
 * table_multi_insert(), which fills a heap page at a time and logs each page
 * once; index entries, constraints and AFTER triggers then follow row by row,
 * as they would for the INSERT. A page of new members (membership.c) is such
 * a batch twice over: its members, and their history rows.
 *
 * Only a table that is exactly what the caller expects is written this way.
 * The caller names the triggers it knows of; any other trigger (a user's own:
 * the membership tables are promised to be usable from triggers), a BEFORE
 * ROW or INSTEAD OF trigger, a rule, row level security, a generated column,
 * a default that is volatile (beyond nextval), a column of another type, a
 * partition, a user without the INSERT privilege or a read-only transaction
 * sends the caller back to its SQL statement, which handles all of them as
 * the server always has. These are the cases in which CopyFrom() gives up
 * multi-inserts and those that a statement treats in ways COPY does not
 * (rules, row security); each test reads the relcache or the syscache.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_class.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "optimizer/optimizer.h"
#include "rewrite/rewriteHandler.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "bulk_insert.h"
#include "pg_compat.h"

/* The batch as the executor takes it: rows in slots, defaults to compute. */
typedef struct BulkBatch
{
	int			nrows;
	Datum	  **values;			/* per column: each row's value (per_row) */
	bool	  **nulls;
	int		   *colmap;			/* per attribute: its column, or -1 */
	ExprState **defaults;		/* per attribute not given: its default */
} BulkBatch;

static bool
is_own_trigger(const char *name, const char *const *own_triggers)
{
	for (int i = 0; own_triggers != NULL && own_triggers[i] != NULL; i++)
		if (strcmp(name, own_triggers[i]) == 0)
			return true;
	return false;
}

/* Whether INSERT would write the table as it is, without anything of its own. */
static bool
table_fits(Relation rel, const char *const *own_triggers)
{
	TriggerDesc *trigdesc = rel->trigdesc;
	TupleDesc	tupdesc = RelationGetDescr(rel);

	/* where an INSERT would raise its error (a read-only transaction), let it */
	if (XactReadOnly || IsInParallelMode())
		return false;
	if (rel->rd_rel->relkind != RELKIND_RELATION || rel->rd_rel->relispartition)
		return false;
	if (rel->rd_rel->relrowsecurity || rel->rd_rules != NULL)
		return false;
	if (trigdesc != NULL)
	{
		/* triggers that see (or replace) each row before it is stored */
		if (trigdesc->trig_insert_before_row || trigdesc->trig_insert_instead_row)
			return false;
		for (int i = 0; i < trigdesc->numtriggers; i++)
			if (!is_own_trigger(trigdesc->triggers[i].tgname, own_triggers))
				return false;
	}
	for (int i = 0; i < tupdesc->natts; i++)
		if (TupleDescAttr(tupdesc, i)->attgenerated != '\0')
			return false;
	return pg_class_aclcheck(RelationGetRelid(rel), GetUserId(), ACL_INSERT) == ACLCHECK_OK;
}

/*
 * Map each attribute to the column that gives it (colmap), checking that the
 * columns exist with the expected types and may be given.
 */
static bool
columns_fit(Relation rel, const CsBulkColumn *columns, int ncolumns, int *colmap)
{
	TupleDesc	tupdesc = RelationGetDescr(rel);

	for (int i = 0; i < tupdesc->natts; i++)
		colmap[i] = -1;
	for (int c = 0; c < ncolumns; c++)
	{
		AttrNumber	attnum = get_attnum(RelationGetRelid(rel), columns[c].name);
		Form_pg_attribute att;

		if (attnum <= 0)
			return false;
		att = TupleDescAttr(tupdesc, attnum - 1);
		if (att->atttypid != columns[c].type || att->attidentity != '\0')
			return false;
		colmap[attnum - 1] = c;
	}
	return true;
}

/*
 * The default of every attribute not given, ready to run in estate, as
 * COPY's BeginCopyFrom() prepares them. Returns false if one is volatile (an
 * identity or serial column's nextval() is not): it might read the table.
 */
static bool
prepare_defaults(Relation rel, BulkBatch *batch, EState *estate)
{
	TupleDesc	tupdesc = RelationGetDescr(rel);

	batch->defaults = palloc0(sizeof(ExprState *) * tupdesc->natts);
	for (int i = 0; i < tupdesc->natts; i++)
	{
		Node	   *expr;

		if (TupleDescAttr(tupdesc, i)->attisdropped || batch->colmap[i] >= 0)
			continue;
		expr = build_column_default(rel, i + 1);
		if (expr == NULL)
			continue;
		if (contain_volatile_functions_not_nextval(expr))
			return false;
		batch->defaults[i] = ExecPrepareExpr((Expr *) expr, estate);
	}
	return true;
}

/*
 * Take the per-row columns' arrays apart. They must all be of one length, the
 * number of rows; false if not (the statement would pad them with NULLs).
 */
static bool
unpack_columns(const CsBulkColumn *columns, int ncolumns, BulkBatch *batch)
{
	batch->nrows = -1;
	batch->values = palloc0(sizeof(Datum *) * ncolumns);
	batch->nulls = palloc0(sizeof(bool *) * ncolumns);
	for (int c = 0; c < ncolumns; c++)
	{
		int16		typlen;
		bool		typbyval;
		char		typalign;
		int			n;

		if (!columns[c].per_row)
			continue;
		if (columns[c].isnull)
			return false;
		get_typlenbyvalalign(columns[c].type, &typlen, &typbyval, &typalign);
		deconstruct_array(DatumGetArrayTypeP(columns[c].value), columns[c].type,
						  typlen, typbyval, typalign,
						  &batch->values[c], &batch->nulls[c], &n);
		if (batch->nrows >= 0 && n != batch->nrows)
			return false;
		batch->nrows = n;
	}
	return batch->nrows >= 0;
}

/* Store row r of the batch in the slot, defaults computed; constraints checked. */
static void
fill_slot(TupleTableSlot *slot, const CsBulkColumn *columns, const BulkBatch *batch,
		  int r, ResultRelInfo *rri, EState *estate)
{
	ExprContext *econtext = GetPerTupleExprContext(estate);
	int			natts = slot->tts_tupleDescriptor->natts;

	ExecClearTuple(slot);
	for (int i = 0; i < natts; i++)
	{
		int			c = batch->colmap[i];

		if (c >= 0 && columns[c].per_row)
		{
			slot->tts_values[i] = batch->values[c][r];
			slot->tts_isnull[i] = batch->nulls[c][r];
		}
		else if (c >= 0)
		{
			slot->tts_values[i] = columns[c].value;
			slot->tts_isnull[i] = columns[c].isnull;
		}
		else if (batch->defaults[i] != NULL)
			slot->tts_values[i] = ExecEvalExpr(batch->defaults[i], econtext,
											   &slot->tts_isnull[i]);
		else
		{
			slot->tts_values[i] = (Datum) 0;
			slot->tts_isnull[i] = true;
		}
	}
	ExecStoreVirtualTuple(slot);
	slot->tts_tableOid = RelationGetRelid(rri->ri_RelationDesc);
	if (rri->ri_RelationDesc->rd_att->constr != NULL)
		ExecConstraints(rri, slot, estate);
}

/*
 * Rows stored by one table_multi_insert() at most, as COPY buffers at most a
 * thousand: the slots are reused for the next ones, so that a batch larger
 * than a page is written in bounded memory.
 */
#define BULK_CHUNK_ROWS 1000

/* Store rows first .. first + n - 1 with one multi-insert, then index them. */
static void
insert_chunk(ResultRelInfo *rri, TupleTableSlot **slots, int first, int n,
			 const CsBulkColumn *columns, const BulkBatch *batch,
			 TransitionCaptureState *transitions, BulkInsertState bistate,
			 EState *estate)
{
	for (int i = 0; i < n; i++)
	{
		CHECK_FOR_INTERRUPTS();
		fill_slot(slots[i], columns, batch, first + i, rri, estate);
	}
	table_multi_insert(rri->ri_RelationDesc, slots, n, estate->es_output_cid, 0, bistate);

	for (int i = 0; i < n; i++)
	{
		List	   *recheck = NIL;

		if (rri->ri_NumIndices > 0)
			recheck = cs_ExecInsertIndexTuples(rri, slots[i], estate, false, false,
											   NULL, NIL, false);
		ExecARInsertTriggers(estate, rri, slots[i], recheck, transitions);
		list_free(recheck);
	}
	ResetPerTupleExprContext(estate);
}

/*
 * The executor's part, as CopyFrom() does it for an unpartitioned table
 * without BEFORE ROW triggers: statement triggers around the insert, the rows
 * stored by table_multi_insert(), then for each row its index entries (unique
 * checks raising their errors as an INSERT's would) and its AFTER ROW events,
 * which also fill the transition tables; the events fire at the end, as at
 * the end of a statement.
 */
static void
insert_batch(ResultRelInfo *rri, const CsBulkColumn *columns, BulkBatch *batch,
			 EState *estate)
{
	Relation	rel = rri->ri_RelationDesc;
	int			nslots = Min(batch->nrows, BULK_CHUNK_ROWS);
	TransitionCaptureState *transitions;
	TupleDesc	slotdesc;
	TupleTableSlot **slots;
	BulkInsertState bistate;

	AfterTriggerBeginQuery();
	transitions = MakeTransitionCaptureState(rel->trigdesc, RelationGetRelid(rel),
											 CMD_INSERT);
	ExecBSInsertTriggers(estate, rri);

	/*
	 * The slots share an unpinned copy of the relation's descriptor: each slot
	 * made on the relcache's own would pin it with the resource owner, whose
	 * hash of remembered resources probes linearly through a thousand equal
	 * entries (on 15, a tenth of a page's time).
	 */
	slotdesc = CreateTupleDescCopy(RelationGetDescr(rel));
	slots = palloc(sizeof(TupleTableSlot *) * Max(nslots, 1));
	for (int i = 0; i < nslots; i++)
		slots[i] = ExecAllocTableSlot(&estate->es_tupleTable, slotdesc,
									  table_slot_callbacks(rel));

	bistate = GetBulkInsertState();
	for (int first = 0; first < batch->nrows; first += nslots)
		insert_chunk(rri, slots, first, Min(nslots, batch->nrows - first), columns,
					 batch, transitions, bistate, estate);
	FreeBulkInsertState(bistate);
	table_finish_bulk_insert(rel, 0);

	ExecASInsertTriggers(estate, rri, transitions);
	AfterTriggerEndQuery(estate);
}

int64
cs_bulk_insert(Oid relid, const char *const *own_triggers,
			   const CsBulkColumn *columns, int ncolumns)
{
	MemoryContext cxt;
	MemoryContext oldcxt;
	Relation	rel;
	BulkBatch	batch;
	EState	   *estate;
	ResultRelInfo *rri;
	int64		inserted = -1;

	cxt = AllocSetContextCreate(CurrentMemoryContext, "cohortsync bulk insert",
								ALLOCSET_DEFAULT_SIZES);
	oldcxt = MemoryContextSwitchTo(cxt);

	/* the lock an INSERT takes, kept to the end of the transaction as an INSERT's is */
	rel = table_open(relid, RowExclusiveLock);
	batch.colmap = palloc(sizeof(int) * RelationGetDescr(rel)->natts);
	if (table_fits(rel, own_triggers) &&
		columns_fit(rel, columns, ncolumns, batch.colmap) &&
		unpack_columns(columns, ncolumns, &batch))
	{
		/* a new command, which sees what the ones before it wrote, as SPI starts one */
		CommandCounterIncrement();
		PushActiveSnapshot(GetTransactionSnapshot());

		estate = CreateExecutorState();
		estate->es_output_cid = GetCurrentCommandId(true);
		estate->es_snapshot = GetActiveSnapshot();

		/* not in a range table: the AFTER trigger queue finds it in this list */
		rri = makeNode(ResultRelInfo);
		InitResultRelInfo(rri, rel, 0, NULL, 0);
		estate->es_opened_result_relations = list_make1(rri);

		if (prepare_defaults(rel, &batch, estate))
		{
			ExecOpenIndices(rri, false);
			insert_batch(rri, columns, &batch, estate);
			inserted = batch.nrows;
		}

		ExecResetTupleTable(estate->es_tupleTable, false);
		ExecCloseResultRelations(estate);
		FreeExecutorState(estate);
		PopActiveSnapshot();
	}
	table_close(rel, NoLock);

	MemoryContextSwitchTo(oldcxt);
	MemoryContextDelete(cxt);
	return inserted;
}
