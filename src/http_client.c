/*-------------------------------------------------------------------------
 *
 * http_client.c
 *	  HTTP requests over libcurl's multi interface, driven by the caller's
 *	  wait loop. Knows no destination: the kind (destination_kind.h) says
 *	  where a request goes and what it carries.
 *
 * One multi handle lives as long as the process, so connections (and TLS
 * sessions) are reused from one request to the next. libcurl tells us which
 * sockets it wants watched (CURLMOPT_SOCKETFUNCTION) and when it wants to be
 * called back (CURLMOPT_TIMERFUNCTION); cs_http_wait() turns that into one
 * WaitEventSet together with the process latch and postmaster death, so a
 * commit's wake-up, SIGTERM and SIGHUP are noticed while requests are in
 * flight, without any thread and without blocking in curl.
 *
 * libcurl never runs our code except from within curl_multi_socket_action(),
 * and the callbacks below never raise an ERROR: a longjmp through libcurl
 * would leave it in an undefined state.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>
#include <limits.h>
#include <time.h>

#include "miscadmin.h"
#include "portability/instr_time.h"
#include "storage/latch.h"
#include "utils/memutils.h"

#include "http_client.h"
#include "pg_compat.h"

int			cs_connect_timeout_ms = 10000;
int			cs_request_timeout_ms = 60000;
char	   *cs_ca_file = NULL;

/* A destination's answer is a few KB; anything beyond this is not worth keeping. */
#define MAX_RESPONSE_BYTES (2 * 1024 * 1024)
/* Sockets libcurl may want watched at once: 15 requests per destination, many destinations. */
#define MAX_SOCKETS 256

typedef struct WatchedSocket
{
	curl_socket_t fd;
	int			what;			/* CURL_POLL_IN / OUT / INOUT */
} WatchedSocket;

static CURLM *multi = NULL;
static WatchedSocket sockets[MAX_SOCKETS];
static int	nsockets = 0;
static bool sockets_overflowed = false;
static int64 timer_deadline_ms = -1;	/* when curl wants CURL_SOCKET_TIMEOUT; -1 none */
static int	in_flight = 0;
static bool finished_in_kick = false;	/* a transfer ended inside cs_http_kick */

static int64
now_ms(void)
{
	instr_time	t;

	INSTR_TIME_SET_CURRENT(t);
	return (int64) INSTR_TIME_GET_MILLISEC(t);
}

/* libcurl: start, change or stop watching a socket. */
static int
socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
	int			i;

	for (i = 0; i < nsockets; i++)
		if (sockets[i].fd == fd)
			break;

	if (what == CURL_POLL_REMOVE)
	{
		if (i < nsockets)
			sockets[i] = sockets[--nsockets];
		return 0;
	}
	if (i == nsockets)
	{
		if (nsockets == MAX_SOCKETS)
		{
			/* not watched: curl's timer still drives it, only less promptly */
			sockets_overflowed = true;
			return 0;
		}
		nsockets++;
		sockets[i].fd = fd;
	}
	sockets[i].what = what;
	return 0;
}

/* libcurl: call me back with CURL_SOCKET_TIMEOUT after timeout_ms (-1: never). */
static int
timer_cb(CURLM *m, long timeout_ms, void *userp)
{
	timer_deadline_ms = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
	return 0;
}

/* libcurl: a piece of the answer. Never raises: a short count aborts the transfer. */
static size_t
write_cb(char *data, size_t size, size_t nmemb, void *userp)
{
	CsHttpCall *call = (CsHttpCall *) userp;
	size_t		n = size * nmemb;

	if (call->response.len + n > MAX_RESPONSE_BYTES)
		return 0;
	/* the buffer was sized for the cap in cs_http_start, so this never reallocates */
	memcpy(call->response.data + call->response.len, data, n);
	call->response.len += n;
	call->response.data[call->response.len] = '\0';
	return n;
}

/*
 * The seconds of a Retry-After value: delay-seconds or an HTTP-date (RFC 9110
 * 10.2.3); -1 when it is neither. Never raises: called from within libcurl.
 */
static long
parse_retry_after(const char *v, size_t len)
{
	char		buf[64];
	char	   *end;
	long		secs;
	time_t		when;

	while (len > 0 && (v[len - 1] == '\r' || v[len - 1] == '\n' || v[len - 1] == ' '))
		len--;
	while (len > 0 && (*v == ' ' || *v == '\t'))
		v++, len--;
	if (len == 0 || len >= sizeof(buf))
		return -1;
	memcpy(buf, v, len);
	buf[len] = '\0';
	if (buf[0] >= '0' && buf[0] <= '9')
	{
		errno = 0;
		secs = strtol(buf, &end, 10);
		if (*end != '\0' || errno != 0)
			return -1;
		return Min(secs, (long) INT_MAX);
	}
	when = curl_getdate(buf, NULL);
	if (when == (time_t) -1)
		return -1;
	return when > time(NULL) ? Min((long) (when - time(NULL)), (long) INT_MAX) : 0;
}

/* libcurl: one header line of the answer. Only Retry-After is kept. */
static size_t
header_cb(char *data, size_t size, size_t nmemb, void *userp)
{
	CsHttpCall *call = (CsHttpCall *) userp;
	size_t		n = size * nmemb;
	static const char name[] = "retry-after:";

	/* a new status line (after a 100 Continue, say): forget the previous answer's */
	if (n >= 5 && strncmp(data, "HTTP/", 5) == 0)
		call->retry_after = -1;
	else if (n > sizeof(name) - 1 && pg_strncasecmp(data, name, sizeof(name) - 1) == 0)
		call->retry_after = parse_retry_after(data + sizeof(name) - 1, n - (sizeof(name) - 1));
	return n;
}

void
cs_http_init(void)
{
	CURLcode	rc;

	/* a backend may make requests more than once (cohortsync.test_destination) */
	if (multi != NULL)
		return;
	rc = curl_global_init(CURL_GLOBAL_DEFAULT);
	if (rc != CURLE_OK)
		elog(ERROR, "cohortsync: could not initialise libcurl: %s", curl_easy_strerror(rc));
	multi = curl_multi_init();
	if (multi == NULL)
		elog(ERROR, "cohortsync: could not create a libcurl multi handle");
	curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
	curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, timer_cb);
}

void
cs_http_add_header(CsHttpCall *call, const char *name, const char *value)
{
	/* built in a local buffer and wiped: some of these carry a secret */
	size_t		len = strlen(name) + strlen(value) + 3;
	char	   *line = palloc(len);
	struct curl_slist *l;

	/* "Name:" with nothing after the colon removes a header libcurl would add */
	snprintf(line, len, value[0] ? "%s: %s" : "%s:", name, value);
	l = curl_slist_append((struct curl_slist *) call->headers, line);
	explicit_bzero(line, len);
	pfree(line);
	if (l == NULL)
		elog(ERROR, "cohortsync: out of memory building request headers");
	call->headers = l;
}

void
cs_http_forget_headers(CsHttpCall *call)
{
	/* libcurl's copies of the header lines, secrets among them, go here */
	curl_slist_free_all((struct curl_slist *) call->headers);
	call->headers = NULL;
}

void
cs_http_start(CsHttpCall *call, const char *method, const char *url, const StringInfo body)
{
	CURL	   *easy;
	CURLMcode	mrc;

	Assert(multi != NULL);
	call->http_status = 0;
	call->finished = false;
	call->errbuf[0] = '\0';
	call->retry_after = -1;
	/* allocated once at the cap, so write_cb never allocates inside libcurl */
	initStringInfo(&call->response);
	enlargeStringInfo(&call->response, MAX_RESPONSE_BYTES + 1);

	easy = curl_easy_init();
	if (easy == NULL)
	{
		cs_http_forget_headers(call);
		elog(ERROR, "cohortsync: could not create a libcurl handle");
	}

	/* no "Expect: 100-continue" round trip for large bodies */
	cs_http_add_header(call, "Expect", "");

	curl_easy_setopt(easy, CURLOPT_URL, url);	/* libcurl copies it */
#if LIBCURL_VERSION_NUM >= 0x075500
	curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
#else
	curl_easy_setopt(easy, CURLOPT_PROTOCOLS, (long) (CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
	/*
	 * Never CURLOPT_VERBOSE nor a CURLOPT_DEBUGFUNCTION: libcurl would write the
	 * request headers, the destination's secret included, to stderr, which is
	 * the server log (scripts/test scans every log for secrets).
	 */
	curl_easy_setopt(easy, CURLOPT_HTTPHEADER, call->headers);
	if (body != NULL)
	{
		curl_easy_setopt(easy, CURLOPT_POST, 1L);
		curl_easy_setopt(easy, CURLOPT_POSTFIELDS, body->data);
		curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) body->len);
	}
	if (strcmp(method, body != NULL ? "POST" : "GET") != 0)
		curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, method);
	curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, write_cb);
	curl_easy_setopt(easy, CURLOPT_WRITEDATA, call);
	curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, header_cb);
	curl_easy_setopt(easy, CURLOPT_HEADERDATA, call);
	curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, call->errbuf);
	curl_easy_setopt(easy, CURLOPT_PRIVATE, call);
	/* signals belong to PostgreSQL; curl must not install handlers or use alarm() */
	curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, (long) cs_connect_timeout_ms);
	curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, (long) cs_request_timeout_ms);
	curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, 2L);
	if (cs_ca_file != NULL && cs_ca_file[0] != '\0')
		curl_easy_setopt(easy, CURLOPT_CAINFO, cs_ca_file);
	curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(easy, CURLOPT_USERAGENT, "cohortsync/" CS_VERSION);

	mrc = curl_multi_add_handle(multi, easy);
	if (mrc != CURLM_OK)
	{
		curl_easy_cleanup(easy);
		cs_http_forget_headers(call);
		elog(ERROR, "cohortsync: could not start a request: %s", curl_multi_strerror(mrc));
	}
	call->easy = easy;
	in_flight++;
}

static void
release(CsHttpCall *call)
{
	if (call->easy == NULL)
		return;
	curl_multi_remove_handle(multi, (CURL *) call->easy);
	curl_easy_cleanup((CURL *) call->easy);
	cs_http_forget_headers(call);
	call->easy = NULL;
	in_flight--;
}

void
cs_http_abandon(CsHttpCall *call)
{
	release(call);
}

void
cs_http_kick(void)
{
	int			running;

	/*
	 * A request just added has a timeout of zero: let curl start it (write it
	 * to a kept-alive connection, or connect) now rather than after the next
	 * claim, so that claiming and the round trip overlap.
	 */
	if (timer_deadline_ms >= 0 && now_ms() >= timer_deadline_ms)
	{
		timer_deadline_ms = -1;
		curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running);

		/*
		 * A fast server may have answered already (this or an earlier request):
		 * then no socket will say so any more, and the next wait must not
		 * sleep before the caller has collected it.
		 */
		if (running < in_flight)
			finished_in_kick = true;
	}
}

int
cs_http_in_flight(void)
{
	return in_flight;
}

bool
cs_http_wait(long timeout_ms, uint32 wait_event_info)
{
	WaitEventSet *set;
	WaitEvent	events[MAX_SOCKETS + 2];
	int			nevents;
	bool		latch_set = false;
	int			running;
	int64		now = now_ms();

	/* something finished inside cs_http_kick: collect it before sleeping */
	if (finished_in_kick)
	{
		finished_in_kick = false;
		timeout_ms = 0;
	}

	/* curl's own deadline comes first */
	if (timer_deadline_ms >= 0)
	{
		int64		until_timer = Max(timer_deadline_ms - now, 0);

		if (until_timer < timeout_ms)
			timeout_ms = (long) until_timer;
	}
	if (sockets_overflowed && timeout_ms > 10)
		timeout_ms = 10;

	/* rebuilt every time: at most a few dozen sockets, and curl changes them often */
	set = cs_CreateWaitEventSet(CurrentMemoryContext, CurrentResourceOwner, nsockets + 2);
	AddWaitEventToSet(set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	AddWaitEventToSet(set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	for (int i = 0; i < nsockets; i++)
	{
		uint32		ev = 0;

		if (sockets[i].what & CURL_POLL_IN)
			ev |= WL_SOCKET_READABLE;
		if (sockets[i].what & CURL_POLL_OUT)
			ev |= WL_SOCKET_WRITEABLE;
		if (ev != 0)
			AddWaitEventToSet(set, ev, sockets[i].fd, NULL, NULL);
	}
	nevents = WaitEventSetWait(set, timeout_ms, events, lengthof(events), wait_event_info);
	FreeWaitEventSet(set);

	for (int i = 0; i < nevents; i++)
	{
		if (events[i].events & WL_LATCH_SET)
		{
			ResetLatch(MyLatch);
			latch_set = true;
		}
		else if (events[i].events & (WL_SOCKET_READABLE | WL_SOCKET_WRITEABLE))
		{
			int			flags = 0;

			if (events[i].events & WL_SOCKET_READABLE)
				flags |= CURL_CSELECT_IN;
			if (events[i].events & WL_SOCKET_WRITEABLE)
				flags |= CURL_CSELECT_OUT;
			curl_multi_socket_action(multi, events[i].fd, flags, &running);
		}
	}

	if ((timer_deadline_ms >= 0 && now_ms() >= timer_deadline_ms) || sockets_overflowed)
	{
		sockets_overflowed = false;
		timer_deadline_ms = -1;
		curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running);
	}
	return latch_set;
}

CsHttpCall *
cs_http_next_finished(void)
{
	CURLMsg    *msg;
	int			left;

	while ((msg = curl_multi_info_read(multi, &left)) != NULL)
	{
		CsHttpCall *call = NULL;

		if (msg->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &call);
		if (call == NULL)
			continue;
		if (msg->data.result == CURLE_OK)
			curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &call->http_status);
		else
		{
			/* no usable answer: say why, in curl's words (never a header or body) */
			char		why[sizeof(call->errbuf)];

			snprintf(why, sizeof(why), "%s%s%s", curl_easy_strerror(msg->data.result),
					 call->errbuf[0] ? ": " : "", call->errbuf);
			strlcpy(call->errbuf, why, sizeof(call->errbuf));
			call->http_status = 0;
		}
		call->finished = true;
		release(call);
		return call;
	}
	return NULL;
}
