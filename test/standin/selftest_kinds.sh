#!/usr/bin/env bash
# Self-test for mparticle_standin.py and braze_standin.py: starts each on a free port, drives
# every behaviour with curl and checks the answers. Needs bash, curl and python3 (openssl
# for the TLS part). Ends with the line "N passed, M failed"; exits non-zero on any failure.
set -u

HERE=$(cd "$(dirname "$0")" && pwd)
TMP=$(mktemp -d)
PASSED=0
FAILED=0
SERVER_PIDS=()

cleanup() {
    local p
    for p in "${SERVER_PIDS[@]}"; do
        kill "$p" 2>/dev/null
    done
    rm -rf "$TMP"
}
trap cleanup EXIT

ok()  { PASSED=$((PASSED + 1)); echo "ok   - $1"; }
bad() { FAILED=$((FAILED + 1)); echo "FAIL - $1"; shift; local l; for l in "$@"; do echo "       $l"; done; }

# start_standin NAME SCRIPT ARGS...: start an instance, wait for its port file; sets PID, PORT, BASE.
start_standin() {
    local name=$1 script=$2; shift 2
    python3 "$HERE/$script" --port 0 --port-file "$TMP/$name.port" "$@" \
        >"$TMP/$name.out" 2>"$TMP/$name.err" &
    PID=$!
    SERVER_PIDS+=("$PID")
    local i
    for i in $(seq 1 100); do
        [ -s "$TMP/$name.port" ] && break
        sleep 0.1
    done
    PORT=$(cat "$TMP/$name.port" 2>/dev/null)
    BASE="http://127.0.0.1:$PORT"
}

# req METHOD PATH [curl args...]: sets CODE (000 if none), BODY, HEADERS, RC (curl exit).
req() {
    local method=$1 path=$2; shift 2
    rm -f "$TMP/body" "$TMP/headers"
    CODE=$(curl -sS -o "$TMP/body" -D "$TMP/headers" -w '%{http_code}' -X "$method" "$@" "$BASE$path" 2>"$TMP/curl.err")
    RC=$?
    BODY=$(cat "$TMP/body" 2>/dev/null)
    HEADERS=$(tr -d '\r' <"$TMP/headers" 2>/dev/null)
}

control() {
    req POST /_control --data-binary "$1"
    [ "$CODE" = 200 ] && [ "$BODY" = '{"ok":true}' ] || bad "control $1" "got $CODE $BODY"
}
reset_standin() { curl -s -X POST "$BASE/_reset" >/dev/null; }

# expect NAME CODE [SUBSTRING...]: check the last answer's status and body substrings.
expect() {
    local name=$1 want=$2; shift 2
    if [ "$CODE" != "$want" ]; then
        bad "$name" "want HTTP $want, got $CODE (curl rc $RC)" "body: ${BODY:0:400}"
        return
    fi
    local s
    for s in "$@"; do
        if [[ "$BODY" != *"$s"* ]]; then
            bad "$name" "body lacks: $s" "body: ${BODY:0:400}"
            return
        fi
    done
    ok "$name"
}
expect_eq() { if [ "$2" = "$3" ]; then ok "$1"; else bad "$1" "want '$3', got '$2'"; fi; }
expect_header() {   # NAME HEADER-LINE (exact, case-insensitive name)
    if grep -qix "$2" <<<"$HEADERS"; then ok "$1"; else bad "$1" "no header '$2'" "$HEADERS"; fi
}
stat() { curl -s "$BASE/_stats" | grep -o "\"$1\":[0-9]*" | head -n 1 | cut -d: -f2; }
count_records() { curl -s "$BASE/_records${1:-}" | grep -o '"_seq":' | wc -l | tr -d ' '; }

# faults NAME SEND GOOD_CODE GOOD_SUBSTRING: the switches every stand-in shares, driven
# through the function SEND (one valid API request, curl args appended).
faults() {
    local name=$1 send=$2 good=$3 goodsub=$4
    reset_standin
    req POST /_control -d '{"bogus":1}'
    expect "$name: unknown control key -> 400" 400 '"ok":false' 'unknown control key: bogus'
    req POST /_control -d '{"fail_next":-1}'
    expect "$name: negative fail_next -> 400" 400 '"ok":false'
    req POST /_control -d '{"fail_next":1,"bogus":2}'
    $send; expect "$name: a refused control body changes nothing" "$good" "$goodsub"

    control '{"fail_next":2}'
    $send; expect "$name: fail_next 1/2 -> 503" 503
    $send; expect "$name: fail_next 2/2 -> 503" 503
    $send; expect "$name: after fail_next" "$good" "$goodsub"
    expect_eq "$name: failed requests stored nothing" "$(count_records)" 2
    control '{"fail_next":1,"fail_status":500}'
    $send; expect "$name: fail_status 500" 500
    control '{"fail_next":1,"fail_status":429,"retry_after":7}'
    $send; expect "$name: fail_status 429" 429
    expect_header "$name: 429 sends Retry-After" "Retry-After: 7"
    control '{"status_all":429,"retry_after":null}'
    $send; expect "$name: status_all 429 (1)" 429
    if grep -qi '^Retry-After:' <<<"$HEADERS"; then bad "$name: retry_after null sends none"; else ok "$name: retry_after null sends none"; fi
    $send; expect "$name: status_all 429 (2)" 429
    control '{"status_all":null}'
    $send; expect "$name: status_all cleared" "$good" "$goodsub"

    control '{"garbage":1}'
    $send
    if [ "$BODY" = 'not json at all <<<' ]; then ok "$name: garbage -> non-JSON body ($CODE)"; else bad "$name: garbage" "$CODE $BODY"; fi
    $send; expect "$name: after garbage" "$good" "$goodsub"

    control '{"reset":1}'
    $send; expect_eq "$name: reset -> connection reset (curl exit 56)" "$RC" 56
    $send; expect "$name: after reset" "$good" "$goodsub"

    control '{"delay_ms":400}'
    local t0 t1; t0=$(date +%s%N); $send; t1=$(date +%s%N)
    if [ "$CODE" = "$good" ] && [ $(( (t1 - t0) / 1000000 )) -ge 400 ]; then ok "$name: delay_ms 400"; else bad "$name: delay_ms 400" "$CODE $(( (t1 - t0) / 1000000 )) ms"; fi
    control '{"delay_ms":0}'

    control '{"hang":true}'
    $send --max-time 1; expect_eq "$name: hang -> client times out (curl exit 28)" "$RC" 28
    expect_eq "$name: hung request still in flight" "$(stat in_flight)" 1
    control '{"hang":false}'
    sleep 0.3
    expect_eq "$name: nothing in flight after hang" "$(stat in_flight)" 0
    $send; expect "$name: after hang" "$good" "$goodsub"

    reset_standin
    control '{"store":false}'
    $send; expect "$name: store false: answered as ever" "$good" "$goodsub"
    expect_eq "$name: store false: counted, not kept" "$(count_records) $(( $(stat records_accepted) > 0 ))" "0 1"
    control '{"store":true}'

    control '{"max_concurrent":2,"delay_ms":800}'
    local i pids=()
    for i in 1 2 3 4; do ( $send; echo "$CODE" >"$TMP/mc.$i" ) & pids+=($!); done
    wait "${pids[@]}"
    expect_eq "$name: max_concurrent 2 -> 2 good" "$(cat "$TMP"/mc.* | grep -c "^$good\$")" 2
    expect_eq "$name: max_concurrent 2 -> 2 x 429" "$(cat "$TMP"/mc.* | grep -c '^429$')" 2
    rm -f "$TMP"/mc.*

    control '{"delay_ms":3000,"fail_next":5,"status_all":500}'
    req POST /_reset; expect "$name: _reset answers ok" 200 '{"ok":true}'
    t0=$(date +%s%N); $send; t1=$(date +%s%N)
    expect "$name: _reset clears fault switches" "$good" "$goodsub"
    if [ $(( (t1 - t0) / 1000000 )) -lt 1000 ]; then ok "$name: _reset clears delay"; else bad "$name: _reset clears delay"; fi
    reset_standin
    req GET /_records; expect "$name: _reset clears records" 200 '{"records":[]}'
    req GET /_stats; expect "$name: _reset clears stats" 200 '{"requests":0,"by_status":{},"records_accepted":0,"records_rejected":0,"max_concurrent_seen":0,"in_flight":0'
    req GET /nope; expect "$name: GET /nope -> 404" 404
}

# finish NAME PID SECRET...: log, secrets, shutdown.
finish() {
    local name=$1 pid=$2; shift 2
    if grep -q " 401 records=0 " "$TMP/$name.log"; then ok "$name: --log has one line per request"; else bad "$name: --log" "$(head -n 3 "$TMP/$name.log")"; fi
    local s leak=0
    for s in "$@"; do grep -qF "$s" "$TMP/$name.log" "$TMP/$name.out" "$TMP/$name.err" && leak=1; done
    expect_eq "$name: no secret in log/stdout/stderr" "$leak" 0
    expect_eq "$name: stdout is just the listening line" "$(wc -l <"$TMP/$name.out" | tr -d ' ')" 1
    kill -TERM "$pid"; wait "$pid"; local rc=$?
    expect_eq "$name: SIGTERM -> clean exit 0" "$rc" 0
    if [ -e "$TMP/$name.port" ]; then bad "$name: port file removed on exit"; else ok "$name: port file removed on exit"; fi
    expect_eq "$name: stderr empty (no tracebacks)" "$(cat "$TMP/$name.err")" ""
}

JSON_CT=(-H 'Content-Type: application/json')

# =======================================================================================
echo "# mParticle: startup"
MP_KEY=mp-key-1
MP_SECRET=mp-cs-secret-1
MP_KEY2=mp-key-2
MP_SECRET2=mp-cs-secret-2
start_standin mp mparticle_standin.py --api-key "$MP_KEY" --api-secret "$MP_SECRET" \
    --account "$MP_KEY2" --passcode "$MP_SECRET2" --log "$TMP/mp.log"
MP_PID=$PID
expect_eq "mparticle: stdout announces the port" "$(head -n 1 "$TMP/mp.out")" "listening on http://127.0.0.1:$PORT"

MP_AUTH=(-u "$MP_KEY:$MP_SECRET")
mp() { req POST /v2/bulkevents "${MP_AUTH[@]}" "${JSON_CT[@]}" --data-binary "$1" "${@:2}"; }
B1='{"environment":"production","user_identities":{"customer_id":"c1"},"user_attributes":{"Power Users":true}}'
B2='{"environment":"development","mpid":-8070450532247928832,"user_attributes":{"Power Users":false}}'
mp_one() { mp "[$B1]" "$@"; }

echo "# mParticle: authentication and headers"
req POST /v2/bulkevents "${JSON_CT[@]}" --data-binary "[$B1]"
expect "mparticle: no Authorization -> 401" 401 '"errors":[{'
req POST /v2/bulkevents -H 'Authorization: Basic !!!' "${JSON_CT[@]}" --data-binary "[$B1]"
expect "mparticle: unreadable Basic -> 401" 401
req POST /v2/bulkevents -H "Authorization: Bearer $MP_SECRET" "${JSON_CT[@]}" --data-binary "[$B1]"
expect "mparticle: Bearer instead of Basic -> 401" 401
req POST /v2/bulkevents -u "$MP_KEY:wrong" "${JSON_CT[@]}" --data-binary "[$B1]"
expect "mparticle: wrong secret -> 403" 403 '"errors":[{'
req POST /v2/bulkevents -u "$MP_KEY:$MP_SECRET2" "${JSON_CT[@]}" --data-binary "[$B1]"
expect "mparticle: secret of another key -> 403" 403
req POST /v2/bulkevents "${MP_AUTH[@]}" -H 'Content-Type: text/plain' --data-binary "[$B1]"
expect "mparticle: text/plain -> 400" 400

echo "# mParticle: connection test (authenticated empty array)"
mp '[]'; expect "mparticle: [] with good credentials -> 400" 400 '"code":"BAD_REQUEST"'
req POST /v2/bulkevents -u "$MP_KEY:wrong" "${JSON_CT[@]}" --data-binary '[]'
expect "mparticle: [] with bad credentials -> 403" 403

echo "# mParticle: bodies"
mp "[$B1,$B2]"
if [ "$CODE" = 202 ] && [ -z "$BODY" ]; then ok "mparticle: two batches -> 202, empty body"; else bad "mparticle: two batches" "$CODE $BODY"; fi
req POST /v2/bulkevents -u "$MP_KEY2:$MP_SECRET2" "${JSON_CT[@]}" --data-binary "[$B1]"
expect "mparticle: second key accepted" 202
for b in 'not json' '{}' '{"environment":"production"}' "$B1" '[NaN]' '' "[$B1,1]" \
         '[{"user_identities":{"customer_id":"c"}}]' \
         '[{"environment":"staging","user_identities":{"customer_id":"c"}}]' \
         '[{"environment":"production"}]' \
         '[{"environment":"production","user_identities":{}}]' \
         '[{"environment":"production","user_identities":{"customer_id":7}}]' \
         '[{"environment":"production","mpid":"123"}]' \
         '[{"environment":"production","mpid":1.0}]' \
         '[{"environment":"production","mpid":1e3}]' \
         '[{"environment":"production","mpid":9223372036854775808}]' \
         '[{"environment":"production","mpid":-9223372036854775809}]' \
         '[{"environment":"production","mpid":1,"user_attributes":[]}]' \
         '[{"environment":"production","mpid":1,"user_attributes":{"a":{"b":1}}}]' \
         '[{"environment":"production","mpid":1,"user_identity":{"customer_id":"c"}}]' \
         '[{"environment":"production","user_identities":{"customerid":"c"}}]'; do
    mp "$b"; expect "mparticle: refused whole: ${b:0:70}" 400 '"code":"BAD_REQUEST"'
done
mp '[{"environment":"production","mpid":9223372036854775807},{"environment":"production","mpid":-9223372036854775808}]'
expect "mparticle: mpid at both ends of int64" 202
mp '[{"environment":"production","user_identities":{"customer_id":"c","email":"c@example.com","mobile_number":"+4915112345678"},"user_attributes":{"s":"x","b":true,"n":1.5,"z":null,"l":["a","b"]},"events":[]}]'
expect "mparticle: every user_attributes value kind, more identities" 202
batches=""; for ((i = 1; i <= 101; i++)); do batches+="{\"environment\":\"production\",\"user_identities\":{\"customer_id\":\"c$i\"}},"; done
mp "[${batches%,}]"; expect "mparticle: 101 batches -> 400" 400
batches=""; for ((i = 1; i <= 100; i++)); do batches+="{\"environment\":\"production\",\"user_identities\":{\"customer_id\":\"c$i\"}},"; done
mp "[${batches%,}]"; expect "mparticle: 100 batches -> 202" 202
# Bodies this big go through a file: one command-line argument is limited to 128 KB.
python3 -c 'import json; print(json.dumps([{"environment": "production", "mpid": 1, "user_attributes": {"a": "x" * (130 << 10)}}]))' >"$TMP/big.json"
mp "@$TMP/big.json"
expect "mparticle: batch over 128 KB -> 400" 400
python3 -c 'import json; print(json.dumps([{"environment": "production", "mpid": i, "user_attributes": {"a": "x" * (100 << 10)}} for i in (1, 2, 3)]))' >"$TMP/big.json"
mp "@$TMP/big.json"
expect "mparticle: request over 256 KB -> 413" 413

echo "# mParticle: inspection"
reset_standin
mp "[$B1,$B2]"; mp "[$B1]"
req GET /_records
expect "mparticle: records in order, mpid exact" 200 \
    '{"records":[{"environment":"production","user_identities":{"customer_id":"c1"},"user_attributes":{"Power Users":true},"_seq":' \
    '"mpid":-8070450532247928832,' "\"_api_key\":\"$MP_KEY\""
seqs=$(grep -o '"_seq":[0-9]*' <<<"$BODY" | cut -d: -f2 | tr '\n' ' ')
read -r s1 s2 s3 <<<"$seqs"
if [ "$s1" = "$s2" ] && [ "$s3" -gt "$s2" ]; then ok "mparticle: _seq per request ($seqs)"; else bad "mparticle: _seq per request" "$seqs"; fi
expect_eq "mparticle: records filtered by api_key" "$(count_records "?api_key=$MP_KEY2")" 0
req GET /_stats
expect "mparticle: stats" 200 '{"requests":2,"by_status":{"202":2},"records_accepted":3,"records_rejected":0'

echo "# mParticle: record_errors and credentials"
reset_standin
control '{"record_errors":{"c9":"Refused on purpose.","-5":"Refused mpid."}}'
mp "[$B1,{\"environment\":\"production\",\"user_identities\":{\"customer_id\":\"c9\"}}]"
expect "mparticle: record_errors by customer_id refuse the whole request" 400 'Batch 1: Refused on purpose.'
mp '[{"environment":"production","mpid":-5}]'
expect "mparticle: record_errors by mpid" 400 'Refused mpid.'
expect_eq "mparticle: nothing of a refused request stored" "$(count_records)" 0
control '{"record_errors":null}'
mp "[$B1]"; expect "mparticle: record_errors cleared" 202
control "{\"accounts\":[[\"$MP_KEY\",\"new-cs-secret\"]]}"
mp "[$B1]"; expect "mparticle: old secret after replacement -> 403" 403
req POST /v2/bulkevents -u "$MP_KEY:new-cs-secret" "${JSON_CT[@]}" --data-binary "[$B1]"
expect "mparticle: new secret accepted" 202
reset_standin
req POST /v2/bulkevents -u "$MP_KEY:new-cs-secret" "${JSON_CT[@]}" --data-binary "[$B1]"
expect "mparticle: credentials survive _reset" 202
control "{\"accounts\":[[\"$MP_KEY\",\"$MP_SECRET\"],[\"$MP_KEY2\",\"$MP_SECRET2\"]]}"

echo "# mParticle: keep-alive"
out=$(curl -s -o /dev/null -w '%{http_code} %{num_connects}\n' -X POST -u "$MP_KEY:bad" "${JSON_CT[@]}" --data-binary "[$B1]" "$BASE/v2/bulkevents" \
    --next -s -o /dev/null -w '%{http_code} %{num_connects}\n' "${MP_AUTH[@]}" "${JSON_CT[@]}" --data-binary "[$B1]" "$BASE/v2/bulkevents" \
    --next -s -o /dev/null -w '%{http_code} %{num_connects}\n' "$BASE/_stats" | tr '\n' ' ')
expect_eq "mparticle: one connection reused across 403, 202 and GET" "$out" "403 1 202 0 200 0 "

echo "# mParticle: fault switches"
faults mparticle mp_one 202 ''
mp_one; control '{"fail_next":1,"fail_status":429}'; mp_one
expect_header "mparticle: 429 names the limit" "X-MP-Rate-Limit-Exceeded: feed"
finish mp "$MP_PID" "$MP_SECRET" "$MP_SECRET2" new-cs-secret

# =======================================================================================
echo "# Braze: startup"
BZ_KEY=bz-cs-secret-1
BZ_KEY2=bz-cs-secret-2
# --account/--passcode as CsDelivery.pm passes them to the CleverTap stand-in.
start_standin bz braze_standin.py --api-key "$BZ_KEY" --account ignored --passcode "$BZ_KEY2" --log "$TMP/bz.log"
BZ_LABEL=key-$(printf %s "$BZ_KEY" | md5sum | cut -c1-12)
BZ_PID=$PID
expect_eq "braze: stdout announces the port" "$(head -n 1 "$TMP/bz.out")" "listening on http://127.0.0.1:$PORT"

bz() { req POST /users/track -H "Authorization: Bearer $BZ_KEY" "${JSON_CT[@]}" --data-binary "$1" "${@:2}"; }
A1='{"external_id":"u1","Mixpanel Cohorts":{"add":["Power Users"]},"email":"u1@example.com"}'
A2='{"external_id":"u2","Mixpanel Cohorts":{"add":["Power Users","Churn Risk"]}}'
E1='{"external_id":"u1","name":"Mixpanel Cohort Added","time":"2026-11-30T12:00:00Z","properties":{"cohort":"Power Users"}}'
bz_one() { bz "{\"attributes\":[$A1]}" "$@"; }
NO_DATA="Valid data must be provided in the 'attributes', 'events', or 'purchases' fields."

echo "# Braze: authentication and headers"
req POST /users/track "${JSON_CT[@]}" --data-binary "{\"attributes\":[$A1]}"
expect "braze: no Authorization -> 401" 401 '{"message":"Invalid API key"}'
req POST /users/track -H "Authorization: Bearer nope" "${JSON_CT[@]}" --data-binary "{\"attributes\":[$A1]}"
expect "braze: unknown key -> 401" 401 '{"message":"Invalid API key"}'
req POST /users/track -H "Authorization: $BZ_KEY" "${JSON_CT[@]}" --data-binary "{\"attributes\":[$A1]}"
expect "braze: key without Bearer -> 401" 401
req POST /users/track -H "Authorization: Bearer $BZ_KEY" -H 'Content-Type: text/plain' --data-binary "{\"attributes\":[$A1]}"
expect "braze: text/plain -> 400" 400
control "{\"key_status\":{\"$BZ_KEY2\":403}}"
req POST /users/track -H "Authorization: Bearer $BZ_KEY2" "${JSON_CT[@]}" --data-binary "{\"attributes\":[$A1]}"
expect "braze: key_status 403" 403 '"message":'
control "{\"key_status\":{\"$BZ_KEY2\":404}}"
req POST /users/track -H "Authorization: Bearer $BZ_KEY2" "${JSON_CT[@]}" --data-binary "{\"attributes\":[$A1]}"
expect "braze: key_status 404" 404
bz "{\"attributes\":[$A1]}"; expect "braze: other key unaffected by key_status" 201
control '{"key_status":null}'
req POST /users/track -H "Authorization: Bearer $BZ_KEY2" "${JSON_CT[@]}" --data-binary "{\"attributes\":[$A1]}"
expect "braze: key_status cleared" 201

echo "# Braze: connection test (authenticated empty object)"
reset_standin
bz '{}'; expect "braze: {} with a good key -> 400" 400 "{\"message\":\"$NO_DATA\"}"
req POST /users/track -H "Authorization: Bearer nope" "${JSON_CT[@]}" --data-binary '{}'
expect "braze: {} with a bad key -> 401" 401
expect_eq "braze: the connection test stored nothing" "$(count_records)" 0

echo "# Braze: bodies"
bz "{\"attributes\":[$A1,$A2],\"events\":[$E1]}"
expect "braze: attributes + events -> 201" 201 '{"message":"success","attributes_processed":2,"events_processed":1}'
for b in 'not json' '[]' '{"attributes":[]}' '{"attributes":{}}' '{"events":"x"}' '' '{"attributes":[NaN]}'; do
    bz "$b"; expect "braze: refused whole: $b" 400 '"message":'
done
objs=""; for ((i = 1; i <= 76; i++)); do objs+="{\"external_id\":\"x$i\",\"a\":$i},"; done
bz "{\"attributes\":[${objs%,}]}"; expect "braze: 76 attributes -> 400" 400 'Max Input Length Exceeded'
objs=""; for ((i = 1; i <= 75; i++)); do objs+="{\"external_id\":\"x$i\",\"a\":$i},"; done
bz "{\"attributes\":[${objs%,}]}"; expect "braze: 75 attributes -> 201" 201 '"attributes_processed":75'
bz "{\"attributes\":[${objs%,}],\"events\":[$E1]}"; expect "braze: 75 attributes + 1 event -> 400" 400 'Max Input Length Exceeded'

echo "# Braze: per-object refusals"
bz "{\"attributes\":[$A1,{\"external_id\":\"u3\",\"email\":\"string\"},$A2]}"
expect "braze: bad email -> partial 201, index 1" 201 "{\"message\":\"success\",\"attributes_processed\":2,\"errors\":[{\"type\":\"The value provided for the 'email' field is not a valid email.\",\"input_array\":\"attributes\",\"index\":1}]}"
bz '{"attributes":[{"external_id":"u3","email":"1234"}]}'
expect "braze: all refused -> 400 with errors" 400 "{\"message\":\"$NO_DATA\",\"errors\":[{\"type\":\"The value provided for the 'email' field is not a valid email.\",\"input_array\":\"attributes\",\"index\":0}]}"
bz '{"attributes":[{"a":1}]}'
expect "braze: no identifier" 400 "\"type\":\"'external_id' or 'braze_id' or 'user_alias' is required\",\"input_array\":\"attributes\",\"index\":0"
bz '{"attributes":[{"external_id":"u","braze_id":"b","a":1}]}'
expect "braze: two identifiers" 400 '"input_array":"attributes","index":0'
bz '{"attributes":[{"email":"only@example.com","a":1},{"phone":"+4915112345678","a":1},{"user_alias":{"alias_name":"n","alias_label":"l"}},{"braze_id":"b"}]}'
expect "braze: email, phone, user_alias, braze_id as the identifier" 201 '"attributes_processed":4}'
bz "{\"attributes\":[$A1],\"events\":[{\"external_id\":\"u1\",\"time\":\"2026-11-30T12:00:00Z\"},$E1,{\"external_id\":\"u1\",\"name\":\"E\"}]}"
expect "braze: events need name and time" 201 '"attributes_processed":1,"events_processed":1,"errors":[{"type":"'"'"'name'"'"' is required","input_array":"events","index":0},{"type":"'"'"'time'"'"' is required","input_array":"events","index":2}]'

echo "# Braze: record_errors"
control '{"record_errors":{"u2":"Refused on purpose."}}'
bz "{\"attributes\":[$A1,$A2],\"events\":[{\"external_id\":\"u2\",\"name\":\"E\",\"time\":\"2026-11-30T12:00:00Z\"}]}"
expect "braze: record_errors by external_id" 201 '"attributes_processed":1,"events_processed":0,"errors":[{"type":"Refused on purpose.","input_array":"attributes","index":1},{"type":"Refused on purpose.","input_array":"events","index":0}]'
control '{"record_errors":null}'
bz "{\"attributes\":[$A2]}"; expect "braze: record_errors cleared" 201 '"attributes_processed":1}'

echo "# Braze: cohort sets per user and inspection"
reset_standin
bz "{\"attributes\":[$A1,$A2]}"
bz '{"attributes":[{"external_id":"u2","Mixpanel Cohorts":{"remove":["Power Users"]}},{"external_id":"u1","Mixpanel Cohorts":{"add":["Power Users"]}}]}'
bz '{"attributes":[{"external_id":"u3","Mixpanel Cohorts":{"remove":["Nope"]}}]}'
req GET /_users
expect "braze: /_users holds the resulting sets" 200 '{"users":{"u1":{"Mixpanel Cohorts":["Power Users"],"email":"u1@example.com"},"u2":{"Mixpanel Cohorts":["Churn Risk"]},"u3":{"Mixpanel Cohorts":[]}}}'
req GET '/_users?external_id=u2'
expect "braze: /_users?external_id=" 200 '{"users":{"u2":{"Mixpanel Cohorts":["Churn Risk"]}}}'
req GET /_records
expect "braze: records in arrival order with _seq/_at/_key/_array/_index" 200 \
    "{\"records\":[{\"external_id\":\"u1\",\"Mixpanel Cohorts\":{\"add\":[\"Power Users\"]},\"email\":\"u1@example.com\",\"_seq\":" \
    "\"_key\":\"$BZ_LABEL\",\"_array\":\"attributes\",\"_index\":0}"
expect_eq "braze: records filtered by key" "$(count_records "?key=$BZ_KEY2") $(count_records "?key=$BZ_KEY") $(count_records "?key=$BZ_LABEL")" "0 5 5"
if curl -s "$BASE/_records" "$BASE/_stats" | grep -qF -e "$BZ_KEY" -e "$BZ_KEY2"; then bad "braze: no key in /_records or /_stats"; else ok "braze: no key in /_records or /_stats"; fi
req GET /_stats
expect "braze: stats" 200 '{"requests":3,"by_status":{"201":3},"records_accepted":5,"records_rejected":0'
reset_standin
req GET /_users; expect "braze: _reset clears users" 200 '{"users":{}}'

echo "# Braze: api_keys replacement"
control "{\"api_keys\":[\"new-cs-secret\"]}"
bz_one; expect "braze: old key after replacement -> 401" 401
req POST /users/track -H "Authorization: Bearer new-cs-secret" "${JSON_CT[@]}" --data-binary "{\"attributes\":[$A1]}"
expect "braze: new key accepted" 201
control "{\"api_keys\":[\"$BZ_KEY\",\"$BZ_KEY2\"]}"

echo "# Braze: keep-alive"
out=$(curl -s -o /dev/null -w '%{http_code} %{num_connects}\n' -X POST -H "Authorization: Bearer bad" "${JSON_CT[@]}" --data-binary '{}' "$BASE/users/track" \
    --next -s -o /dev/null -w '%{http_code} %{num_connects}\n' -H "Authorization: Bearer $BZ_KEY" "${JSON_CT[@]}" --data-binary "{\"attributes\":[$A1]}" "$BASE/users/track" \
    --next -s -o /dev/null -w '%{http_code} %{num_connects}\n' "$BASE/_stats" | tr '\n' ' ')
expect_eq "braze: one connection reused across 401, 201 and GET" "$out" "401 1 201 0 200 0 "

echo "# Braze: fault switches"
faults braze bz_one 201 '"attributes_processed":1'
control '{"fail_next":1,"fail_status":429,"retry_after":3}'
bz_one; expect "braze: 429 body" 429 '"message":'
expect_header "braze: 429 X-RateLimit-Limit" "X-RateLimit-Limit: 3000"
expect_header "braze: 429 X-RateLimit-Remaining" "X-RateLimit-Remaining: 0"
if grep -qiE '^X-RateLimit-Reset: [0-9]{10}$' <<<"$HEADERS"; then ok "braze: 429 X-RateLimit-Reset (epoch seconds)"; else bad "braze: X-RateLimit-Reset" "$HEADERS"; fi

echo "# TLS"
if command -v openssl >/dev/null; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 \
        -keyout "$TMP/key.pem" -out "$TMP/cert.pem" >/dev/null 2>&1
    BZ_BASE=$BASE
    start_standin tls braze_standin.py --api-key "$BZ_KEY" --tls-cert "$TMP/cert.pem" --tls-key "$TMP/key.pem"
    TLS_PID=$PID
    expect_eq "braze: TLS stdout line" "$(head -n 1 "$TMP/tls.out")" "listening on https://127.0.0.1:$PORT"
    BASE="https://127.0.0.1:$PORT"
    bz_one -k; expect "braze: over https" 201
    kill -INT "$TLS_PID"; wait "$TLS_PID"; expect_eq "braze: SIGINT -> exit 0" "$?" 0
    start_standin tlsmp mparticle_standin.py --api-key "$MP_KEY" --api-secret "$MP_SECRET" --tls-cert "$TMP/cert.pem" --tls-key "$TMP/key.pem"
    TLS_PID=$PID
    BASE="https://127.0.0.1:$PORT"
    mp_one -k; expect "mparticle: over https" 202
    kill -INT "$TLS_PID"; wait "$TLS_PID"; expect_eq "mparticle: SIGINT -> exit 0" "$?" 0
    BASE=$BZ_BASE
else
    echo "# (openssl not found: TLS part skipped)"
fi

finish bz "$BZ_PID" "$BZ_KEY" "$BZ_KEY2" new-cs-secret

echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
