/*-------------------------------------------------------------------------
 *
 * outbox.h
 *	  The delivery worker's SQL: claim records, record outcomes.
 *
 *-------------------------------------------------------------------------
 */
#ifndef COHORTSYNC_OUTBOX_H
#define COHORTSYNC_OUTBOX_H

/* A destination the worker may send to now (state 'active'). */
typedef struct CsDestination
{
	char	   *name;
	char	   *kind;			/* destination_kind.h */
	char	   *base_url;		/* https://<host>, or api_url: no path, no trailing slash */
	char	   *account_id;		/* NULL for kinds that have none */
	char	   *secret;
	int			batch_size;		/* records per request, within the kind's limit */
	int			max_inflight;	/* requests in flight, within the kind's limit */
} CsDestination;

/* Records claimed for one request, in id order. */
typedef struct CsClaim
{
	int			nrecords;
	int64	   *ids;
	char	  **records;		/* each record's JSON text */
} CsClaim;

/* What cohortsync._record_outcome says the worker does next. */
typedef enum CsOutcome
{
	CS_OUTCOME_DONE,			/* settled; send the rest of the claim, if any */
	CS_OUTCOME_REQUEUED,		/* settled, some records wait behind the cursor */
	CS_OUTCOME_SPLIT,			/* a refusal naming no record: send them in halves */
	CS_OUTCOME_RETRY			/* the request failed as a whole, or paused: all wait */
} CsOutcome;

/*
 * All of these run inside the caller's transaction, with SPI connected and a
 * snapshot pushed, and raise ERROR on trouble (e.g. the extension was dropped).
 */
extern bool cs_outbox_installed(void);
extern int64 cs_outbox_release_leases(void);
extern List *cs_outbox_destinations(MemoryContext cxt);
/*
 * What one walk of the queue (cs_outbox_claim_due) saw besides the records it
 * claimed: how far it went, whether it passed records that must wait, and
 * whether transactions were in progress (they may commit ids below the cursor).
 */
typedef struct CsWalk
{
	int			walked;			/* records looked at (claimed or not) */
	int64		last_id;		/* the highest id looked at; valid if walked > 0 */
	bool		blocked;		/* some record looked at could not be claimed */
	bool		writers_busy;	/* the snapshot had transactions in progress */
	bool		more;			/* the queue goes on after last_id */
} CsWalk;

extern bool cs_outbox_claim_due(const char *destination, int limit, int64 after,
								MemoryContext cxt, CsClaim *claim, CsWalk *walk);
extern double cs_outbox_next_due(void);
extern CsOutcome cs_outbox_record_outcome(const char *destination,
										  const int64 *ids, int nids,
										  long http_status, const char *body,
										  const char *error, long retry_after,
										  int retry_age_s, int lease_ms,
										  const int64 *rest, int nrest);

/*
 * In the delivery worker, between transactions: truncate the outbox when it is
 * drained and big (outbox_shrink.c). idle: nothing is in flight.
 */
extern void cs_outbox_shrink_tick(bool idle);

/* _PG_init: cohortsync.plan_outbox_full and its planner hook (outbox_plan.c) */
extern void cs_outbox_plan_init(void);

#endif							/* COHORTSYNC_OUTBOX_H */
