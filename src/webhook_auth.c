/*-------------------------------------------------------------------------
 *
 * webhook_auth.c
 *	  Credentials of the webhook's Basic authentication: the SQL function that
 *	  stores them, and the check of a password against what was stored.
 *
 * Passwords are stored the way PostgreSQL stores role passwords: as a
 * SCRAM-SHA-256 verifier (salted, iterated PBKDF2), never in clear. The
 * server's own code builds and parses the verifier; only the final comparison
 * is ours, because the server's scram_verify_plain_password() uses memcmp()
 * and we want a comparison whose time does not depend on the data.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/base64.h"
#include "common/saslprep.h"
#include "common/scram-common.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "pg_compat.h"			/* SCRAM: pg_be_scram_build_secret() and the
								 * calls that changed in 16 and 18 */
#include "webhook_auth.h"

PG_FUNCTION_INFO_V1(cohortsync_add_webhook_user);

/* Generous bounds; they only keep absurd input out of the table. */
#define CS_MAX_USERNAME_BYTES 256
#define CS_MAX_PASSWORD_BYTES 1024

/*
 * cohortsync.add_webhook_user(username text, password text) RETURNS void
 *
 * Creates the user, or replaces its password. Error messages never quote the
 * password; the function is declared with log_min_error_statement = panic so
 * that a failed call's statement (which holds the password) is not logged.
 */
Datum
cohortsync_add_webhook_user(PG_FUNCTION_ARGS)
{
	char	   *username = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *password = text_to_cstring(PG_GETARG_TEXT_PP(1));
	char	   *secret;
	Oid			argtypes[2] = {TEXTOID, TEXTOID};
	Datum		values[2];
	int			rc;

	if (username[0] == '\0' || strlen(username) > CS_MAX_USERNAME_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("webhook user name must be between 1 and %d bytes long",
						CS_MAX_USERNAME_BYTES)));
	/* RFC 7617: the user-id of Basic authentication cannot contain a colon */
	if (strchr(username, ':') != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("webhook user name must not contain a colon")));
	for (const char *p = username; *p; p++)
		if ((unsigned char) *p < 0x20 || *p == 0x7f)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("webhook user name must not contain control characters")));

	if (password[0] == '\0' || strlen(password) > CS_MAX_PASSWORD_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("webhook password must be between 1 and %d bytes long",
						CS_MAX_PASSWORD_BYTES)));

	secret = pg_be_scram_build_secret(password);
	explicit_bzero(password, strlen(password));

	values[0] = CStringGetTextDatum(username);
	values[1] = CStringGetTextDatum(secret);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "cohortsync: SPI_connect failed");
	rc = SPI_execute_with_args("INSERT INTO cohortsync.webhook_users AS u (username, password_hash)"
							   " VALUES ($1, $2)"
							   " ON CONFLICT (username) DO UPDATE"
							   " SET password_hash = excluded.password_hash,"
							   "     updated_at = pg_catalog.now()",
							   2, argtypes, values, NULL, false, 0);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "cohortsync: storing webhook user failed: %s",
			 SPI_result_code_string(rc));
	SPI_finish();

	PG_RETURN_VOID();
}

/* The verifier checked for unknown users; built once per process. */
static const char *
dummy_secret(void)
{
	static char *secret = NULL;

	if (secret == NULL)
	{
		char	   *s = pg_be_scram_build_secret("cohortsync: no such user");

		secret = MemoryContextStrdup(TopMemoryContext, s);
		pfree(s);
	}
	return secret;
}

bool
cs_webhook_password_matches(const char *password, const char *secret)
{
	int			iterations;
	char	   *encoded_salt;
	uint8	   *salt;
	int			saltlen;
	uint8		stored_key[CS_SCRAM_MAX_KEY_LEN];
	uint8		server_key[CS_SCRAM_MAX_KEY_LEN];
	uint8		salted_password[CS_SCRAM_MAX_KEY_LEN];
	uint8		computed_key[CS_SCRAM_MAX_KEY_LEN];
	char	   *prep_password = NULL;
	const char *errstr = NULL;
	uint8		diff = 0;
	bool		known = (secret != NULL);
	pg_cryptohash_type hash_type;
	int			key_length;

	if (!known)
		secret = dummy_secret();

	if (!cs_parse_scram_secret(secret, &iterations, &hash_type, &key_length,
							   &encoded_salt, stored_key, server_key))
	{
		/* the table's CHECK makes this unlikely; never print the secret */
		ereport(WARNING,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("cohortsync: stored webhook password hash is not a valid SCRAM secret"),
				 errhint("Set the password again with cohortsync.add_webhook_user().")));
		return false;
	}

	saltlen = pg_b64_dec_len(strlen(encoded_salt));
	salt = palloc(saltlen);
	saltlen = cs_pg_b64_decode(encoded_salt, strlen(encoded_salt), salt, saltlen);
	if (saltlen < 0)
		return false;

	/* as the server does for role passwords: normalise, but never refuse */
	if (pg_saslprep(password, &prep_password) == SASLPREP_SUCCESS)
		password = prep_password;

	if (cs_scram_SaltedPassword(password, hash_type, key_length, salt, saltlen,
								iterations, salted_password, &errstr) < 0 ||
		cs_scram_ServerKey(salted_password, hash_type, key_length,
						   computed_key, &errstr) < 0)
		elog(ERROR, "cohortsync: could not compute SCRAM server key: %s",
			 errstr ? errstr : "unknown error");

	/* constant time: look at every byte whatever the earlier ones were */
	for (int i = 0; i < CS_SCRAM_MAX_KEY_LEN; i++)
		diff |= computed_key[i] ^ server_key[i];

	explicit_bzero(salted_password, sizeof(salted_password));
	if (prep_password)
	{
		explicit_bzero(prep_password, strlen(prep_password));
		pfree(prep_password);
	}

	return known && diff == 0;
}
