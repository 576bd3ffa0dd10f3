/*-------------------------------------------------------------------------
 *
 * kind_clevertap.c
 *	  CleverTap's upload request: POST <base>/1/upload, {"d": [records]},
 *	  the account id and passcode in X-CleverTap-* headers
 *	  (docs/clevertap-api.md).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "destination_kind.h"

static void
clevertap_headers(CsHttpCall *call, const char *account_id, const char *secret)
{
	cs_http_add_header(call, "X-CleverTap-Account-Id", account_id ? account_id : "");
	cs_http_add_header(call, "X-CleverTap-Passcode", secret);
	cs_http_add_header(call, "Content-Type", "application/json; charset=utf-8");
}

static void
clevertap_frame(StringInfo body, char **records, int n)
{
	appendStringInfoString(body, "{\"d\":[");
	for (int i = 0; i < n; i++)
	{
		if (i > 0)
			appendStringInfoChar(body, ',');
		appendStringInfoString(body, records[i]);
	}
	appendStringInfoString(body, "]}");
}

const CsDestinationKind cs_kind_clevertap = {
	.name = "clevertap",
	.path = "/1/upload",
	.add_headers = clevertap_headers,
	.frame = clevertap_frame,
	/* an upload of no records: authenticated, and it changes nothing */
	.test_method = "POST",
	.test_path = "/1/upload",
	.test_body = "{\"d\":[]}",
};
