/*-------------------------------------------------------------------------
 *
 * delivery_worker.h
 *	  What the files of the delivery worker share: its requests, its memory
 *	  contexts, its settings and its transactions.
 *
 *	  delivery_worker.c		registration, GUCs, the main loop, transactions
 *	  delivery_shmem.c		shared memory: waking the worker, what it publishes
 *	  delivery_schedule.c	which records go next: claims, cursors, backoff
 *	  delivery_request.c	one claim on the wire, whole or in pieces
 *	  delivery_outcome.c	recording what a destination answered
 *
 *-------------------------------------------------------------------------
 */
#ifndef COHORTSYNC_DELIVERY_WORKER_H
#define COHORTSYNC_DELIVERY_WORKER_H

#include "datatype/timestamp.h"
#include "nodes/pg_list.h"
#include "utils/elog.h"
#include "utils/palloc.h"

#include "destination_kind.h"
#include "http_client.h"
#include "outbox.h"

/*
 * One claim of records for one destination, sent as one request, or, after a
 * split, as consecutive pieces: ranges [lo, hi) of the claim, one at a time,
 * so that the records of an identity still go out in order.
 */
typedef struct CsRequest
{
	MemoryContext cxt;
	char	   *destination;
	const CsDestinationKind *kind;
	char	   *url;
	char	   *account_id;
	char	   *secret;
	CsClaim		claim;
	int			lo;				/* the piece in flight */
	int			hi;
	int			npending;		/* pieces still to send, a stack: top is next */
	int		   *pending_lo;
	int		   *pending_hi;
	StringInfoData body;
	CsHttpCall	call;
	TimestampTz started;		/* when the piece in flight was sent */
} CsRequest;

/* delivery_worker.c */
extern int	cs_batch_size;
extern int	cs_max_inflight;
extern int	cs_max_retry_age_s;
extern int	cs_poll_interval_ms;
extern MemoryContext cs_worker_cxt;		/* the worker's long-lived data */
extern MemoryContext cs_loop_cxt;	/* reset on every turn of the loop */

extern void cs_delivery_start_transaction(const char *activity);
extern void cs_delivery_finish_transaction(void);
extern ErrorData *cs_delivery_recover_from_error(void);
extern void cs_delivery_log_error(const char *doing, ErrorData *edata);
extern int	cs_delivery_lease_ms(void);

/* delivery_request.c */
extern List *cs_requests;		/* CsRequest *, in flight */
extern CsRequest *cs_request_new(CsDestination *dest, const CsDestinationKind *kind);
extern void cs_request_start(CsRequest *req);
extern void cs_request_send_piece(CsRequest *req, int lo, int hi);
extern void cs_request_free(CsRequest *req);
extern int	cs_requests_in_flight_for(const char *destination);
extern int64 cs_request_records(CsRequest *req);

/* delivery_schedule.c */
extern long cs_schedule_claim_and_send(bool poll);
extern void cs_schedule_note_holes(const char *destination);
extern void cs_schedule_note_outcome(const char *destination, CsOutcome outcome,
									 TimestampTz started, long retry_after_s);
extern void cs_schedule_publish(void);

/* delivery_outcome.c */
extern void cs_outcome_settle(CsRequest *req);

/* delivery_shmem.c: what destination_status shows of the worker, per destination */
#define CS_PUBLISHED_NAMELEN 128

typedef struct CsPublished
{
	char		destination[CS_PUBLISHED_NAMELEN];
	int64		records;		/* in flight */
	int			consecutive_failures;	/* requests failed as a whole, in a row */
	TimestampTz backoff_until;	/* 0 when not backing off */
} CsPublished;

#define CS_PUBLISHED_MAX 64

/* Destinations whose backoff ends (replay_failed), all of them when "all". */
typedef struct CsBackoffResets
{
	bool		all;
	int			n;
	char		names[CS_PUBLISHED_MAX][CS_PUBLISHED_NAMELEN];
} CsBackoffResets;

extern void cs_delivery_shmem_init(void);
extern void cs_delivery_publish_worker(void);
extern void cs_delivery_publish(const CsPublished *pub, int n);
extern void cs_delivery_post_resets(List *names, bool all);
extern bool cs_delivery_take_resets(CsBackoffResets *resets);

#endif							/* COHORTSYNC_DELIVERY_WORKER_H */
