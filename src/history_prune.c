/*-------------------------------------------------------------------------
 *
 * history_prune.c
 *	  cohortsync.history_retention: the delivery worker prunes the history
 *	  on its own.
 *
 * With a retention set, the delivery worker runs cohortsync.prune_history's
 * steps (cohortsync._prune_history_step: one cohort's changes per step, then
 * the finished sessions and their pages) once an hour, the first pass ten
 * seconds after it starts. Each step is its own short transaction, and a turn
 * of the worker's loop runs steps for at most STEP_BUDGET_MS, so delivery
 * goes on between them: the pass takes a small share of the worker's time
 * however many cohorts there are, and no long transaction holds back vacuum.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "pgstat.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "history_prune.h"
#include "outbox.h"

/* cohortsync.history_retention, in minutes; 0: history is kept for ever */
static int	cs_history_retention_min = 0;

#define FIRST_PASS_DELAY_MS (10 * 1000)
#define PASS_INTERVAL_MS (60 * 60 * 1000)
#define STEP_BUDGET_MS 50

static TimestampTz next_pass = 0;
static bool in_pass = false;
static TimestampTz pass_horizon;
static char *cur_project = NULL;	/* in TopMemoryContext; NULL: first step */
static char *cur_cohort = NULL;
static int64 pass_changes = 0;

void
cs_history_prune_init(void)
{
	DefineCustomIntVariable("cohortsync.history_retention",
							"How long the delivery worker keeps membership history (0: for ever).",
							"Older membership_changes, and finished sync sessions with their pages, "
							"are pruned once an hour as cohortsync.prune_history() does.",
							&cs_history_retention_min, 0, 0, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_MIN, NULL, NULL, NULL);
}

static void
set_cursor(const char *project, const char *cohort)
{
	if (cur_project)
		pfree(cur_project);
	if (cur_cohort)
		pfree(cur_cohort);
	cur_project = project ? MemoryContextStrdup(TopMemoryContext, project) : NULL;
	cur_cohort = cohort ? MemoryContextStrdup(TopMemoryContext, cohort) : NULL;
}

static void
end_pass(void)
{
	in_pass = false;
	set_cursor(NULL, NULL);
	next_pass = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), PASS_INTERVAL_MS);
}

/* One step in its own transaction; returns false when the pass is over. */
static bool
prune_step(void)
{
	Oid			argtypes[3] = {TIMESTAMPTZOID, TEXTOID, TEXTOID};
	Datum		values[3];
	char		nulls[3] = {' ', ' ', ' '};
	bool		more = false;
	char	   *project = NULL;
	char	   *cohort = NULL;
	MemoryContext cxt = CurrentMemoryContext;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "cohortsync: SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "cohortsync: pruning history");

	if (cs_outbox_installed())
	{
		values[0] = TimestampTzGetDatum(pass_horizon);
		values[1] = cur_project ? CStringGetTextDatum(cur_project) : (Datum) 0;
		values[2] = cur_cohort ? CStringGetTextDatum(cur_cohort) : (Datum) 0;
		nulls[1] = nulls[2] = cur_project ? ' ' : 'n';
		if (SPI_execute_with_args("SELECT project_id, cohort_id, changes, sessions, pages"
								  "  FROM cohortsync._prune_history_step($1, $2, $3)",
								  3, argtypes, values, nulls, false, 0) != SPI_OK_SELECT ||
			SPI_processed != 1)
			elog(ERROR, "cohortsync: could not prune history");
		project = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
		cohort = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
		if (project != NULL)
		{
			bool		isnull;
			Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull);

			if (!isnull)
				pass_changes += DatumGetInt64(d);
			project = MemoryContextStrdup(cxt, project);
			cohort = MemoryContextStrdup(cxt, cohort ? cohort : "");
			more = true;
		}
		else
			ereport(DEBUG1,
					(errmsg_internal("cohortsync delivery: history pruned before %s: " INT64_FORMAT
									 " changes, %s sessions, %s pages",
									 timestamptz_to_str(pass_horizon), pass_changes,
									 SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4),
									 SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 5))));
	}

	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
	MemoryContextSwitchTo(cxt);

	if (more)
		set_cursor(project, cohort);
	return more;
}

bool
cs_history_prune_tick(void)
{
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz deadline;
	MemoryContext cxt = CurrentMemoryContext;
	volatile bool more = true;

	if (cs_history_retention_min <= 0)
	{
		if (in_pass)
			end_pass();
		return false;
	}
	if (!in_pass)
	{
		if (next_pass == 0)
			next_pass = TimestampTzPlusMilliseconds(now, FIRST_PASS_DELAY_MS);
		if (now < next_pass)
			return false;
		in_pass = true;
		pass_changes = 0;
		set_cursor(NULL, NULL);
		pass_horizon = now - (TimestampTz) cs_history_retention_min * 60 * USECS_PER_SEC;
	}

	deadline = TimestampTzPlusMilliseconds(now, STEP_BUDGET_MS);
	PG_TRY();
	{
		while ((more = prune_step()) && GetCurrentTimestamp() < deadline)
			;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		MemoryContextSwitchTo(cxt);
		pgstat_report_activity(STATE_IDLE, NULL);
		ereport(LOG,
				(errmsg("cohortsync delivery: pruning the history failed: %s; trying again in an hour",
						edata->message)));
		end_pass();
		return false;
	}
	PG_END_TRY();

	if (!more)
	{
		end_pass();
		return false;
	}
	return true;
}
