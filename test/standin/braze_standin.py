#!/usr/bin/env python3
"""Local stand-in for Braze's REST POST /users/track, for tests and benchmarks.

Behaviour follows docs/destination-apis.md (Braze section): Bearer authentication,
`{"attributes": [...], "events": [...], "purchases": [...]}` bodies of at most 75 objects,
per-object refusals named by input_array and index, 201 for success and partial success,
400 when nothing was usable. Nested array attributes (`{"add": [...], "remove": [...]}`)
are applied per external_id and shown by GET /_users.

Standard library only; listens on 127.0.0.1 only. See README.md next to this file.
"""

import argparse
import hashlib
import re
import sys
import time

import standin_base as base

API_PATH = "/users/track"
MAX_OBJECTS = 75              # per request, attributes + events + purchases together
ARRAYS = ("attributes", "events", "purchases")
IDENTIFIERS = ("external_id", "braze_id", "user_alias", "email", "phone")
EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")

# Texts Braze sends (see docs/destination-apis.md for which are recorded and which assumed).
NO_DATA = "Valid data must be provided in the 'attributes', 'events', or 'purchases' fields."
NEED_ID = "'external_id' or 'braze_id' or 'user_alias' is required"
TWO_IDS = "Only one of 'external_id', 'braze_id' or 'user_alias' may be given"
BAD_EMAIL = "The value provided for the 'email' field is not a valid email."
MESSAGES = {
    400: "Bad Request",
    401: "Invalid API key",
    403: "Access denied",
    404: "Not found",
    429: "API rate limit exceeded",
    500: "Internal server error",
    503: "Service unavailable",
}
RATE_LIMIT = 3000             # X-RateLimit-Limit sent with a 429 (the documented default)

DEFAULTS = dict(base.COMMON_SETTINGS, key_status={})


def key_label(key):
    """What /_records and /_stats show for a key: the key is the secret, never shown."""
    return "key-" + hashlib.md5(key.encode()).hexdigest()[:12]


def refusal(obj, record_errors):
    """None if the object is usable, else the error type Braze gives it."""
    if not isinstance(obj, dict):
        return NEED_ID
    ext = obj.get("external_id")
    if record_errors and isinstance(ext, str) and ext in record_errors:
        return record_errors[ext]
    # external_id, braze_id and user_alias name the user; email or phone do so only when
    # none of those is given, and are otherwise plain profile fields.
    present = [k for k in IDENTIFIERS[:3] if obj.get(k) not in (None, "")]
    if len(present) > 1:
        return TWO_IDS
    if not present and all(obj.get(k) in (None, "") for k in IDENTIFIERS[3:]):
        return NEED_ID
    if "email" in obj and obj["email"] is not None and not (
            isinstance(obj["email"], str) and EMAIL_RE.fullmatch(obj["email"])):
        return BAD_EMAIL
    return None


def event_refusal(obj):
    if not isinstance(obj.get("name"), str) or not obj["name"]:
        return "'name' is required"
    if not isinstance(obj.get("time"), str) or not obj["time"]:
        return "'time' is required"
    return None


class State(base.State):
    def reset_data(self):
        super().reset_data()
        self.users = {}   # external_id -> {attribute: value}; nested arrays kept as lists

    def apply_attributes(self, obj):
        ext = obj.get("external_id")
        if not isinstance(ext, str):
            return
        user = self.users.setdefault(ext, {})
        for key, value in obj.items():
            if key in IDENTIFIERS[:3] or key.startswith("_"):
                continue
            if isinstance(value, dict) and set(value) <= {"add", "remove"} and value:
                current = user.get(key) if isinstance(user.get(key), list) else []
                for v in value.get("add") or []:
                    if v not in current:
                        current.append(v)
                for v in value.get("remove") or []:
                    if v in current:
                        current.remove(v)
                user[key] = current
            else:
                user[key] = value


class Handler(base.BaseHandler):
    server_version = "braze-standin/1"
    API_PATH = API_PATH
    GARBAGE_STATUS = 201
    RECORDS_FILTER = "_key"

    def error_body(self, status):
        headers = {}
        if status == 429:
            reset = int(time.time()) + 1 + (self.server.state.settings["retry_after"] or 0)
            headers = {"X-RateLimit-Limit": str(RATE_LIMIT), "X-RateLimit-Remaining": "0",
                       "X-RateLimit-Reset": str(reset)}
        return {"message": MESSAGES.get(status, "Internal server error")}, headers

    def authenticate(self):
        auth = self.headers.get("Authorization", "")
        key = auth[7:] if auth.startswith("Bearer ") else None
        st = self.server.state
        with st.lock:
            known = key in st.credentials
            unusable = st.settings["key_status"].get(key) if known else None
        if not known:
            return None, 401, self.error_body(401)[0]
        if unusable:
            return None, unusable, self.error_body(unusable)[0]
        return key_label(key), None, None

    def parse_control_key(self, key, value, new, creds):
        if key == "key_status":
            value = {} if value is None else value
            if not isinstance(value, dict) or not all(v in (403, 404) for v in value.values()):
                raise ValueError("key_status must be an object of api key -> 403 or 404")
            new[key] = dict(value)
            return True, creds
        if key == "api_keys":
            if not isinstance(value, list) or not all(isinstance(k, str) for k in value):
                raise ValueError("api_keys must be a list of strings")
            return True, set(value)
        return False, creds

    def _records(self, query):
        # ?key= takes the key itself or its label.
        if "key" in query:
            query = dict(query, key=[k if k.startswith("key-") else key_label(k)
                                     for k in query["key"]])
        super()._records(query)

    def process(self, body, key, seq, arrived, settings):
        doc = base.parse_json(body)
        if not isinstance(doc, dict):
            return 400, {"message": MESSAGES[400]}, {}
        arrays = {}
        for name in ARRAYS:
            if name in doc:
                if not isinstance(doc[name], list):
                    return 400, {"message": NO_DATA}, {}
                arrays[name] = doc[name]
        total = sum(len(a) for a in arrays.values())
        if total == 0:
            return 400, {"message": NO_DATA}, {}
        if total > MAX_OBJECTS:
            return 400, {"message": f"Max Input Length Exceeded: at most {MAX_OBJECTS} "
                                    "objects per request"}, {}
        self._nrecords = total

        errors, accepted, processed = [], [], {}
        for name, objs in arrays.items():
            processed[name] = 0
            for i, obj in enumerate(objs):
                why = refusal(obj, settings["record_errors"])
                if why is None and name == "events":
                    why = event_refusal(obj)
                if why is not None:
                    errors.append({"type": why, "input_array": name, "index": i})
                    continue
                processed[name] += 1
                accepted.append((name, i, obj))

        st = self.server.state
        if settings["store"]:
            with st.lock:
                for name, i, obj in accepted:
                    if name == "attributes":
                        st.apply_attributes(obj)
        stored = [dict(obj, _seq=seq, _at=arrived, _key=key, _array=name, _index=i)
                  if settings["store"] else None for name, i, obj in accepted]
        self.store(seq, stored, len(errors))

        if not accepted:
            return 400, {"message": NO_DATA, "errors": errors}, {}
        answer = {"message": "success"}
        for name in arrays:
            answer[f"{name}_processed"] = processed[name]
        if errors:
            answer["errors"] = errors
        return 201, answer, {}

    def extra_routes(self, route, query):
        if route != ("GET", "/_users"):
            return False
        st = self.server.state
        with st.lock:
            users = {k: {a: (list(v) if isinstance(v, list) else v) for a, v in u.items()}
                     for k, u in st.users.items()}
        wanted = query.get("external_id")
        if wanted:
            users = {k: u for k, u in users.items() if k in wanted}
        self.send(200, {"users": users})
        return True


def main(argv=None):
    ap = base.common_arguments("Local stand-in for Braze's POST /users/track.")
    # --passcode as for the CleverTap stand-in (the key is the destination's secret);
    # --account is accepted and ignored: Braze has no account id.
    ap.add_argument("--api-key", "--passcode", dest="api_key", action="append", required=True,
                    help="a REST API key that is accepted (repeat for more)")
    ap.add_argument("--account", action="append", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    return base.serve(ap, args, State(args.api_key, DEFAULTS), Handler)


if __name__ == "__main__":
    sys.exit(main())
