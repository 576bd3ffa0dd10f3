/*-------------------------------------------------------------------------
 *
 * test_destination.c
 *	  cohortsync.test_destination(name): whether a destination's credentials
 *	  and region work, by one harmless authenticated request that carries no
 *	  user data (its kind's connection test), sent from the calling backend
 *	  with the delivery worker's timeouts and CA file.
 *
 * The answer is judged where every answer is, by cohortsync._read_answer
 * (with no records): 'accepted' means connected. The secret goes into a
 * header and nowhere else: not into the result, not into a message.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/wait_event.h"

#include "destination_kind.h"
#include "http_client.h"

PG_FUNCTION_INFO_V1(cohortsync_test_destination);

/* What the test needs of the destination, read with SPI. */
typedef struct CsTestTarget
{
	char	   *kind;
	char	   *base_url;
	char	   *account_id;
	char	   *secret;			/* NULL: none stored */
} CsTestTarget;

static char *
value_or_null(int col)
{
	return SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, col);
}

static void
read_target(const char *name, CsTestTarget *t)
{
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(name)};

	/* any state: a destination paused on its credentials is what one tests */
	if (SPI_execute_with_args("SELECT d.kind, cohortsync._base_url(d.kind, d.region, d.api_url),"
							  "       d.account_id, s.passcode"
							  "  FROM cohortsync.destinations d"
							  "  LEFT JOIN cohortsync.destination_secrets s ON s.name = d.name"
							  " WHERE d.name = $1",
							  1, argtypes, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "cohortsync: could not read destination \"%s\"", name);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("destination \"%s\" does not exist", name),
				 errhint("See cohortsync.destinations.")));
	t->kind = value_or_null(1);
	t->base_url = value_or_null(2);
	t->account_id = value_or_null(3);
	t->secret = value_or_null(4);
}

/* Send the kind's connection test and wait for it, answering query cancels. */
static void
send_test(const CsDestinationKind *kind, const CsTestTarget *t, CsHttpCall *call)
{
	StringInfoData body;
	char	   *url = psprintf("%s%s", t->base_url, kind->test_path);

	initStringInfo(&body);
	if (kind->test_body != NULL)
		appendStringInfoString(&body, kind->test_body);
	memset(call, 0, sizeof(CsHttpCall));
	cs_http_init();
	kind->add_headers(call, t->account_id, t->secret);
	cs_http_start(call, kind->test_method, url, kind->test_body != NULL ? &body : NULL);

	PG_TRY();
	{
		while (cs_http_next_finished() != call)
		{
			cs_http_wait(1000, PG_WAIT_EXTENSION);
			CHECK_FOR_INTERRUPTS();
		}
	}
	PG_CATCH();
	{
		/* cancelled: the request must not outlive the statement */
		cs_http_abandon(call);
		PG_RE_THROW();
	}
	PG_END_TRY();
}

/*
 * The verdict as jsonb: ok, kind, http_status, verdict, reason (with no
 * answer, curl's words for why).
 */
static Datum
judge(const CsTestTarget *t, CsHttpCall *call)
{
	Oid			argtypes[5] = {TEXTOID, INT4OID, TEXTOID, TEXTOID, TEXTOID};
	Datum		values[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};
	const char *body = NULL;
	bool		isnull;

	if (call->http_status != 0)
		body = pg_verifymbstr(call->response.data, call->response.len, true) ?
			call->response.data : "(an answer that is not valid text)";
	values[0] = CStringGetTextDatum(t->kind);
	values[1] = Int32GetDatum((int32) call->http_status);
	values[2] = body ? CStringGetTextDatum(body) : (Datum) 0;
	nulls[2] = body ? ' ' : 'n';
	values[3] = call->http_status == 0 ? CStringGetTextDatum(call->errbuf) : (Datum) 0;
	nulls[3] = call->http_status == 0 ? ' ' : 'n';
	values[4] = CStringGetTextDatum(t->secret);

	/* whatever answered may echo the request's headers: the secret never goes back */
	if (SPI_execute_with_args("SELECT jsonb_build_object("
							  "  'ok', a.verdict = 'accepted',"
							  "  'kind', $1,"
							  "  'http_status', nullif($2, 0),"
							  "  'verdict', a.verdict,"
							  "  'reason', replace(CASE WHEN $2 = 0 THEN $4 ELSE a.error END, $5, '(secret)'))"
							  "  FROM cohortsync._read_answer($1, $2, $3, '{}') a",
							  5, argtypes, values, nulls, true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "cohortsync: could not judge the answer");
	return SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
}

/*
 * cohortsync.test_destination(name text) RETURNS jsonb
 */
Datum
cohortsync_test_destination(PG_FUNCTION_ARGS)
{
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	CsTestTarget t;
	const CsDestinationKind *kind;
	CsHttpCall	call;
	Datum		result;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "cohortsync: SPI_connect failed");
	read_target(name, &t);
	kind = cs_destination_kind(t.kind);
	if (kind == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("destination \"%s\" is of kind \"%s\", which this library cannot send to",
						name, t.kind),
				 errhint("Install the library of the extension's version.")));
	if (t.secret == NULL)
	{
		SPI_finish();
		return DirectFunctionCall1(jsonb_in,
								   CStringGetDatum(psprintf("{\"ok\": false, \"kind\": \"%s\", \"http_status\": null, "
															"\"verdict\": null, \"reason\": \"no secret is stored\"}",
															t.kind)));
	}

	send_test(kind, &t, &call);

	result = judge(&t, &call);
	explicit_bzero(t.secret, strlen(t.secret));
	/* copied out of SPI's memory before it goes */
	result = SPI_datumTransfer(result, false, -1);
	SPI_finish();
	PG_RETURN_DATUM(result);
}
