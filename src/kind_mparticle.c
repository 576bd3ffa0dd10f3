/*-------------------------------------------------------------------------
 *
 * kind_mparticle.c
 *	  mParticle's Events API request: POST <base>/v2/bulkevents, a JSON array
 *	  of batches (one per record), HTTP Basic with the input feed's key
 *	  (account_id) and secret (docs/destination-apis.md).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/base64.h"

#include "destination_kind.h"

static void
mparticle_headers(CsHttpCall *call, const char *account_id, const char *secret)
{
	char	   *pair = psprintf("%s:%s", account_id ? account_id : "", secret);
	int			pairlen = strlen(pair);
	int			enclen = pg_b64_enc_len(pairlen);
	char	   *value = palloc(enclen + 7);
	int			n;

	memcpy(value, "Basic ", 6);
	/* a void pointer: the source's type differs between major versions */
	n = pg_b64_encode((const void *) pair, pairlen, value + 6, enclen);
	if (n < 0)
		elog(ERROR, "cohortsync: could not encode credentials");
	value[6 + n] = '\0';
	cs_http_add_header(call, "Authorization", value);
	/* both hold the secret */
	explicit_bzero(pair, pairlen);
	explicit_bzero(value, 6 + n);
	pfree(pair);
	pfree(value);
	cs_http_add_header(call, "Content-Type", "application/json");
}

static void
mparticle_frame(StringInfo body, char **records, int n)
{
	appendStringInfoChar(body, '[');
	for (int i = 0; i < n; i++)
	{
		if (i > 0)
			appendStringInfoChar(body, ',');
		appendStringInfoString(body, records[i]);
	}
	appendStringInfoChar(body, ']');
}

const CsDestinationKind cs_kind_mparticle = {
	.name = "mparticle",
	.path = "/v2/bulkevents",
	.add_headers = mparticle_headers,
	.frame = mparticle_frame,
	/* no batches: authenticated, and it changes nothing */
	.test_method = "POST",
	.test_path = "/v2/bulkevents",
	.test_body = "[]",
};
