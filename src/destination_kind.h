/*-------------------------------------------------------------------------
 *
 * destination_kind.h
 *	  What the C side knows of each kind of destination: where its requests
 *	  go, their headers and how records are framed into a body. Everything
 *	  else about a kind (its records, reading its answers, its limits) is in
 *	  SQL.
 *
 *-------------------------------------------------------------------------
 */
#ifndef COHORTSYNC_DESTINATION_KIND_H
#define COHORTSYNC_DESTINATION_KIND_H

#include "lib/stringinfo.h"

#include "http_client.h"

typedef struct CsDestinationKind
{
	const char *name;			/* destinations.kind */
	const char *path;			/* of the upload request, after the base URL */

	/* the upload's headers: authentication and content type */
	void		(*add_headers) (CsHttpCall *call, const char *account_id, const char *secret);

	/* append the body of one request carrying records[0..n-1] (JSON texts, in id order) */
	void		(*frame) (StringInfo body, char **records, int n);

	/*
	 * The connection test: one harmless authenticated request that carries no
	 * user data (docs/destination-apis.md, "Connection test"). test_body NULL:
	 * the request has none. Its headers are add_headers'.
	 */
	const char *test_method;
	const char *test_path;
	const char *test_body;
} CsDestinationKind;

/* The kind of that name, or NULL. */
extern const CsDestinationKind *cs_destination_kind(const char *name);

extern const CsDestinationKind cs_kind_clevertap;
extern const CsDestinationKind cs_kind_mparticle;
extern const CsDestinationKind cs_kind_braze;

#endif							/* COHORTSYNC_DESTINATION_KIND_H */
