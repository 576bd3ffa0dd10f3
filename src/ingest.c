/*-------------------------------------------------------------------------
 *
 * ingest.c
 *	  cohortsync.ingest(page jsonb): the SQL entry point for one webhook page.
 *
 * The function answers with the body Mixpanel's custom webhook expects:
 *
 *	  {"action": "<action received>", "status": "success"}
 *	  {"action": ..., "status": "failure", "error": {"message": ..., "code": 400}}
 *
 * A failure answer means the page itself was wrong; nothing was written.
 * Trouble on our side (a lock timeout, a full disk) is raised as an ordinary
 * SQL error instead, so that callers can tell "fix the page" (400, Mixpanel
 * pauses the sync) from "try again" (5xx, Mixpanel retries).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"

#include "membership.h"
#include "page.h"
#include "response.h"

PG_FUNCTION_INFO_V1(cohortsync_ingest);
PG_FUNCTION_INFO_V1(cohortsync_explain_swap);

/* The response as jsonb; error is NULL on success, else the page was the sender's fault. */
static Datum
response(const char *action, const char *error)
{
	return DirectFunctionCall1(jsonb_in,
							   CStringGetDatum(cs_response_body(action, error, 400)));
}

Datum
cohortsync_ingest(PG_FUNCTION_ARGS)
{
	Jsonb	   *body = PG_GETARG_JSONB_P(0);
	CsPage		page;
	CsApplyResult result;
	char	   *error;

	error = cs_page_parse(body, &page);
	if (error != NULL)
	{
		/* DEBUG1: a caller that wants these in the log raises log_min_messages */
		ereport(DEBUG1,
				(errmsg_internal("cohortsync: rejected page: %s", error)));
		PG_RETURN_DATUM(response(page.action_name, error));
	}

	cs_apply_page(&page, &result);

	ereport(DEBUG1,
			(errmsg_internal("cohortsync: %s page %d/%d of cohort %s: %d members, "
							 UINT64_FORMAT " added, " UINT64_FORMAT " removed%s%s%s%s",
							 page.action_name, page.page_count, page.total_pages,
							 page.cohort_id, page.nmembers, result.added, result.removed,
							 result.duplicate_page ? ", repeated page" : "",
							 result.ignored ? ", session no longer receiving" : "",
							 result.session_completed ? ", session completed" : "",
							 result.queued ? ", queued to be applied in order" : "")));

	PG_RETURN_DATUM(response(page.action_name, NULL));
}

Datum
cohortsync_explain_swap(PG_FUNCTION_ARGS)
{
	char	   *plan = cs_explain_swap(text_to_cstring(PG_GETARG_TEXT_PP(0)),
									   text_to_cstring(PG_GETARG_TEXT_PP(1)),
									   text_to_cstring(PG_GETARG_TEXT_PP(2)),
									   PG_GETARG_BOOL(3));

	PG_RETURN_TEXT_P(cstring_to_text(plan));
}
