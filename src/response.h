/*-------------------------------------------------------------------------
 *
 * response.h
 *	  The response body Mixpanel's custom webhook expects.
 *
 *-------------------------------------------------------------------------
 */
#ifndef COHORTSYNC_RESPONSE_H
#define COHORTSYNC_RESPONSE_H

/*
 * {"action": <action or null>, "status": "success"} when message is NULL, else
 * {"action": ..., "status": "failure", "error": {"message": ..., "code": code}}.
 * Returned palloc'd in the current memory context.
 */
extern char *cs_response_body(const char *action, const char *message, int code);

#endif							/* COHORTSYNC_RESPONSE_H */
