/*-------------------------------------------------------------------------
 *
 * http_listener.h
 *	  The webhook HTTP listener's entry points: its init function, called
 *	  from _PG_init, and its background workers' main functions: the acceptor
 *	  (all of HTTP) and the database workers (each request's transactions).
 *
 * What the listener's own files share is in http_common.h.
 *
 *-------------------------------------------------------------------------
 */
#ifndef COHORTSYNC_HTTP_LISTENER_H
#define COHORTSYNC_HTTP_LISTENER_H

#include "fmgr.h"

extern void cs_http_listener_init(void);
extern PGDLLEXPORT void cs_http_acceptor_main(Datum main_arg);
extern PGDLLEXPORT void cs_http_worker_main(Datum main_arg);

#endif							/* COHORTSYNC_HTTP_LISTENER_H */
