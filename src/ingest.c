/*-------------------------------------------------------------------------
 *
 * ingest.c
 *	  One webhook page: cohortsync.ingest(page jsonb), and the C entry it
 *	  shares with the HTTP listener.
 *
 * The answer is the body Mixpanel's custom webhook expects:
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

#include "access/htup_details.h"
#include "catalog/objectaccess.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/value.h"
#include "parser/parse_func.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"

#include "ingest.h"
#include "page.h"
#include "pg_compat.h"
#include "response.h"

PG_FUNCTION_INFO_V1(cohortsync_ingest);
PG_FUNCTION_INFO_V1(cohortsync_explain_swap);

CsIngestStatus
cs_ingest(Jsonb *body, CsIngestResult *result)
{
	CsPage		page;
	char	   *error;

	memset(result, 0, sizeof(CsIngestResult));
	error = cs_page_parse(body, &page);
	result->action = page.action_name;
	if (error != NULL)
	{
		/* DEBUG1: a caller that wants these in the log raises log_min_messages */
		ereport(DEBUG1,
				(errmsg_internal("cohortsync: rejected page: %s", error)));
		result->status = CS_INGEST_REJECTED;
		result->error = error;
		return result->status;
	}

	cs_apply_page(&page, &result->applied);

	ereport(DEBUG1,
			(errmsg_internal("cohortsync: %s page %d/%d of cohort %s: %d members, "
							 UINT64_FORMAT " added, " UINT64_FORMAT " removed%s%s%s%s",
							 page.action_name, page.page_count, page.total_pages,
							 page.cohort_id, page.nmembers, result->applied.added,
							 result->applied.removed,
							 result->applied.duplicate_page ? ", repeated page" : "",
							 result->applied.ignored ? ", session no longer receiving" : "",
							 result->applied.session_completed ? ", session completed" : "",
							 result->applied.queued ? ", queued to be applied in order" : "")));

	result->status = CS_INGEST_ACCEPTED;
	return result->status;
}

/*
 * What the executor and fmgr_security_definer() do around a call of the SQL
 * function: the EXECUTE check (with its hook), then the owner's rights and
 * the function's settings until it returns. An error on the way is undone by
 * the transaction's abort, as for the function.
 */
CsIngestStatus
cs_ingest_as_function(Jsonb *body, CsIngestResult *result)
{
	Oid			argtypes[1] = {JSONBOID};
	Oid			fn;
	HeapTuple	tuple;
	Form_pg_proc proc;
	AclResult	aclresult;
	Datum		config;
	bool		isnull;
	Oid			save_userid;
	int			save_sec_context;
	int			save_nestlevel = -1;

	fn = LookupFuncName(list_make2(makeString("cohortsync"), makeString("ingest")),
						1, argtypes, false);
	aclresult = object_aclcheck(ProcedureRelationId, fn, GetUserId(), ACL_EXECUTE);
	if (aclresult != ACLCHECK_OK)
		aclcheck_error(aclresult, OBJECT_FUNCTION, get_func_name(fn));
	InvokeFunctionExecuteHook(fn);

	tuple = SearchSysCache1(PROCOID, ObjectIdGetDatum(fn));
	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for function %u", fn);
	proc = (Form_pg_proc) GETSTRUCT(tuple);

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	config = SysCacheGetAttr(PROCOID, tuple, Anum_pg_proc_proconfig, &isnull);
	if (!isnull)
		save_nestlevel = NewGUCNestLevel();
	if (proc->prosecdef)
		SetUserIdAndSecContext(proc->proowner,
							   save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	/* as the owner: superuser() says whether the owner may set SUSET settings */
	if (!isnull)
		ProcessGUCArray(DatumGetArrayTypeP(config),
						superuser() ? PGC_SUSET : PGC_USERSET,
						PGC_S_SESSION, GUC_ACTION_SAVE);
	ReleaseSysCache(tuple);

	(void) cs_ingest(body, result);

	if (save_nestlevel >= 0)
		AtEOXact_GUC(true, save_nestlevel);
	SetUserIdAndSecContext(save_userid, save_sec_context);
	return result->status;
}

Jsonb *
cs_ingest_response(const CsIngestResult *result)
{
	const char *error = result->status == CS_INGEST_REJECTED ? result->error : NULL;

	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
											  CStringGetDatum(cs_response_body(result->action,
																			   error, 400))));
}

Datum
cohortsync_ingest(PG_FUNCTION_ARGS)
{
	CsIngestResult result;

	(void) cs_ingest(PG_GETARG_JSONB_P(0), &result);
	PG_RETURN_JSONB_P(cs_ingest_response(&result));
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
