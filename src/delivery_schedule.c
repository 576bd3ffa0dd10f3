/*-------------------------------------------------------------------------
 *
 * delivery_schedule.c
 *	  Which records go next: per destination, claim batches from a cursor and
 *	  start each request as soon as its claim has committed.
 *
 * Leases live in the worker's memory, not in rows: there is exactly one
 * worker, so what it has in flight is simply what its requests carry. A claim
 * walks the queue from a cursor per destination (the highest id it has looked
 * at), which starts it after everything in flight; records it had to pass
 * over (blocked by an identity in flight, waiting for a retry, or committed
 * late below the cursor) are found by scanning from the start again once
 * nothing of the destination is in flight. Per-identity order is
 * cohortsync._claim_due's: it never offers a record whose identity has an
 * earlier record in flight or waiting.
 *
 * Backoff per destination: each record that failed waits for its own retry
 * (next_attempt_at, in SQL), but records queued meanwhile would go out at
 * once, and an outage would cost dozens of requests a second. So after a
 * request failed as a whole, the destination gets at most one request at a
 * time, each no sooner than backoff_until: 1 s after the first failure,
 * doubling to 5 minutes, with jitter, or later when the answer's Retry-After
 * says so. The first request that is settled ends it; so does a pause (the
 * destination leaves the active ones) and a committed replay_failed() of the
 * destination (delivery_reset.c): both follow a human's fix.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "access/xlog.h"
#include "common/pg_prng.h"
#include "utils/timestamp.h"
#include "utils/memutils.h"

#include "delivery.h"
#include "delivery_worker.h"
#include "guc_common.h"

/*
 * What the worker knows of one destination's queue. cursor: every record with
 * an id above it has not been looked at since the last scan from the start;
 * everything in flight is at or below it. holes: a record at or below the
 * cursor may be waiting (it was passed over, came back for a retry, or was
 * committed late by a transaction in progress); rescan: the last walk reached
 * the end of the queue with holes, so no more is claimed until nothing of the
 * destination is in flight, and then the walk starts from the beginning.
 */
typedef struct CsDestState
{
	char	   *name;
	int64		cursor;
	bool		holes;
	bool		rescan;
	bool		full_pass;		/* the walks since the cursor was 0 have not reached the end */
	bool		active;			/* seen active at the last claim */
	bool		unknown_kind_logged;
	int			consecutive_failures;	/* requests that failed as a whole, in a row */
	TimestampTz backoff_until;	/* while failing: no request before this */
	TimestampTz last_failure_at;	/* when the last failure was counted */
} CsDestState;

/* Backoff after consecutive failures: the first delay, the longest, the longest Retry-After honoured. */
#define BACKOFF_FIRST_MS 1000
#define BACKOFF_MAX_MS (5 * 60 * 1000)
#define RETRY_AFTER_MAX_S (24 * 3600)

/* Walks that claim nothing (whole batches blocked) allowed per turn of the loop. */
#define MAX_EMPTY_WALKS 8

static List *dest_states = NIL;		/* CsDestState *, in cs_worker_cxt */
static int	known_slots = 0;	/* requests the active destinations allow in all */
static bool leases_released = false;
static bool extension_missing_logged = false;
static bool version_checked = false;	/* the SQL objects are the library's version */
static bool version_logged = false;	/* that they are not was logged */

static CsDestState *
dest_state(const char *name)
{
	ListCell   *lc;
	CsDestState *st;
	MemoryContext old;

	foreach(lc, dest_states)
	{
		st = (CsDestState *) lfirst(lc);
		if (strcmp(st->name, name) == 0)
			return st;
	}
	old = MemoryContextSwitchTo(cs_worker_cxt);
	st = palloc0(sizeof(CsDestState));
	st->name = pstrdup(name);
	st->full_pass = true;
	dest_states = lappend(dest_states, st);
	MemoryContextSwitchTo(old);
	return st;
}

/* Something of this destination went back to waiting below its cursor. */
void
cs_schedule_note_holes(const char *destination)
{
	dest_state(destination)->holes = true;
}

/*
 * A request of the destination that started at "started" ended. RETRY: it
 * failed as a whole; a failure counts once per round of requests (those in
 * flight together fail together), and each count doubles the delay. Anything
 * else was settled: full speed again.
 */
void
cs_schedule_note_outcome(const char *destination, CsOutcome outcome,
						 TimestampTz started, long retry_after_s)
{
	CsDestState *st = dest_state(destination);
	TimestampTz now = GetCurrentTimestamp();
	int64		delay_ms;

	if (outcome == CS_OUTCOME_SPLIT)
		return;
	if (outcome != CS_OUTCOME_RETRY)
	{
		st->consecutive_failures = 0;
		st->backoff_until = 0;
		return;
	}
	if (st->consecutive_failures == 0 || started >= st->last_failure_at)
	{
		st->consecutive_failures++;
		st->last_failure_at = now;
	}
	delay_ms = BACKOFF_FIRST_MS;
	for (int i = 1; i < st->consecutive_failures && delay_ms < BACKOFF_MAX_MS; i++)
		delay_ms *= 2;
	delay_ms = Min(delay_ms, BACKOFF_MAX_MS);
	/* jitter: between three quarters and all of it, so that workers do not march in step */
	delay_ms -= (int64) (pg_prng_double(&pg_global_prng_state) * delay_ms / 4);
	if (retry_after_s >= 0)
		delay_ms = Max(delay_ms, (int64) Min(retry_after_s, RETRY_AFTER_MAX_S) * 1000);
	st->backoff_until = Max(st->backoff_until, TimestampTzPlusMilliseconds(now, delay_ms));
}

/*
 * End the backoff of the destinations that committed replays asked for: they
 * are tried at once, and if they still fail the schedule starts again from its
 * first step. A destination the worker has not met yet has none to end.
 */
static void
apply_backoff_resets(void)
{
	CsBackoffResets resets;
	ListCell   *lc;

	if (!cs_delivery_take_resets(&resets))
		return;
	foreach(lc, dest_states)
	{
		CsDestState *st = (CsDestState *) lfirst(lc);
		bool		named = resets.all;

		for (int i = 0; i < resets.n && !named; i++)
			named = strcmp(resets.names[i], st->name) == 0;
		if (named)
		{
			st->consecutive_failures = 0;
			st->backoff_until = 0;
		}
	}
}

/*
 * Whether the destination backs off; if so *slots is how many requests it may
 * have in flight (one) and *wait_ms how long until it may send (0: now).
 */
static bool
backing_off(CsDestState *st, int *slots, long *wait_ms)
{
	TimestampTz now;

	if (st->consecutive_failures == 0)
		return false;
	now = GetCurrentTimestamp();
	*slots = 1;
	*wait_ms = st->backoff_until > now ? (long) ((st->backoff_until - now + 999) / 1000) : 0;
	return true;
}

static CsPublished *
published_slot(CsPublished *pub, int *n, const char *destination)
{
	int			i;

	if (strlen(destination) >= CS_PUBLISHED_NAMELEN)
		return NULL;
	for (i = 0; i < *n; i++)
		if (strcmp(pub[i].destination, destination) == 0)
			return &pub[i];
	if (*n == CS_PUBLISHED_MAX)
		return NULL;
	memset(&pub[i], 0, sizeof(CsPublished));
	strlcpy(pub[i].destination, destination, CS_PUBLISHED_NAMELEN);
	(*n)++;
	return &pub[i];
}

/*
 * Publish, for destination_status, the records in flight per destination and
 * the backoff of those that fail.
 */
void
cs_schedule_publish(void)
{
	CsPublished pub[CS_PUBLISHED_MAX];
	int			n = 0;
	ListCell   *lc;

	foreach(lc, cs_requests)
	{
		CsRequest  *req = (CsRequest *) lfirst(lc);
		CsPublished *p = published_slot(pub, &n, req->destination);

		if (p != NULL)
			p->records += cs_request_records(req);
	}
	foreach(lc, dest_states)
	{
		CsDestState *st = (CsDestState *) lfirst(lc);
		CsPublished *p;

		if (st->consecutive_failures == 0)
			continue;
		p = published_slot(pub, &n, st->name);
		if (p != NULL)
		{
			p->consecutive_failures = st->consecutive_failures;
			p->backoff_until = st->backoff_until;
		}
	}
	cs_delivery_publish(pub, n);
}

/*
 * Whether the extension's SQL objects are of another version than the library
 * (the server runs a new library, ALTER EXTENSION ... UPDATE has not run yet).
 * Their functions may lack what the worker calls or mean something else by it,
 * so nothing is delivered until then; what they queued stays queued. Asked on
 * every turn until the versions agree, then once per installation.
 */
static bool
sql_outdated(void)
{
	char	   *sql_version;

	if (version_checked)
		return false;
	if (!cs_sql_version_differs(&sql_version))
	{
		version_checked = true;
		version_logged = false;
		return false;
	}
	if (!version_logged)
		ereport(LOG,
				(errmsg("cohortsync delivery: the extension's SQL objects in database \"%s\" are version %s, the library %s; "
						"nothing is delivered until ALTER EXTENSION cohortsync UPDATE runs there",
						cs_database, sql_version, cs_library_version())));
	version_logged = true;
	return true;
}

/*
 * In one short transaction: whether the extension is there and of the
 * library's version, the leases a predecessor left in rows, and the active
 * destinations. Returns false on an error (logged); *dests is NIL when the
 * extension is not installed or *outdated.
 */
static bool
read_destinations(List **dests, bool *installed, bool *outdated)
{
	*dests = NIL;
	*installed = true;
	*outdated = false;
	PG_TRY();
	{
		cs_delivery_start_transaction("cohortsync: reading destinations");
		*installed = cs_outbox_installed();
		if (*installed)
			*outdated = sql_outdated();
		if (*installed && !*outdated)
		{
			if (!leases_released)
			{
				/* rows leased the 0.1.0 way (cohortsync._claim) by a predecessor */
				int64		n = cs_outbox_release_leases();

				if (n > 0)
					ereport(LOG,
							(errmsg("cohortsync delivery: released the leases of " INT64_FORMAT
									" records left in flight by a previous worker", n)));
				leases_released = true;
			}
			*dests = cs_outbox_destinations(cs_loop_cxt);
		}
		cs_delivery_finish_transaction();
	}
	PG_CATCH();
	{
		ErrorData  *edata = cs_delivery_recover_from_error();

		cs_delivery_log_error("claiming records", edata);
		return false;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cs_loop_cxt);
	return true;
}

/* Wait quietly for CREATE EXTENSION, and then start every queue from the beginning. */
static void
extension_missing(void)
{
	ListCell   *lc;

	if (!extension_missing_logged)
		ereport(LOG,
				(errmsg("cohortsync delivery: extension \"cohortsync\" is not installed in database \"%s\"; waiting "
						"(run CREATE EXTENSION cohortsync there, or set cohortsync.database to the database that has it)",
						cs_database)));
	extension_missing_logged = true;
	version_checked = false;
	version_logged = false;
	known_slots = 0;
	/* a new extension has a new queue: forget the cursors */
	foreach(lc, dest_states)
		((CsDestState *) lfirst(lc))->rescan = true;
}

/*
 * One claim for a destination, in its own short read-only transaction, walking
 * from the destination's cursor. Returns the request to start, or NULL; sets
 * *more when the walk stopped at the batch size (the queue goes on) and
 * *failed on an error (logged).
 */
static CsRequest *
claim_for(CsDestination *dest, const CsDestinationKind *kind, CsDestState *st,
		  bool *more, bool *failed)
{
	CsRequest  *volatile req = cs_request_new(dest, kind);
	volatile bool claimed = false;
	CsWalk		walk;

	*more = false;
	*failed = false;
	PG_TRY();
	{
		cs_delivery_start_transaction("cohortsync: claiming records");
		claimed = cs_outbox_claim_due(dest->name, dest->batch_size, st->cursor,
									  req->cxt, &req->claim, &walk);
		cs_delivery_finish_transaction();
	}
	PG_CATCH();
	{
		ErrorData  *edata = cs_delivery_recover_from_error();

		cs_delivery_log_error("claiming records", edata);
		explicit_bzero(req->secret, strlen(req->secret));
		MemoryContextDelete(req->cxt);
		*failed = true;
		return NULL;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cs_loop_cxt);

	if (walk.walked > 0)
		st->cursor = Max(st->cursor, walk.last_id);
	if (walk.blocked || walk.writers_busy)
		st->holes = true;
	if (walk.more)
		*more = true;
	else
	{
		/*
		 * At the end of the queue. If something may wait behind the cursor, look
		 * there from the start, unless this pass started there: then what it
		 * passed over waits for something to change (a request to finish, a
		 * retry to come due, a commit), and the next turn looks again.
		 */
		if (st->holes && !st->full_pass)
			st->rescan = true;
		st->full_pass = false;
	}

	if (!claimed)
	{
		explicit_bzero(req->secret, strlen(req->secret));
		MemoryContextDelete(req->cxt);
		return NULL;
	}
	return req;
}

/*
 * Fill the destination's free slots. Returns false when a claim failed (the
 * turn ends); sets *claimed_any when a request started, *come_back when the
 * loop should claim again without sleeping, *held when the destination backs
 * off (and *wait_ms to when it may send, if later than now).
 */
static bool
fill_slots(CsDestination *dest, CsDestState *st, bool poll,
		   bool *claimed_any, bool *come_back, bool *held, long *wait_ms)
{
	const CsDestinationKind *kind = cs_destination_kind(dest->kind);
	int			nfly = cs_requests_in_flight_for(dest->name);
	int			slots = dest->max_inflight;
	int			free_slots;
	int			empty_walks = 0;
	long		backoff_ms;

	if (kind == NULL)
	{
		/* a kind this library does not know: the SQL objects are newer */
		if (!st->unknown_kind_logged)
			ereport(LOG,
					(errmsg("cohortsync delivery: destination \"%s\" is of kind \"%s\", which this library cannot send to",
							dest->name, dest->kind),
					 errhint("Install the library of the extension's version and restart the server.")));
		st->unknown_kind_logged = true;
		return true;
	}

	/* failing: one request at a time, when its time has come */
	*held = backing_off(st, &slots, &backoff_ms);
	if (*held && backoff_ms > 0)
	{
		*wait_ms = Min(*wait_ms, backoff_ms);
		return true;
	}
	free_slots = slots - nfly;

	/*
	 * A safety net: the cursor relies on every writer of the queue having a
	 * transaction id before it takes ids from the sequence (then writers_busy
	 * sees it). The extension's writers do; a row inserted by hand into the
	 * outbox might not. The poll, when nothing else woke the worker, looks
	 * behind the cursor, so nothing waits longer than poll_interval.
	 */
	if (poll)
	{
		if (nfly == 0)
			st->rescan = true;
		else
			st->holes = true;
	}
	if (st->rescan)
	{
		/* records behind the cursor: wait until nothing is in flight, then look */
		if (nfly > 0)
			return true;
		st->cursor = 0;
		st->holes = false;
		st->rescan = false;
		st->full_pass = true;
	}
	while (free_slots > 0 && !st->rescan)
	{
		bool		more;
		bool		failed;
		CsRequest  *req = claim_for(dest, kind, st, &more, &failed);

		if (failed)
			return false;
		if (req != NULL)
		{
			/* committed: only now does anything leave */
			cs_request_start(req);
			/* on the wire while the next batch is claimed */
			cs_http_kick();
			free_slots--;
			*claimed_any = true;
		}
		else if (more && ++empty_walks >= MAX_EMPTY_WALKS)
		{
			/* whole batches blocked: go on after a look at the sockets */
			*come_back = true;
			break;
		}
		if (!more)
			break;
	}
	/* a rescan is due and nothing is in flight: start it now */
	if (st->rescan && cs_requests_in_flight_for(dest->name) == 0)
		*come_back = true;
	return true;
}

/* When the next retry is due (seconds from now), or -1; a retry may wait behind a cursor. */
static double
next_retry_due(void)
{
	volatile double next_due = -1;
	ListCell   *lc;

	PG_TRY();
	{
		cs_delivery_start_transaction("cohortsync: looking for retries");
		next_due = cs_outbox_next_due();
		cs_delivery_finish_transaction();
	}
	PG_CATCH();
	{
		ErrorData  *edata = cs_delivery_recover_from_error();

		cs_delivery_log_error("claiming records", edata);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cs_loop_cxt);
	if (next_due >= 0)
		foreach(lc, dest_states)
			((CsDestState *) lfirst(lc))->holes = true;
	return next_due;
}

/*
 * Claim batches for every active destination with free slots and start each
 * request as soon as its claim has committed. poll: nothing woke the worker,
 * the poll interval (or a retry's time) has come. Returns how long (ms) the loop
 * may sleep before it should claim again if nothing wakes it.
 */
long
cs_schedule_claim_and_send(bool poll)
{
	List	   *dests;
	bool		installed;
	bool		outdated;
	double		next_due = -1;
	ListCell   *lc;
	long		sleep_ms;
	bool		claimed_any = false;
	bool		come_back = false;
	long		backoff_wait_ms = LONG_MAX;
	int			nheld = 0;

	/* a standby sends nothing (the worker only starts after recovery anyway) */
	if (RecoveryInProgress())
		return cs_poll_interval_ms;

	apply_backoff_resets();

	/* every known destination is at its limit: nothing to do until one finishes */
	if (known_slots > 0 && list_length(cs_requests) >= known_slots)
		return cs_poll_interval_ms;

	if (!read_destinations(&dests, &installed, &outdated))
		return cs_poll_interval_ms;
	if (!installed)
	{
		extension_missing();
		return cs_poll_interval_ms;
	}
	if (outdated)
		return cs_poll_interval_ms;
	extension_missing_logged = false;

	known_slots = 0;
	foreach(lc, dests)
		known_slots += ((CsDestination *) lfirst(lc))->max_inflight;
	foreach(lc, dest_states)
		((CsDestState *) lfirst(lc))->active = false;

	foreach(lc, dests)
	{
		CsDestination *dest = (CsDestination *) lfirst(lc);
		CsDestState *st = dest_state(dest->name);
		bool		held = false;

		st->active = true;
		if (!fill_slots(dest, st, poll, &claimed_any, &come_back, &held, &backoff_wait_ms))
			return cs_poll_interval_ms;
		if (held)
			nheld++;
	}

	/*
	 * A destination paused or gone: start from the beginning when it is back,
	 * at full speed (a resume follows a human's fix).
	 */
	foreach(lc, dest_states)
	{
		CsDestState *st = (CsDestState *) lfirst(lc);

		if (!st->active)
		{
			st->rescan = true;
			st->consecutive_failures = 0;
			st->backoff_until = 0;
		}
	}
	cs_schedule_publish();

	if (!claimed_any && !come_back)
		next_due = next_retry_due();

	if (come_back)
		return 0;
	sleep_ms = cs_poll_interval_ms;

	/*
	 * The records of a destination that backs off come due for their retries
	 * but must wait for its schedule: waking for them would spin. When every
	 * destination backs off, only the schedule counts; when some do, the retry
	 * may be theirs, so waking for it is limited to once a second.
	 */
	if (next_due >= 0 && nheld < list_length(dests))
		sleep_ms = Min(sleep_ms, nheld > 0 ? Max((long) (next_due * 1000.0) + 1, BACKOFF_FIRST_MS) :
					   (long) (next_due * 1000.0) + 1);
	return Min(sleep_ms, backoff_wait_ms);
}
