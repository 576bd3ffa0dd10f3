/*-------------------------------------------------------------------------
 *
 * http_request.c
 *	  libmicrohttpd's callbacks: route each request, enforce the body limit
 *	  and authentication, answer, and write the access log.
 *
 * libmicrohttpd calls the access handler several times per request: once
 * when the headers are in (we may answer right away: 404, 405, 401, 413),
 * then once per chunk of body, then once with no more data (we answer).
 * Each request's state lives in a memory context of its own, deleted when
 * libmicrohttpd reports the request completed, whatever the outcome.
 *
 * These callbacks run in the acceptor, which does no database work. Once a
 * request is in, its database work (authentication, the page, the health
 * check) goes to a database worker as a job (http_pool.c) and the connection
 * is suspended; when the answer is back, the connection is resumed,
 * libmicrohttpd calls us again, and we answer.
 *
 * No PostgreSQL error may unwind through libmicrohttpd's frames, so each
 * callback catches everything.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <netdb.h>
#include <sys/socket.h>

#include "access/xact.h"
#include "lib/stringinfo.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "http_common.h"
#include "http_pool.h"

/* Longest method and path kept for the access log. */
#define CS_LOG_METHOD_BYTES 16
#define CS_LOG_PATH_BYTES 128

typedef enum CsRoute
{
	CS_ROUTE_NONE,
	CS_ROUTE_MIXPANEL,			/* POST /mixpanel */
	CS_ROUTE_HEALTHZ			/* GET /healthz */
} CsRoute;

typedef struct CsRequest
{
	MemoryContext cxt;			/* holds this struct and everything below */
	TimestampTz started;
	CsRoute		route;
	char	   *method;			/* printable copies, for the access log */
	char	   *path;
	char		client[NI_MAXHOST];
	size_t		max_body;		/* cohortsync.http_max_body when it started */
	StringInfoData body;
	size_t		received;		/* body bytes seen, kept or not */
	bool		too_large;
	bool		answered;
	bool		authenticate;	/* cohortsync.http_require_auth when it started */
	char	   *username;		/* Basic credentials, if any */
	char	   *password;
	struct MHD_Connection *connection;
	CsHttpJob  *job;			/* while a worker has the request */
	bool		job_done;		/* result holds the worker's answer */
	CsHttpAnswer result;
} CsRequest;

/* A copy fit for a log line: clipped, and nothing but printable ASCII. */
static char *
printable(const char *s, size_t maxlen)
{
	size_t		len = strnlen(s, maxlen);
	char	   *copy = palloc(len + 1);

	for (size_t i = 0; i < len; i++)
		copy[i] = (s[i] >= 0x20 && s[i] < 0x7f && s[i] != '"') ? s[i] : '?';
	copy[len] = '\0';
	return copy;
}

static void
client_address(struct MHD_Connection *connection, char *buf, size_t buflen)
{
	const union MHD_ConnectionInfo *info;
	const struct sockaddr *sa;
	socklen_t	salen;

	strlcpy(buf, "?", buflen);
	info = MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
	if (info == NULL || info->client_addr == NULL)
		return;
	sa = info->client_addr;
	salen = sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
	if (getnameinfo(sa, salen, buf, buflen, NULL, 0, NI_NUMERICHOST) != 0)
		strlcpy(buf, "?", buflen);
}

/*
 * One line per answered request, at cohortsync.http_log_level. It names no
 * credentials and no member data: no headers, no body, no query string.
 */
static void
access_log(CsRequest *req, int status, size_t bytes_out, const char *note)
{
	long		secs;
	int			usecs;

	if (cs_http_log_level == CS_HTTP_LOG_OFF)
		return;
	TimestampDifference(req->started, GetCurrentTimestamp(), &secs, &usecs);
	ereport(cs_http_log_level,
			(errmsg_internal("cohortsync http: %s \"%s %s\" %d, %zu bytes in, %zu bytes out, %.1f ms%s%s",
							 req->client, req->method, req->path, status,
							 req->received, bytes_out,
							 secs * 1000.0 + usecs / 1000.0,
							 note ? ": " : "", note ? note : ""),
			 errhidestmt(true)));
}

static CsMhdResult
respond(CsRequest *req, struct MHD_Connection *connection, CsHttpAnswer *answer)
{
	struct MHD_Response *response;
	size_t		len = strlen(answer->body);
	CsMhdResult ret;

	response = MHD_create_response_from_buffer(len, answer->body, MHD_RESPMEM_MUST_COPY);
	if (response == NULL)
		return MHD_NO;
	MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE,
							"application/json; charset=utf-8");
	MHD_add_response_header(response, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
	if (answer->status == MHD_HTTP_UNAUTHORIZED)
		MHD_add_response_header(response, MHD_HTTP_HEADER_WWW_AUTHENTICATE,
								"Basic realm=\"cohortsync\", charset=\"UTF-8\"");
	if (answer->status == MHD_HTTP_METHOD_NOT_ALLOWED)
		MHD_add_response_header(response, MHD_HTTP_HEADER_ALLOW,
								req->route == CS_ROUTE_MIXPANEL ? "POST" : "GET, HEAD");

	ret = MHD_queue_response(connection, answer->status, response);
	MHD_destroy_response(response);

	req->answered = true;
	access_log(req, answer->status, len, answer->note);
	return ret;
}

/* Basic credentials, copied into the request's context; NULL if none. */
static char *
basic_credentials(struct MHD_Connection *connection, char **password)
{
	char	   *mhd_password = NULL;
	char	   *mhd_username;
	char	   *username = NULL;

	*password = NULL;
	mhd_username = MHD_basic_auth_get_username_password(connection, &mhd_password);
	if (mhd_username != NULL && mhd_password != NULL)
	{
		username = pstrdup(mhd_username);
		*password = pstrdup(mhd_password);
	}
	if (mhd_password != NULL)
	{
		explicit_bzero(mhd_password, strlen(mhd_password));
		MHD_free(mhd_password);
	}
	if (mhd_username != NULL)
		MHD_free(mhd_username);
	return username;
}

/* The headers are in: route, and refuse early what we can. */
static CsMhdResult
headers_received(CsRequest *req, struct MHD_Connection *connection,
				 const char *url, const char *method)
{
	CsHttpAnswer answer;
	bool		method_ok;

	if (strcmp(url, "/mixpanel") == 0)
	{
		req->route = CS_ROUTE_MIXPANEL;
		method_ok = strcmp(method, MHD_HTTP_METHOD_POST) == 0;
	}
	else if (strcmp(url, "/healthz") == 0)
	{
		req->route = CS_ROUTE_HEALTHZ;
		method_ok = strcmp(method, MHD_HTTP_METHOD_GET) == 0 ||
			strcmp(method, MHD_HTTP_METHOD_HEAD) == 0;
	}
	else
	{
		cs_http_answer(&answer, MHD_HTTP_NOT_FOUND, NULL,
					   "not found: Mixpanel's webhook URL ends in /mixpanel", NULL);
		return respond(req, connection, &answer);
	}

	if (!method_ok)
	{
		cs_http_answer(&answer, MHD_HTTP_METHOD_NOT_ALLOWED, NULL,
					   req->route == CS_ROUTE_MIXPANEL ?
					   "method not allowed: use POST" : "method not allowed: use GET",
					   NULL);
		return respond(req, connection, &answer);
	}

	if (cs_http_shutdown_requested)
	{
		cs_http_answer(&answer, MHD_HTTP_SERVICE_UNAVAILABLE, NULL,
					   "the server is shutting down; retry later", "shutting down");
		return respond(req, connection, &answer);
	}

	if (req->route == CS_ROUTE_MIXPANEL)
	{
		const char *content_length;

		/* checked by the worker, with the page: it needs the database */
		req->authenticate = cs_http_require_auth;
		if (req->authenticate)
			req->username = basic_credentials(connection, &req->password);

		/* refuse a declared oversize body before reading any of it */
		content_length = MHD_lookup_connection_value(connection, MHD_HEADER_KIND,
													 MHD_HTTP_HEADER_CONTENT_LENGTH);
		if (content_length != NULL &&
			strtoull(content_length, NULL, 10) > (unsigned long long) req->max_body)
		{
			req->too_large = true;
			cs_http_answer(&answer, MHD_HTTP_CONTENT_TOO_LARGE, NULL,
						   psprintf("request body is larger than cohortsync.http_max_body (%zu bytes)",
									req->max_body),
						   "body too large");
			return respond(req, connection, &answer);
		}
	}

	return MHD_YES;				/* go on: read the body, if any */
}

/* A chunk of body: keep it, unless the limit is passed (chunked bodies). */
static void
body_received(CsRequest *req, const char *data, size_t size)
{
	req->received += size;
	if (req->too_large || req->answered)
		return;
	if (req->body.len + size > req->max_body)
	{
		req->too_large = true;
		pfree(req->body.data);
		initStringInfo(&req->body);
		return;
	}
	appendBinaryStringInfo(&req->body, data, size);
}

/* The whole request is in: answer it. */
static CsMhdResult
request_received(CsRequest *req, struct MHD_Connection *connection)
{
	CsHttpAnswer answer;

	if (req->answered)
		return MHD_YES;

	if (req->job_done)
		return respond(req, connection, &req->result);
	if (req->job != NULL)
		return MHD_YES;			/* cannot happen: suspended until done */

	if (req->too_large)
		cs_http_answer(&answer, MHD_HTTP_CONTENT_TOO_LARGE, NULL,
					   psprintf("request body is larger than cohortsync.http_max_body (%zu bytes)",
								req->max_body),
					   "body too large");
	else if (cs_http_shutdown_requested)
		cs_http_answer(&answer, MHD_HTTP_SERVICE_UNAVAILABLE, NULL,
					   "the server is shutting down; retry later", "shutting down");
	else if (cs_http_daemon_stopping)
		cs_http_answer(&answer, MHD_HTTP_SERVICE_UNAVAILABLE, NULL,
					   "the listener is restarting; retry later", "listener restarting");
	else
	{
		/* to a database worker; we are called again when it has answered */
		req->connection = connection;
		req->job = cs_http_pool_submit(req->route == CS_ROUTE_HEALTHZ ?
									   CS_HTTP_JOB_HEALTH : CS_HTTP_JOB_INGEST,
									   req->authenticate, req->username, req->password,
									   req->body.data, req->body.len, req);
		MHD_suspend_connection(connection);
		return MHD_YES;
	}

	return respond(req, connection, &answer);
}

/*
 * A worker answered req's job (job == NULL: it never will, answer 503). The
 * answer is kept; the connection is resumed and libmicrohttpd calls us again.
 * Called from the acceptor's loop (cs_http_pool_poll), never from inside
 * libmicrohttpd.
 */
void
cs_http_request_job_done(void *owner, CsHttpJob *job)
{
	CsRequest  *req = owner;
	MemoryContext oldcxt = MemoryContextSwitchTo(req->cxt);

	cs_http_job_result(job, &req->result);
	MemoryContextSwitchTo(oldcxt);
	req->job = NULL;
	req->job_done = true;
	MHD_resume_connection(req->connection);
}

CsMhdResult
cs_http_handle_request(void *cls, struct MHD_Connection *connection,
					   const char *url, const char *method,
					   const char *version, const char *upload_data,
					   size_t *upload_data_size, void **req_cls)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	CsRequest  *volatile req = *req_cls;
	volatile CsMhdResult result = MHD_NO;

	PG_TRY();
	{
		if (req == NULL)
		{
			MemoryContext cxt = AllocSetContextCreate(TopMemoryContext,
													  "cohortsync http request",
													  ALLOCSET_DEFAULT_SIZES);

			MemoryContextSwitchTo(cxt);
			req = palloc0(sizeof(CsRequest));
			req->cxt = cxt;
			req->started = GetCurrentTimestamp();
			req->method = printable(method, CS_LOG_METHOD_BYTES);
			req->path = printable(url, CS_LOG_PATH_BYTES);
			client_address(connection, req->client, sizeof(req->client));
			req->max_body = cs_http_max_body;
			initStringInfo(&req->body);
			*req_cls = req;

			result = headers_received(req, connection, url, method);
		}
		else
		{
			MemoryContextSwitchTo(req->cxt);
			if (*upload_data_size > 0)
			{
				body_received(req, upload_data, *upload_data_size);
				*upload_data_size = 0;
				result = MHD_YES;
			}
			else
				result = request_received(req, connection);
		}
	}
	PG_CATCH();
	{
		/*
		 * Only something like running out of memory gets here: the database
		 * work catches its own errors. Log it and drop the connection.
		 */
		MemoryContextSwitchTo(oldcxt);
		EmitErrorReport();
		FlushErrorState();
		AbortOutOfAnyTransaction();
		result = MHD_NO;
	}
	PG_END_TRY();

	MemoryContextSwitchTo(oldcxt);
	return result;
}

void
cs_http_request_completed(void *cls, struct MHD_Connection *connection,
						  void **req_cls, enum MHD_RequestTerminationCode toe)
{
	CsRequest  *req = *req_cls;

	if (req == NULL)
		return;
	if (req->job != NULL)
		cs_http_pool_cancel(req->job);
	if (req->password != NULL)
		explicit_bzero(req->password, strlen(req->password));
	if (!req->answered)
		access_log(req, 0, 0, "connection closed before an answer");
	MemoryContextDelete(req->cxt);
	*req_cls = NULL;
}
