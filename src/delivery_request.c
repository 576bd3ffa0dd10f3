/*-------------------------------------------------------------------------
 *
 * delivery_request.c
 *	  One claim of records on the wire: the whole claim as one request, or,
 *	  when the destination refused it as a whole and it was split, its pieces
 *	  one after the other. The destination's kind frames the body and sets the
 *	  headers; nothing here knows a vendor.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "delivery_worker.h"

List	   *cs_requests = NIL;

CsRequest *
cs_request_new(CsDestination *dest, const CsDestinationKind *kind)
{
	MemoryContext cxt = AllocSetContextCreate(cs_worker_cxt, "cohortsync request",
											  ALLOCSET_DEFAULT_SIZES);
	MemoryContext old = MemoryContextSwitchTo(cxt);
	CsRequest  *req = palloc0(sizeof(CsRequest));

	req->cxt = cxt;
	req->kind = kind;
	req->destination = pstrdup(dest->name);
	req->url = psprintf("%s%s", dest->base_url, kind->path);
	req->account_id = dest->account_id ? pstrdup(dest->account_id) : NULL;
	req->secret = pstrdup(dest->secret);
	MemoryContextSwitchTo(old);
	return req;
}

/* A claim has committed: put its request in flight, all of its records at once. */
void
cs_request_start(CsRequest *req)
{
	MemoryContext old;

	req->pending_lo = MemoryContextAlloc(req->cxt, sizeof(int) * (req->claim.nrecords + 1));
	req->pending_hi = MemoryContextAlloc(req->cxt, sizeof(int) * (req->claim.nrecords + 1));
	old = MemoryContextSwitchTo(cs_worker_cxt);
	cs_requests = lappend(cs_requests, req);
	MemoryContextSwitchTo(old);
	cs_request_send_piece(req, 0, req->claim.nrecords);
}

/* Send records [lo, hi) of the request's claim. */
void
cs_request_send_piece(CsRequest *req, int lo, int hi)
{
	MemoryContext old = MemoryContextSwitchTo(req->cxt);

	req->lo = lo;
	req->hi = hi;
	if (req->body.data == NULL)
		initStringInfo(&req->body);
	else
		resetStringInfo(&req->body);
	req->kind->frame(&req->body, req->claim.records + lo, hi - lo);
	if (req->call.response.data != NULL)
	{
		pfree(req->call.response.data);
		req->call.response.data = NULL;
	}
	req->call.owner = req;
	req->started = GetCurrentTimestamp();
	req->kind->add_headers(&req->call, req->account_id, req->secret);
	cs_http_start(&req->call, "POST", req->url, &req->body);
	MemoryContextSwitchTo(old);
}

void
cs_request_free(CsRequest *req)
{
	if (req->call.easy != NULL)
		cs_http_abandon(&req->call);
	/* wipe the secret before the memory goes back to the allocator */
	if (req->secret)
		explicit_bzero(req->secret, strlen(req->secret));
	cs_requests = list_delete_ptr(cs_requests, req);
	MemoryContextDelete(req->cxt);
}

int
cs_requests_in_flight_for(const char *destination)
{
	ListCell   *lc;
	int			n = 0;

	foreach(lc, cs_requests)
	{
		CsRequest  *req = (CsRequest *) lfirst(lc);

		if (strcmp(req->destination, destination) == 0)
			n++;
	}
	return n;
}

/* Records a request still carries: the piece in flight and the pieces to come. */
int64
cs_request_records(CsRequest *req)
{
	int64		n = req->hi - req->lo;

	for (int p = 0; p < req->npending; p++)
		n += req->pending_hi[p] - req->pending_lo[p];
	return n;
}
