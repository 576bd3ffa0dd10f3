/*-------------------------------------------------------------------------
 *
 * http_transaction.c
 *	  The database work of each webhook request, each in its own transaction,
 *	  and the HTTP status its outcome maps to.
 *
 * The status is what Mixpanel acts on: it pauses the sync on 400 and 401
 * (showing our message), and retries 5xx a few times over a minute. So
 * trouble that goes away by itself (a lock or statement timeout, a
 * serialization failure, recovery, shutdown) must be 503, and a page the
 * sender got wrong must be 400 with nothing written. Anything else is 500,
 * with the detail in the server log and not in the response.
 *
 * Errors are caught here, never let through: they would otherwise unwind
 * through libmicrohttpd's frames, which called us.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timeout.h"

#include "guc_common.h"
#include "http_common.h"
#include "ingest.h"
#include "response.h"
#include "webhook_auth.h"

/* Longest action echoed back in an answer we make up ourselves. */
#define CS_MAX_ECHOED_ACTION 100

/* What the work inside one transaction knows when it fails. */
typedef struct CsTxState
{
	const char *activity;		/* shown in pg_stat_activity, e.g. "POST /mixpanel" */
	const char *action;			/* the body's action, once known */
	bool		parsing_body;	/* a data error now means "not JSON" */
	bool		commit;			/* false: roll back although nothing failed
								 * (a rejected page: belt and braces) */
} CsTxState;

typedef void (*CsTxWork) (CsTxState *state, void *arg, CsHttpAnswer *answer);

/* Warn once per change of state, not on every request. */
static bool warned_not_installed = false;
static bool warned_no_users = false;

/*
 * Fill *answer. message == NULL makes a success answer. The body has the
 * shape Mixpanel documents for every answer.
 */
void
cs_http_answer(CsHttpAnswer *answer, int status, const char *action,
			   const char *message, const char *note)
{
	answer->status = status;
	answer->body = cs_response_body(action, message, status);
	answer->note = note;
}

/* Is the error one that goes away by itself, so that Mixpanel should retry? */
static bool
is_transient(int sqlerrcode)
{
	switch (ERRCODE_TO_CATEGORY(sqlerrcode))
	{
		case ERRCODE_TRANSACTION_ROLLBACK:	/* serialization failure, deadlock */
		case ERRCODE_INSUFFICIENT_RESOURCES:	/* disk full, out of memory */
		case ERRCODE_OPERATOR_INTERVENTION: /* canceled (statement_timeout),
											 * shutdown, cannot connect now */
			return true;
		default:
			break;
	}
	return sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE ||	/* lock_timeout, NOWAIT */
		sqlerrcode == ERRCODE_OBJECT_IN_USE;
}

/* Turn an error caught in a request's transaction into the answer. */
static void
answer_error(CsTxState *state, ErrorData *edata, CsHttpAnswer *answer)
{
	char		sqlstate[6];

	memcpy(sqlstate, unpack_sql_state(edata->sqlerrcode), sizeof(sqlstate));

	if (state->parsing_body &&
		ERRCODE_TO_CATEGORY(edata->sqlerrcode) == ERRCODE_DATA_EXCEPTION)
	{
		/* the sender's own bytes: safe to tell them what is wrong */
		char	   *message = psprintf("request body is not JSON: %s%s%s",
									   edata->message,
									   edata->detail ? ": " : "",
									   edata->detail ? edata->detail : "");

		cs_http_answer(answer, MHD_HTTP_UNSUPPORTED_MEDIA_TYPE, NULL, message,
					   "body is not JSON");
		return;
	}

	if (state->parsing_body &&
		ERRCODE_TO_CATEGORY(edata->sqlerrcode) == ERRCODE_PROGRAM_LIMIT_EXCEEDED)
	{
		/*
		 * JSON we cannot take: nested deeper than max_stack_depth allows
		 * (about 10,000 levels of [ or {), or beyond jsonb's size limits.
		 * That is the sender's page, and sending it again will not help, so
		 * it is a 400 like any other bad page, not a 500 that Mixpanel would
		 * retry for ever. The message is PostgreSQL's ("stack depth limit
		 * exceeded"), without its hint, which is for the server's admin.
		 */
		char	   *message = psprintf("request body is JSON that cannot be read as a page (too deeply nested or too large): %s",
									   edata->message);

		cs_http_answer(answer, MHD_HTTP_BAD_REQUEST, NULL, message,
					   "body nested too deeply or too large");
		return;
	}

	if (cs_http_shutdown_requested)
		cs_http_answer(answer, MHD_HTTP_SERVICE_UNAVAILABLE, state->action,
					   "the server is shutting down; retry later", "shutting down");
	else if (RecoveryInProgress() &&
			 edata->sqlerrcode == ERRCODE_READ_ONLY_SQL_TRANSACTION)
		cs_http_answer(answer, MHD_HTTP_SERVICE_UNAVAILABLE, state->action,
					   "the database is in recovery and cannot accept writes; retry later",
					   "in recovery");
	else if (is_transient(edata->sqlerrcode))
		cs_http_answer(answer, MHD_HTTP_SERVICE_UNAVAILABLE, state->action,
					   psprintf("temporary database failure (SQLSTATE %s); retry later",
								sqlstate),
					   "temporary failure");
	else
		cs_http_answer(answer, MHD_HTTP_INTERNAL_SERVER_ERROR, state->action,
					   "internal error; the detail is in the PostgreSQL server log",
					   "internal error");

	/* The detail goes to the server log, never to the response. */
	ereport(LOG,
			(errcode(edata->sqlerrcode),
			 errmsg("cohortsync http: %s answered %d: %s",
					state->activity, answer->status, edata->message),
			 edata->detail ? errdetail_internal("%s", edata->detail) : 0,
			 edata->hint ? errhint("%s", edata->hint) : 0,
			 errhidestmt(true)));
}

/*
 * Run work in a transaction of its own, with SPI connected and a snapshot
 * set, as a backend runs a statement. Allocations meant to outlive the
 * transaction (the answer) are made in the caller's memory context.
 */
static void
run_in_transaction(CsTxState *state, CsTxWork work, void *arg, CsHttpAnswer *answer)
{
	MemoryContext callercxt = CurrentMemoryContext;

	PG_TRY();
	{
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		cs_http_in_transaction = true;

		/*
		 * statement_timeout is armed by the backend's own command loop, which
		 * a background worker does not run; arm it here so that it applies
		 * to each request as it would to a statement.
		 */
		if (StatementTimeout > 0)
			enable_timeout_after(STATEMENT_TIMEOUT, StatementTimeout);

		debug_query_string = state->activity;
		pgstat_report_activity(STATE_RUNNING, state->activity);
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "cohortsync: SPI_connect failed");
		PushActiveSnapshot(GetTransactionSnapshot());

		MemoryContextSwitchTo(callercxt);
		work(state, arg, answer);

		SPI_finish();
		PopActiveSnapshot();
		if (state->commit)
			CommitTransactionCommand();
		else
			AbortCurrentTransaction();
		disable_timeout(STATEMENT_TIMEOUT, false);
		cs_http_in_transaction = false;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		/* as PostgresMain does after an error, in a smaller way */
		HOLD_INTERRUPTS();
		cs_http_in_transaction = false;
		disable_timeout(STATEMENT_TIMEOUT, false);
		QueryCancelPending = false; /* the cancel, if any, has done its job */

		MemoryContextSwitchTo(callercxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		RESUME_INTERRUPTS();

		answer_error(state, edata, answer);
		FreeErrorData(edata);
	}
	PG_END_TRY();

	MemoryContextSwitchTo(callercxt);
	debug_query_string = NULL;
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
}

/*
 * Is the extension installed in the database we serve? If not, answer 503
 * (nothing is wrong with the request, and it will work once someone runs
 * CREATE EXTENSION) and say so in the log, once.
 */
static bool
extension_installed(CsTxState *state, CsHttpAnswer *answer)
{
	if (OidIsValid(get_extension_oid("cohortsync", true)))
	{
		warned_not_installed = false;
		return true;
	}

	if (!warned_not_installed)
		ereport(WARNING,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("cohortsync http: extension \"cohortsync\" is not installed in database \"%s\"",
						cs_database),
				 errdetail("Webhook requests are answered 503 until it is."),
				 errhint("Run CREATE EXTENSION cohortsync in database \"%s\", or point cohortsync.database at the database that has it.",
						 cs_database)));
	warned_not_installed = true;

	cs_http_answer(answer, MHD_HTTP_SERVICE_UNAVAILABLE, state->action,
				   "cohortsync is not installed in the database yet; retry later",
				   "extension not installed");
	return false;
}

/* --- authentication ---------------------------------------------------- */

typedef struct CsAuthArg
{
	const char *username;		/* NULL when no credentials were sent */
	const char *password;
} CsAuthArg;

static void
authenticate_work(CsTxState *state, void *arg, CsHttpAnswer *answer)
{
	CsAuthArg  *auth = arg;
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1];
	char		nulls[1];
	bool		isnull;
	bool		any_user;
	char	   *secret = NULL;
	Datum		d;
	int			rc;

	if (!extension_installed(state, answer))
		return;

	values[0] = auth->username ? CStringGetTextDatum(auth->username) : (Datum) 0;
	nulls[0] = auth->username ? ' ' : 'n';
	rc = SPI_execute_with_args("SELECT (SELECT u.password_hash FROM cohortsync.webhook_users AS u"
							   "         WHERE u.username = $1),"
							   "       EXISTS (SELECT FROM cohortsync.webhook_users)",
							   1, argtypes, values, nulls, true, 1);
	if (rc != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "cohortsync: reading webhook users failed: %s",
			 SPI_result_code_string(rc));

	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (!isnull)
		secret = TextDatumGetCString(d);
	any_user = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
										  SPI_tuptable->tupdesc, 2, &isnull));

	if (!any_user)
	{
		if (!warned_no_users)
			ereport(WARNING,
					(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
					 errmsg("cohortsync http: no webhook users are configured, so every webhook request is refused"),
					 errhint("Add the user and password configured in Mixpanel with: SELECT cohortsync.add_webhook_user('<username>', '<password>'); in database \"%s\".",
							 cs_database)));
		warned_no_users = true;
		cs_http_answer(answer, MHD_HTTP_UNAUTHORIZED, NULL,
					   "authentication required: no webhook users are configured on the server",
					   "no webhook users configured");
		return;
	}
	warned_no_users = false;

	/* run the hash check even for unknown users: same time either way */
	if (auth->username == NULL ||
		!cs_webhook_password_matches(auth->password, secret))
	{
		cs_http_answer(answer, MHD_HTTP_UNAUTHORIZED, NULL,
					   "authentication failed: valid Basic credentials are required",
					   auth->username ? "authentication failed" : "no credentials");
		return;
	}

	answer->status = 0;			/* authenticated */
}

/*
 * Check Basic credentials. Leaves answer->status 0 when they are valid;
 * otherwise fills in the answer (401, or 503 when the database cannot say).
 */
void
cs_http_authenticate(const char *username, const char *password, CsHttpAnswer *answer)
{
	CsTxState	state = {"authenticate webhook request", NULL, false, true};
	CsAuthArg	arg = {username, password};

	answer->status = 0;
	run_in_transaction(&state, authenticate_work, &arg, answer);
}

/* --- POST /mixpanel ---------------------------------------------------- */

typedef struct CsIngestArg
{
	const char *body;
	size_t		len;
} CsIngestArg;

/* The body's "action" if it is a string, clipped, for answers of our own. */
static const char *
body_action(Jsonb *page)
{
	JsonbValue	key;
	JsonbValue *v;

	if (!JB_ROOT_IS_OBJECT(page))
		return NULL;
	key.type = jbvString;
	key.val.string.val = "action";
	key.val.string.len = strlen("action");
	v = findJsonbValueFromContainer(&page->root, JB_FOBJECT, &key);
	if (v == NULL || v->type != jbvString)
		return NULL;
	return pnstrdup(v->val.string.val,
					pg_mbcliplen(v->val.string.val, v->val.string.len,
								 CS_MAX_ECHOED_ACTION));
}

static void
ingest_work(CsTxState *state, void *arg, CsHttpAnswer *answer)
{
	CsIngestArg *in = arg;
	char	   *converted;
	Datum		page;
	CsIngestResult result;
	Jsonb	   *response;

	/*
	 * JSON is UTF-8 (RFC 8259). Check that, and that there is no NUL byte
	 * (which would end the text early), before the JSON parser sees it; any
	 * data error up to the end of parsing means "not JSON" (415).
	 */
	state->parsing_body = true;
	if (memchr(in->body, '\0', in->len) != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_CHARACTER_NOT_IN_REPERTOIRE),
				 errmsg("it contains a NUL byte")));
	converted = pg_any_to_server(in->body, in->len, PG_UTF8);
	page = DirectFunctionCall1(jsonb_in, CStringGetDatum(converted));
	state->parsing_body = false;

	state->action = body_action(DatumGetJsonbP(page));

	if (RecoveryInProgress())
	{
		/* a standby (or a primary being promoted): try the primary, or later */
		cs_http_answer(answer, MHD_HTTP_SERVICE_UNAVAILABLE, state->action,
					   "the database is in recovery and cannot accept writes; retry later",
					   "in recovery");
		return;
	}
	if (!extension_installed(state, answer))
		return;

	/* as a call of cohortsync.ingest(jsonb) would, rights and settings included */
	switch (cs_ingest_as_function(DatumGetJsonbP(page), &result))
	{
		case CS_INGEST_ACCEPTED:
			answer->status = MHD_HTTP_OK;
			answer->note = NULL;
			break;
		case CS_INGEST_REJECTED:
			/* the sender's mistake; ingest wrote nothing, and we make sure */
			answer->status = MHD_HTTP_BAD_REQUEST;
			answer->note = "page rejected";
			state->commit = false;
			break;
	}
	/* the text cohortsync.ingest's jsonb answer has */
	response = cs_ingest_response(&result);
	answer->body = JsonbToCString(NULL, &response->root, VARSIZE(response));
}

/*
 * Apply one webhook page: 200, or 400 when the page is wrong, 415 when the
 * body is not JSON, 503 or 500 when we are in trouble.
 */
void
cs_http_ingest(const char *body, size_t len, CsHttpAnswer *answer)
{
	CsTxState	state = {"POST /mixpanel", NULL, false, true};
	CsIngestArg arg = {body, len};

	run_in_transaction(&state, ingest_work, &arg, answer);
}

/* --- GET /healthz ------------------------------------------------------ */

static void
health_work(CsTxState *state, void *arg, CsHttpAnswer *answer)
{
	if (RecoveryInProgress())
	{
		cs_http_answer(answer, MHD_HTTP_SERVICE_UNAVAILABLE, NULL,
					   "the database is in recovery and cannot accept writes",
					   "in recovery");
		return;
	}
	if (XactReadOnly)
	{
		cs_http_answer(answer, MHD_HTTP_SERVICE_UNAVAILABLE, NULL,
					   "transactions are read-only (default_transaction_read_only)",
					   "read-only");
		return;
	}
	if (!extension_installed(state, answer))
		return;

	/* writable: take a transaction id, so that the commit writes WAL */
	(void) GetTopTransactionId();

	/*
	 * ...but do not wait for it to reach the disk: behind the WAL of a big
	 * swap, that wait alone could take longer than a load balancer allows,
	 * and a health check's commit protects no data.
	 */
	(void) set_config_option("synchronous_commit", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_LOCAL, true, 0, false);
	cs_http_answer(answer, MHD_HTTP_OK, NULL, NULL, NULL);
}

/* 200 when the database is reachable and writable, else 503. */
void
cs_http_health(CsHttpAnswer *answer)
{
	CsTxState	state = {"GET /healthz", NULL, false, true};

	run_in_transaction(&state, health_work, NULL, answer);
}
