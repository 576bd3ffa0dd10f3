/*-------------------------------------------------------------------------
 *
 * outbox_shrink.c
 *	  The delivery worker gives a drained outbox's space back.
 *
 * Deleting delivered records leaves the outbox's files as big as the largest
 * backlog they held. When the worker has nothing in flight it calls
 * cohortsync._shrink_outbox() (at most every SHRINK_INTERVAL_MS), which
 * truncates the outbox if it is empty and big, and gives up at once when
 * anything else holds it: see the function's comment for the locking.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "executor/spi.h"
#include "pgstat.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "outbox.h"

#define SHRINK_INTERVAL_MS (10 * 1000)
#define ERROR_LOG_INTERVAL_MS (60 * 1000)

static TimestampTz next_try = 0;
static TimestampTz last_error_log = 0;

/* One call of _shrink_outbox in its own transaction; returns whether it truncated. */
static bool
shrink(void)
{
	bool		shrunk = false;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "cohortsync: SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "cohortsync: shrinking the drained outbox");

	if (cs_outbox_installed())
	{
		bool		isnull;

		if (SPI_execute("SELECT cohortsync._shrink_outbox()", false, 0) != SPI_OK_SELECT ||
			SPI_processed != 1)
			elog(ERROR, "cohortsync: could not shrink the outbox");
		shrunk = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	}

	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
	return shrunk;
}

void
cs_outbox_shrink_tick(bool idle)
{
	TimestampTz now;
	MemoryContext cxt = CurrentMemoryContext;

	if (!idle || RecoveryInProgress())
		return;
	now = GetCurrentTimestamp();
	if (now < next_try)
		return;
	next_try = TimestampTzPlusMilliseconds(now, SHRINK_INTERVAL_MS);

	PG_TRY();
	{
		if (shrink())
			ereport(LOG,
					(errmsg("cohortsync delivery: truncated the drained outbox to give its space back")));
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
		if (TimestampDifferenceExceeds(last_error_log, now, ERROR_LOG_INTERVAL_MS))
		{
			ereport(LOG,
					(errmsg("cohortsync delivery: shrinking the drained outbox failed: %s", edata->message)));
			last_error_log = now;
		}
		FreeErrorData(edata);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
}
