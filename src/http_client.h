/*-------------------------------------------------------------------------
 *
 * http_client.h
 *	  HTTP requests over libcurl's multi interface, driven by the caller's
 *	  wait loop. Knows no destination.
 *
 *-------------------------------------------------------------------------
 */
#ifndef COHORTSYNC_HTTP_CLIENT_H
#define COHORTSYNC_HTTP_CLIENT_H

#include "lib/stringinfo.h"
#include "storage/latch.h"

/* One request in flight. Owned by the caller; the fields below are filled in. */
typedef struct CsHttpCall
{
	void	   *owner;			/* the caller's request, handed back on completion */
	void	   *easy;			/* CURL *, NULL when not in flight */
	void	   *headers;		/* struct curl_slist *, built by cs_http_add_header */
	StringInfoData response;	/* the answer's body, capped */
	char		errbuf[256];	/* curl's message when there was no answer */
	long		http_status;	/* 0: no answer */
	long		retry_after;	/* the answer's Retry-After in seconds; -1: none */
	bool		finished;
} CsHttpCall;

/* Once per process: curl_global_init and the multi handle. */
extern void cs_http_init(void);

/*
 * Add a header line to the next request of call (before cs_http_start). The
 * value may be a secret: it is kept only in libcurl's copy, freed (and the
 * line built here wiped) when the call finishes.
 */
extern void cs_http_add_header(CsHttpCall *call, const char *name, const char *value);

/* Drop the header lines of a call that will not be started. */
extern void cs_http_forget_headers(CsHttpCall *call);

/*
 * Start a request: POST body to url, or, with body NULL, a request with no
 * body; method other than POST/GET is sent as given. body must stay allocated
 * until the call finishes.
 */
extern void cs_http_start(CsHttpCall *call, const char *method, const char *url,
						  const StringInfo body);

/* Forget a call in flight (shutdown); its outcome is never reported. */
extern void cs_http_abandon(CsHttpCall *call);

/*
 * Wait for the latch, postmaster death, curl's sockets or curl's timer, at
 * most timeout_ms; then let curl do its work. Returns true if the latch was set.
 */
extern bool cs_http_wait(long timeout_ms, uint32 wait_event_info);

/* Let curl start what is due now (requests just added), without waiting. */
extern void cs_http_kick(void);

/* The next finished call, or NULL. */
extern CsHttpCall *cs_http_next_finished(void);

/* Number of calls in flight. */
extern int	cs_http_in_flight(void);

/* GUCs used for every request (ms; CA file or "" for the system's). */
extern int	cs_connect_timeout_ms;
extern int	cs_request_timeout_ms;
extern char *cs_ca_file;

#endif							/* COHORTSYNC_HTTP_CLIENT_H */
