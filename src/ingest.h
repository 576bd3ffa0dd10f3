/*-------------------------------------------------------------------------
 *
 * ingest.h
 *	  One webhook page, from its JSON body to the answer Mixpanel expects:
 *	  the C entry that cohortsync.ingest(jsonb) and the HTTP listener share.
 *
 *-------------------------------------------------------------------------
 */
#ifndef COHORTSYNC_INGEST_H
#define COHORTSYNC_INGEST_H

#include "utils/jsonb.h"

#include "membership.h"

typedef enum CsIngestStatus
{
	CS_INGEST_ACCEPTED,			/* applied, or queued to be applied in order */
	CS_INGEST_REJECTED			/* the sender's mistake: nothing was written */
} CsIngestStatus;

typedef struct CsIngestResult
{
	CsIngestStatus status;
	const char *action;			/* the action as received; NULL if unreadable */
	const char *error;			/* CS_INGEST_REJECTED: what is wrong, and where */
	CsApplyResult applied;		/* CS_INGEST_ACCEPTED: what applying did */
} CsIngestResult;

/*
 * Validate and apply one page in the caller's transaction, with the caller's
 * rights. Trouble on our side (a lock timeout, a full disk) is raised as an
 * ERROR; only the sender's mistakes are CS_INGEST_REJECTED.
 */
extern CsIngestStatus cs_ingest(Jsonb *body, CsIngestResult *result);

/*
 * cs_ingest() as a call of cohortsync.ingest(jsonb) runs it: the caller must
 * hold EXECUTE on the function, which then runs with its owner's rights and
 * its settings (SECURITY DEFINER, SET search_path).
 */
extern CsIngestStatus cs_ingest_as_function(Jsonb *body, CsIngestResult *result);

/* The answer Mixpanel expects for a result, as cohortsync.ingest returns it. */
extern Jsonb *cs_ingest_response(const CsIngestResult *result);

#endif							/* COHORTSYNC_INGEST_H */
