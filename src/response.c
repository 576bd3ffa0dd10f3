/*-------------------------------------------------------------------------
 *
 * response.c
 *	  The response body Mixpanel's custom webhook expects, built in one place
 *	  for cohortsync.ingest and for the HTTP listener's answers.
 *
 * Mixpanel documents one shape for every answer: the action it sent, a status
 * of "success" or "failure", and on failure an error with a message (shown in
 * its UI) and an HTTP status code.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "lib/stringinfo.h"
#include "utils/json.h"

#include "response.h"

char *
cs_response_body(const char *action, const char *message, int code)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"action\": ");
	if (action)
		escape_json(&buf, action);
	else
		appendStringInfoString(&buf, "null");

	if (message == NULL)
		appendStringInfoString(&buf, ", \"status\": \"success\"}");
	else
	{
		appendStringInfoString(&buf, ", \"status\": \"failure\", \"error\": {\"message\": ");
		escape_json(&buf, message);
		appendStringInfo(&buf, ", \"code\": %d}}", code);
	}
	return buf.data;
}
