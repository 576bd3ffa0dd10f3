/*-------------------------------------------------------------------------
 *
 * clevertap_http.h
 *	  Uploads to CleverTap over libcurl's multi interface, driven by the
 *	  delivery worker's wait loop.
 *
 *-------------------------------------------------------------------------
 */
#ifndef COHORTSYNC_CLEVERTAP_HTTP_H
#define COHORTSYNC_CLEVERTAP_HTTP_H

#include "lib/stringinfo.h"
#include "storage/latch.h"

/* One upload in flight. Owned by the caller; the fields below are filled in. */
typedef struct CsHttpCall
{
	void	   *owner;			/* the caller's request, handed back on completion */
	void	   *easy;			/* CURL *, NULL when not in flight */
	void	   *headers;		/* struct curl_slist * */
	StringInfoData response;	/* the answer's body, capped */
	char		errbuf[256];	/* curl's message when there was no answer */
	long		http_status;	/* 0: no answer */
	bool		finished;
} CsHttpCall;

/* Once per process: curl_global_init and the multi handle. */
extern void cs_http_init(void);

/*
 * Start POSTing body to <base_url>/1/upload. body must stay allocated until
 * the call finishes. The passcode goes into a header and nowhere else.
 */
extern void cs_http_start(CsHttpCall *call, const char *base_url, const char *account_id,
						  const char *passcode, const StringInfo body);

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

#endif							/* COHORTSYNC_CLEVERTAP_HTTP_H */
