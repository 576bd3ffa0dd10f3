/*-------------------------------------------------------------------------
 *
 * kind_braze.c
 *	  Braze's request: POST <base>/users/track, Authorization: Bearer <REST
 *	  API key>, a body of {"attributes": [...], "events": [...]}
 *	  (docs/destination-apis.md).
 *
 * Each record is {"attributes": {object}} or {"events": {object}}; the body
 * puts the objects into their arrays, each in the records' order, so that
 * _read_answer can map Braze's (input_array, index) back to a record.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "destination_kind.h"

static void
braze_headers(CsHttpCall *call, const char *account_id, const char *secret)
{
	char	   *value = psprintf("Bearer %s", secret);

	cs_http_add_header(call, "Authorization", value);
	explicit_bzero(value, strlen(value));
	pfree(value);
	cs_http_add_header(call, "Content-Type", "application/json");
}

static const char *
skip_space(const char *p)
{
	while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
		p++;
	return p;
}

/*
 * If record is {"<array>": <object>}, the object's text (*len bytes); else
 * NULL. The records come from the extension's own builder (jsonb as text).
 */
static const char *
record_object(const char *record, const char *array, int *len)
{
	const char *p = skip_space(record);
	const char *end;
	size_t		alen = strlen(array);

	if (*p++ != '{')
		return NULL;
	p = skip_space(p);
	if (*p != '"' || strncmp(p + 1, array, alen) != 0 || p[1 + alen] != '"')
		return NULL;
	p = skip_space(p + alen + 2);
	if (*p++ != ':')
		return NULL;
	p = skip_space(p);
	end = p + strlen(p);
	while (end > p && (end[-1] == ' ' || end[-1] == '\n' || end[-1] == '\r' || end[-1] == '\t'))
		end--;
	if (end == p || end[-1] != '}')
		return NULL;
	end--;						/* the record's closing brace */
	while (end > p && (end[-1] == ' ' || end[-1] == '\n' || end[-1] == '\r' || end[-1] == '\t'))
		end--;
	*len = end - p;
	return *len > 0 ? p : NULL;
}

/* Append the array "name" of the records that belong to it, if any; returns whether it did. */
static bool
append_array(StringInfo body, const char *name, char **records, int n, bool first_array)
{
	bool		any = false;

	for (int i = 0; i < n; i++)
	{
		int			len;
		const char *obj = record_object(records[i], name, &len);

		/* a record of neither shape goes to attributes: Braze refuses it, visibly */
		if (obj == NULL && strcmp(name, "attributes") == 0 &&
			record_object(records[i], "events", &len) == NULL)
		{
			obj = records[i];
			len = strlen(obj);
		}
		if (obj == NULL)
			continue;
		if (!any)
			appendStringInfo(body, "%s\"%s\":[", first_array ? "" : ",", name);
		else
			appendStringInfoChar(body, ',');
		appendBinaryStringInfo(body, obj, len);
		any = true;
	}
	if (any)
		appendStringInfoChar(body, ']');
	return any;
}

static void
braze_frame(StringInfo body, char **records, int n)
{
	bool		any;

	appendStringInfoChar(body, '{');
	any = append_array(body, "attributes", records, n, true);
	append_array(body, "events", records, n, !any);
	appendStringInfoChar(body, '}');
}

const CsDestinationKind cs_kind_braze = {
	.name = "braze",
	.path = "/users/track",
	.add_headers = braze_headers,
	.frame = braze_frame,
	/* no objects: authenticated, and it changes nothing */
	.test_method = "POST",
	.test_path = "/users/track",
	.test_body = "{}",
};
