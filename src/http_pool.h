/*-------------------------------------------------------------------------
 *
 * http_pool.h
 *	  How the webhook listener's acceptor hands requests to its database
 *	  workers, and how they hand the answers back.
 *
 * The acceptor (http_listener.c) does all of HTTP and no database work; the
 * workers (http_worker.c) do the database work of one request at a time.
 * A request travels as a job: a dynamic shared memory segment holding the
 * credentials and the body, with room for the answer. Each worker has a
 * slot in shared memory through which it receives one job at a time.
 *
 *-------------------------------------------------------------------------
 */
#ifndef COHORTSYNC_HTTP_POOL_H
#define COHORTSYNC_HTTP_POOL_H

#include "http_common.h"

/* Most database workers cohortsync.http_workers may ask for. */
#define CS_HTTP_MAX_WORKERS 64

typedef enum CsHttpJobKind
{
	CS_HTTP_JOB_HEALTH,			/* GET /healthz */
	CS_HTTP_JOB_INGEST			/* POST /mixpanel: authenticate, then ingest */
} CsHttpJobKind;

/* The acceptor's handle on a job; opaque outside http_pool.c. */
typedef struct CsHttpJob CsHttpJob;

/* _PG_init, while preloading: the slots in shared memory */
extern void cs_http_pool_init(void);

/* --- in the acceptor ---------------------------------------------------- */

extern void cs_http_pool_acceptor_start(void);
extern int	cs_http_pool_workers(void);
extern CsHttpJob *cs_http_pool_submit(CsHttpJobKind kind, bool authenticate,
									  const char *username, const char *password,
									  const char *body, size_t len, void *owner);
extern void cs_http_pool_poll(void);
extern void cs_http_pool_cancel(CsHttpJob *job);
extern void cs_http_pool_fail_all(void);
extern void cs_http_job_result(CsHttpJob *job, CsHttpAnswer *answer);

/* http_request.c: a job of owner's is finished (or failed); take its result */
extern void cs_http_request_job_done(void *owner, CsHttpJob *job);

/* --- in a database worker ---------------------------------------------- */

extern void cs_http_pool_worker_ready(int index);
extern bool cs_http_pool_worker_serve(int index);

#endif							/* COHORTSYNC_HTTP_POOL_H */
