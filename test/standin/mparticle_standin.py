#!/usr/bin/env python3
"""Local stand-in for mParticle's server-to-server Events API (POST /v2/bulkevents), for
tests and benchmarks.

Behaviour follows docs/destination-apis.md (mParticle section): HTTP Basic authentication
with an input feed's key and secret, a JSON array of 1..100 event batches, each with an
`environment` and a user (`user_identities` and/or a signed 64-bit `mpid`), 202 Accepted
with an empty body, and one answer for the whole request (no per-batch results).

Standard library only; listens on 127.0.0.1 only. See README.md next to this file.
"""

import base64
import binascii
import json
import sys

import standin_base as base

API_PATH = "/v2/bulkevents"
MAX_BATCHES = 100             # per request, documented
MAX_REQUEST_BYTES = 256 << 10  # documented request size limit
MAX_BATCH_BYTES = 128 << 10    # documented batch size limit
ENVIRONMENTS = ("production", "development")
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1

MESSAGES = {
    400: "Bad Request",
    401: "Unauthorized: authentication is missing or invalid",
    403: "Forbidden: the API key and secret are not valid",
    404: "Not Found",
    413: "Request too large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

# The batch schema (mparticle.inbound.eventsapi.schema.json) allows no other keys.
BATCH_KEYS = {
    "source_request_id", "events", "device_info", "application_info", "user_attributes",
    "deleted_user_attributes", "user_identities", "environment", "api_key", "api_keys", "ip",
    "integration_attributes", "context", "partner_identity", "partner_identities",
    "source_info", "mp_deviceid", "attribution_info", "timestamp_unixtime_ms", "batch_id",
    "mpid", "origin_mpid", "sdk_version", "consent_state", "job_id",
}
IDENTITY_KEYS = {
    "other", "customer_id", "facebook", "twitter", "google", "microsoft", "yahoo", "email",
    "alias", "facebook_custom_audience_id", "other_id_2", "other_id_3", "other_id_4",
    "other_id_5", "other_id_6", "other_id_7", "other_id_8", "other_id_9", "other_id_10",
    "mobile_number", "phone_number_2", "phone_number_3",
}

DEFAULTS = dict(base.COMMON_SETTINGS)


def scalar(v):
    """The schema's "String": a string, number, boolean or null (not an object or array)."""
    return v is None or isinstance(v, (str, int, float, bool))


def batch_refusal(batch, record_errors):
    """None if the batch is acceptable, else why not (the whole request fails with it)."""
    if not isinstance(batch, dict):
        return "Each batch must be a JSON object."
    unknown = sorted(set(batch) - BATCH_KEYS)
    if unknown:
        return f"Unknown batch field \"{unknown[0]}\"."
    if batch.get("environment") not in ENVIRONMENTS:
        return "Required field \"environment\" must be \"production\" or \"development\"."
    ids = batch.get("user_identities")
    has_mpid = "mpid" in batch
    if ids is None and not has_mpid:
        return "A batch needs \"user_identities\" or \"mpid\"."
    if ids is not None and not (isinstance(ids, dict) and ids
                                and all(isinstance(v, str) and v for v in ids.values())):
        return "\"user_identities\" must be an object of non-empty strings."
    if ids and not set(ids) <= IDENTITY_KEYS:
        return f"Unknown user identity \"{sorted(set(ids) - IDENTITY_KEYS)[0]}\"."
    if has_mpid and not (base.is_int(batch["mpid"]) and INT64_MIN <= batch["mpid"] <= INT64_MAX):
        return "\"mpid\" must be a 64-bit integer."
    attrs = batch.get("user_attributes")
    if attrs is not None and not (isinstance(attrs, dict) and all(
            scalar(v) or (isinstance(v, list) and all(scalar(x) for x in v))
            for v in attrs.values())):
        return "\"user_attributes\" must be an object of strings, numbers, booleans or arrays."
    if "events" in batch and not isinstance(batch["events"], list):
        return "\"events\" must be an array."
    if record_errors:
        for ident in ((ids or {}).get("customer_id"), batch.get("mpid")):
            if ident is not None and str(ident) in record_errors:
                return record_errors[str(ident)]
    return None


class Handler(base.BaseHandler):
    server_version = "mparticle-standin/1"
    API_PATH = API_PATH
    GARBAGE_STATUS = 400   # the success answer has no body: garbage is an unreadable refusal
    RECORDS_FILTER = "_api_key"

    def error_body(self, status, message=None):
        body = {"errors": [{"code": "BAD_REQUEST" if status == 400 else str(status),
                            "message": message or MESSAGES.get(status, "Service Unavailable")}]}
        headers = {"X-MP-Rate-Limit-Exceeded": "feed"} if status == 429 else {}
        return body, headers

    def authenticate(self):
        auth = self.headers.get("Authorization", "")
        pair = None
        if auth.startswith("Basic "):
            try:
                key, sep, secret = base64.b64decode(auth[6:], validate=True).decode().partition(":")
                pair = (key, secret) if sep else None
            except (binascii.Error, UnicodeDecodeError):
                pair = None
        if pair is None:
            return None, 401, self.error_body(401)[0]
        st = self.server.state
        with st.lock:
            known = pair in st.credentials
        if not known:
            return None, 403, self.error_body(403)[0]
        return pair[0], None, None

    def parse_control_key(self, key, value, new, creds):
        if key == "accounts":   # named as in the CleverTap stand-in: [account id, secret]
            if not isinstance(value, list) or not all(
                    isinstance(p, list) and len(p) == 2 and all(isinstance(s, str) for s in p)
                    for p in value):
                raise ValueError("accounts must be a list of [api_key, api_secret] pairs")
            return True, {(k, s) for k, s in value}
        return False, creds

    def process(self, body, api_key, seq, arrived, settings):
        if len(body) > MAX_REQUEST_BYTES:
            return 413, *self.error_body(413)
        doc = base.parse_json(body)
        if not isinstance(doc, list) or not 1 <= len(doc) <= MAX_BATCHES:
            return 400, self.error_body(
                400, f"The body must be a JSON array of 1 to {MAX_BATCHES} batches.")[0], {}
        self._nrecords = len(doc)
        for i, batch in enumerate(doc):
            why = batch_refusal(batch, settings["record_errors"])
            # Only a body over the batch limit can hold a batch over it: skip the cost otherwise.
            if why is None and len(body) > MAX_BATCH_BYTES and len(json.dumps(batch)) > MAX_BATCH_BYTES:
                why = "Batch too large."
            if why is not None:
                self.store(seq, [], len(doc))
                return 400, self.error_body(400, f"Batch {i}: {why}")[0], {}
        stored = [dict(b, _seq=seq, _at=arrived, _api_key=api_key) if settings["store"] else None
                  for b in doc]
        self.store(seq, stored, 0)
        return 202, None, {}


def main(argv=None):
    ap = base.common_arguments("Local stand-in for mParticle's POST /v2/bulkevents.")
    # --account/--passcode as for the CleverTap stand-in: the key plays the account id's part.
    ap.add_argument("--api-key", "--account", dest="api_key", action="append", required=True,
                    help="input feed key (repeat, paired in order with --api-secret)")
    ap.add_argument("--api-secret", "--passcode", dest="api_secret", action="append",
                    required=True, help="input feed secret (repeat, paired in order with --api-key)")
    args = ap.parse_args(argv)
    if len(args.api_key) != len(args.api_secret):
        ap.error("--api-key and --api-secret must be given the same number of times")
    state = base.State(zip(args.api_key, args.api_secret), DEFAULTS)
    return base.serve(ap, args, state, Handler)


if __name__ == "__main__":
    sys.exit(main())
