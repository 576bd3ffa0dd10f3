/*-------------------------------------------------------------------------
 *
 * delivery_outcome.c
 *	  Recording what a destination answered: cohortsync._record_outcome reads
 *	  the answer (per kind, in SQL) and settles the records; this file hands it
 *	  the answer and acts on its verdict: send the rest of the claim, send it in
 *	  halves, or let it wait.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "mb/pg_wchar.h"
#include "utils/timestamp.h"

#include "delivery_worker.h"

/* Retries are logged at most this often (ms). */
#define RETRY_LOG_INTERVAL_MS 60000

/* Whether a retry is worth a log line: at most one a minute. */
static bool
retry_log_due(void)
{
	static TimestampTz last_retry_log = 0;
	TimestampTz now = GetCurrentTimestamp();

	if (last_retry_log != 0 &&
		!TimestampDifferenceExceeds(last_retry_log, now, RETRY_LOG_INTERVAL_MS))
		return false;
	last_retry_log = now;
	return true;
}

/* The answer's body as text we may hand to SQL: valid in the database encoding. */
static const char *
usable_body(CsHttpCall *call)
{
	if (call->http_status == 0 || call->response.data == NULL)
		return NULL;
	if (!pg_verifymbstr(call->response.data, call->response.len, true))
		return "(an answer that is not valid text)";
	return call->response.data;
}

/* The records of the claim still to send after the piece in flight, in order. */
static int64 *
rest_of_claim(CsRequest *req, int *nrest)
{
	int64	   *rest = MemoryContextAlloc(req->cxt, sizeof(int64) * (req->claim.nrecords + 1));

	*nrest = 0;
	for (int p = req->npending - 1; p >= 0; p--)
		for (int i = req->pending_lo[p]; i < req->pending_hi[p]; i++)
			rest[(*nrest)++] = req->claim.ids[i];
	return rest;
}

/* Record the piece's outcome in one short transaction; RETRY if that failed. */
static CsOutcome
record_outcome(CsRequest *req)
{
	volatile CsOutcome outcome = CS_OUTCOME_RETRY;
	int			nrest;
	int64	   *rest = rest_of_claim(req, &nrest);

	PG_TRY();
	{
		cs_delivery_start_transaction("cohortsync: recording a delivery outcome");
		outcome = cs_outbox_record_outcome(req->destination,
										   req->claim.ids + req->lo, req->hi - req->lo,
										   req->call.http_status, usable_body(&req->call),
										   req->call.http_status == 0 ? req->call.errbuf : NULL,
										   req->call.retry_after, cs_max_retry_age_s, cs_delivery_lease_ms(), rest, nrest);
		cs_delivery_finish_transaction();
	}
	PG_CATCH();
	{
		ErrorData  *edata = cs_delivery_recover_from_error();

		/* the leases run out and the records go again: at least once */
		cs_delivery_log_error("recording a delivery outcome", edata);
		outcome = CS_OUTCOME_RETRY;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cs_loop_cxt);
	return outcome;
}

/*
 * A request that failed as a whole: say so, at most once a minute. Whether the
 * answer paused the destination was read in SQL, which shows it in
 * destination_status; the log only says what came back.
 */
static void
log_retry(CsRequest *req)
{
	if (!retry_log_due())
		return;
	if (req->call.http_status == 0)
		ereport(LOG,
				(errmsg("cohortsync delivery: destination \"%s\": %s; the records will be retried",
						req->destination, req->call.errbuf),
				 errhint("Further retries are logged at most once a minute; "
						 "see cohortsync.destination_status.")));
	else
		ereport(LOG,
				(errmsg("cohortsync delivery: destination \"%s\" answered HTTP %ld; the records wait for a retry, or the destination is paused",
						req->destination, req->call.http_status),
				 errhint("Further retries are logged at most once a minute; "
						 "see cohortsync.destination_status.")));
}

/* Record the outcome of the request's finished piece; send the next piece or free it. */
void
cs_outcome_settle(CsRequest *req)
{
	CsOutcome	outcome = record_outcome(req);

	/* records that stay queued are behind the cursor now: look there again */
	if (outcome != CS_OUTCOME_DONE)
		cs_schedule_note_holes(req->destination);
	if (outcome == CS_OUTCOME_RETRY)
		log_retry(req);
	cs_schedule_note_outcome(req->destination, outcome, req->started, req->call.retry_after);

	switch (outcome)
	{
		case CS_OUTCOME_SPLIT:
			{
				int			mid = req->lo + (req->hi - req->lo) / 2;

				req->pending_lo[req->npending] = mid;
				req->pending_hi[req->npending] = req->hi;
				req->npending++;
				cs_request_send_piece(req, req->lo, mid);
				cs_schedule_publish();
				return;
			}
		case CS_OUTCOME_DONE:
		case CS_OUTCOME_REQUEUED:
			if (req->npending > 0)
			{
				req->npending--;
				cs_request_send_piece(req, req->pending_lo[req->npending],
									  req->pending_hi[req->npending]);
				cs_schedule_publish();
				return;
			}
			break;
		case CS_OUTCOME_RETRY:
			break;
	}
	cs_request_free(req);
	cs_schedule_publish();
}
