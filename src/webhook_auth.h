/*-------------------------------------------------------------------------
 *
 * webhook_auth.h
 *	  Credentials of the webhook's Basic authentication.
 *
 *-------------------------------------------------------------------------
 */
#ifndef COHORTSYNC_WEBHOOK_AUTH_H
#define COHORTSYNC_WEBHOOK_AUTH_H

/*
 * Does password match secret (a SCRAM-SHA-256 verifier from
 * cohortsync.webhook_users)? Pass secret = NULL for an unknown user: the same
 * work is done against a throwaway verifier, so that the answer takes as long
 * whether or not the user exists.
 */
extern bool cs_webhook_password_matches(const char *password, const char *secret);

#endif							/* COHORTSYNC_WEBHOOK_AUTH_H */
