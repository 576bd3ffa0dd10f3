/*-------------------------------------------------------------------------
 *
 * outbox.c
 *	  The delivery worker's SQL: claim records, record outcomes.
 *
 * The statements themselves live in the extension's SQL script
 * (cohortsync._claim_due, cohortsync._record_outcome, ...): there they are
 * covered by pgTAP, and after DROP EXTENSION a call fails as one ordinary
 * "function does not exist" error that the worker catches. This file only
 * binds parameters and copies results out of SPI's memory.
 *
 * Nothing is prepared and kept: the worker runs a handful of statements per
 * request, and unprepared statements cannot go stale when the extension is
 * dropped and created again.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"

#include "outbox.h"

bool
cs_outbox_installed(void)
{
	/* a syscache lookup: cheap enough for every turn of the loop */
	return OidIsValid(get_extension_oid("cohortsync", true));
}

int64
cs_outbox_release_leases(void)
{
	bool		isnull;
	Datum		d;

	if (SPI_execute("SELECT cohortsync._release_leases()", false, 0) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "cohortsync: could not release leases");
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return isnull ? 0 : DatumGetInt64(d);
}

static char *
copy_value(MemoryContext cxt, HeapTuple tuple, TupleDesc desc, int col)
{
	char	   *v = SPI_getvalue(tuple, desc, col);

	return v ? MemoryContextStrdup(cxt, v) : NULL;
}

List *
cs_outbox_destinations(MemoryContext cxt)
{
	List	   *result = NIL;

	if (SPI_execute("SELECT name, kind, base_url, account_id, secret, batch_size, max_inflight"
					"  FROM cohortsync._delivery_targets()", true, 0) != SPI_OK_SELECT)
		elog(ERROR, "cohortsync: could not read destinations");

	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	t = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		CsDestination *d = MemoryContextAllocZero(cxt, sizeof(CsDestination));
		MemoryContext old = MemoryContextSwitchTo(cxt);

		bool		isnull;

		d->name = copy_value(cxt, t, desc, 1);
		d->kind = copy_value(cxt, t, desc, 2);
		d->base_url = copy_value(cxt, t, desc, 3);
		d->account_id = copy_value(cxt, t, desc, 4);
		d->secret = copy_value(cxt, t, desc, 5);
		d->batch_size = DatumGetInt32(SPI_getbinval(t, desc, 6, &isnull));
		d->max_inflight = DatumGetInt32(SPI_getbinval(t, desc, 7, &isnull));
		result = lappend(result, d);
		MemoryContextSwitchTo(old);
	}
	return result;
}

/*
 * Walk up to limit records of the destination after id "after" and copy out
 * the claimable ones (cohortsync._claim_due). Nothing is written: the worker
 * keeps its leases in memory. Returns whether anything was claimed.
 *
 * The walk asks for one record more than it keeps, to see whether the queue
 * goes on, and ends the batch before the records of a change that goes on
 * past it: otherwise a change's event could leave in this request and its
 * profile, blocked while the event is in flight, be left behind the cursor.
 */
bool
cs_outbox_claim_due(const char *destination, int limit, int64 after,
					MemoryContext cxt, CsClaim *claim, CsWalk *walk)
{
	Oid			argtypes[3] = {TEXTOID, INT4OID, INT8OID};
	Datum		values[3];
	TupleDesc	desc;
	int			nrows;
	int			keep;
	int			n = 0;
	bool		isnull;

	values[0] = CStringGetTextDatum(destination);
	values[1] = Int32GetDatum(limit + 1);
	values[2] = Int64GetDatum(after);
	if (SPI_execute_with_args("SELECT id, record, claimable, writers_busy, change_key"
							  "  FROM cohortsync._claim_due($1, $2, $3)",
							  3, argtypes, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "cohortsync: could not claim records");

	memset(walk, 0, sizeof(CsWalk));
	claim->nrecords = 0;
	nrows = (int) SPI_processed;
	if (nrows == 0)
		return false;
	desc = SPI_tuptable->tupdesc;
	walk->writers_busy = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], desc, 4, &isnull));

	keep = nrows;
	if (nrows > limit)
	{
		int64		next_change = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[limit], desc, 5, &isnull));

		walk->more = true;
		keep = limit;
		/* at most the two records of one change: never all of the batch */
		while (keep > 1 &&
			   DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[keep - 1], desc, 5, &isnull)) == next_change)
			keep--;
	}

	walk->walked = keep;
	claim->ids = MemoryContextAlloc(cxt, sizeof(int64) * keep);
	claim->records = MemoryContextAlloc(cxt, sizeof(char *) * keep);
	for (int i = 0; i < keep; i++)
	{
		HeapTuple	t = SPI_tuptable->vals[i];
		int64		id = DatumGetInt64(SPI_getbinval(t, desc, 1, &isnull));
		bool		ok = DatumGetBool(SPI_getbinval(t, desc, 3, &isnull));

		/* rows come in id order; keep the highest anyway, the cursor depends on it */
		if (id > walk->last_id)
			walk->last_id = id;
		if (!ok)
		{
			walk->blocked = true;
			continue;
		}
		claim->ids[n] = id;
		claim->records[n] = copy_value(cxt, t, desc, 2);
		n++;
	}
	claim->nrecords = n;
	return n > 0;
}

double
cs_outbox_next_due(void)
{
	bool		isnull;
	Datum		d;

	if (SPI_execute("SELECT cohortsync._next_due()", true, 0) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "cohortsync: could not read the next retry time");
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return isnull ? -1 : DatumGetFloat8(d);
}

static Datum
int8_array(const int64 *ids, int n)
{
	Datum	   *elems = palloc(sizeof(Datum) * Max(n, 1));

	for (int i = 0; i < n; i++)
		elems[i] = Int64GetDatum(ids[i]);
	return PointerGetDatum(construct_array(elems, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

static Datum
interval_datum(const char *fmt, int n)
{
	char	   *s = psprintf(fmt, n);

	return DirectFunctionCall3(interval_in, CStringGetDatum(s),
							   ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1));
}

/*
 * Hand a request's outcome to cohortsync._record_outcome, which reads the
 * answer for the destination's kind and settles the records. http_status 0:
 * no answer (error says why); retry_after < 0: the answer had none.
 */
CsOutcome
cs_outbox_record_outcome(const char *destination, const int64 *ids, int nids,
						 long http_status, const char *body, const char *error,
						 long retry_after, int retry_age_s, int lease_ms,
						 const int64 *rest, int nrest)
{
	Oid			argtypes[9] = {TEXTOID, INT8ARRAYOID, INT4OID, TEXTOID, TEXTOID,
	INTERVALOID, INTERVALOID, INT8ARRAYOID, INT4OID};
	Datum		values[9];
	char		nulls[9] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
	char	   *result;

	values[0] = CStringGetTextDatum(destination);
	values[1] = int8_array(ids, nids);
	values[2] = Int32GetDatum((int32) http_status);
	values[3] = body ? CStringGetTextDatum(body) : (Datum) 0;
	nulls[3] = body ? ' ' : 'n';
	values[4] = error ? CStringGetTextDatum(error) : (Datum) 0;
	nulls[4] = error ? ' ' : 'n';
	values[5] = interval_datum("%d seconds", retry_age_s);
	values[6] = interval_datum("%d milliseconds", lease_ms);
	values[7] = int8_array(rest, nrest);
	values[8] = Int32GetDatum((int32) Min(retry_after, (long) PG_INT32_MAX));
	nulls[8] = retry_after >= 0 ? ' ' : 'n';

	if (SPI_execute_with_args("SELECT cohortsync._record_outcome($1, $2, $3, $4, $5, $6, $7, $8, $9)",
							  9, argtypes, values, nulls, false, 0) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "cohortsync: could not record a delivery outcome");
	result = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	if (result == NULL)
		elog(ERROR, "cohortsync: _record_outcome returned NULL");
	if (strcmp(result, "done") == 0)
		return CS_OUTCOME_DONE;
	if (strcmp(result, "requeued") == 0)
		return CS_OUTCOME_REQUEUED;
	if (strcmp(result, "split") == 0)
		return CS_OUTCOME_SPLIT;
	if (strcmp(result, "retry") == 0)
		return CS_OUTCOME_RETRY;
	elog(ERROR, "cohortsync: _record_outcome returned \"%s\"", result);
	return CS_OUTCOME_RETRY;	/* keep the compiler quiet */
}
