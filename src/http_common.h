/*-------------------------------------------------------------------------
 *
 * http_common.h
 *	  What the webhook HTTP listener's files share: a background worker
 *	  driving libmicrohttpd from its own wait loop.
 *
 * Two kinds of process share the work. The acceptor does all of HTTP and
 * no database work; cohortsync.http_workers database workers run the
 * requests' transactions, one request at a time each:
 *	  http_listener.c	  settings, the acceptor, the daemon and its wait loop
 *	  http_request.c	  libmicrohttpd's callbacks: routing, limits, answers
 *	  http_pool.c		  requests handed to the workers as jobs, and back
 *	  http_worker.c		  the database workers
 *	  http_transaction.c  each request's database work, in its own transaction
 *
 * Every process runs in one thread: libmicrohttpd calls the acceptor back
 * only from MHD_run(), which its wait loop calls.
 *
 *-------------------------------------------------------------------------
 */
#ifndef COHORTSYNC_HTTP_COMMON_H
#define COHORTSYNC_HTTP_COMMON_H

#include <signal.h>
/* libmicrohttpd wants these before its header on some platforms */
#include <stdarg.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <microhttpd.h>

/* libmicrohttpd 0.9.71 turned its callbacks' int results into an enum */
#if MHD_VERSION >= 0x00097002
typedef enum MHD_Result CsMhdResult;
#else
typedef int CsMhdResult;
#endif

/* The database workers' backend_type; each one's name adds its number. */
#define CS_HTTP_WORKER_NAME "cohortsync http listener"
#define CS_HTTP_ACCEPTOR_NAME "cohortsync http acceptor"

/* Settings (see cs_http_listener_init for their meaning). */
extern char *cs_http_listen;
extern int	cs_http_max_body;
extern char *cs_http_ssl_cert_file;
extern char *cs_http_ssl_key_file;
extern int	cs_http_log_level;
extern bool cs_http_require_auth;
extern int	cs_http_workers;

/* cs_http_log_level's value for "no access log" */
#define CS_HTTP_LOG_OFF (-1)

/* Set by SIGTERM: from then on every request is answered 503. */
extern volatile sig_atomic_t cs_http_shutdown_requested;

/*
 * True while the acceptor stops its daemon (a reload, no worker left):
 * requests that complete meanwhile are answered 503 at once rather than
 * handed to a worker, since libmicrohttpd cannot stop with a connection
 * suspended.
 */
extern bool cs_http_daemon_stopping;

/* True while a request's transaction runs; SIGTERM then cancels it. */
extern volatile sig_atomic_t cs_http_in_transaction;

/* SIGTERM handler of the acceptor and of the database workers */
extern void cs_http_handle_sigterm(SIGNAL_ARGS);

/* http_request.c: libmicrohttpd callbacks */
extern CsMhdResult cs_http_handle_request(void *cls, struct MHD_Connection *connection,
										  const char *url, const char *method,
										  const char *version, const char *upload_data,
										  size_t *upload_data_size, void **req_cls);
extern void cs_http_request_completed(void *cls, struct MHD_Connection *connection,
									  void **req_cls,
									  enum MHD_RequestTerminationCode toe);

/* http_transaction.c: what a request's database work answers */
typedef struct CsHttpAnswer
{
	int			status;			/* HTTP status code */
	char	   *body;			/* JSON: {action, status, error{message, code}} */
	const char *note;			/* for the access log; never member data */
} CsHttpAnswer;

extern void cs_http_answer(CsHttpAnswer *answer, int status, const char *action,
						   const char *message, const char *note);
extern void cs_http_authenticate(const char *username, const char *password,
								 CsHttpAnswer *answer);
extern void cs_http_ingest(const char *body, size_t len, CsHttpAnswer *answer);
extern void cs_http_health(CsHttpAnswer *answer);

#endif							/* COHORTSYNC_HTTP_COMMON_H */
