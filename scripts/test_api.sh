#!/usr/bin/env bash
# API tests over HTTP with curl and jq, against any running payment service.
#
#   BASE_URL=http://localhost:8000 API_KEY=... MERCHANT_ID=... scripts/test_api.sh
#   CREATE_MERCHANT=1 DATABASE_URL=... scripts/test_api.sh   (creates its own merchants)
#
# Environment:
#   BASE_URL            service root (default http://localhost:8000)
#   API_KEY, MERCHANT_ID  the merchant to test with (accepting USD, EUR and JPY); required
#                       unless CREATE_MERCHANT=1
#   CREATE_MERCHANT=1   create a fresh merchant (unique id, random key) with the admin CLI
#   ADMIN_TESTS=1       also run the checks that need the admin CLI (a second merchant for
#                       isolation and currency checks, a disabled merchant); implied by
#                       CREATE_MERCHANT=1. The CLI must reach the service's database.
#   PAYMENTS_ADMIN      the admin command (default "uv run --frozen payments-admin"), e.g.
#                       "docker compose exec -T app payments-admin"
#   UNSUPPORTED_CURRENCY  a known ISO 4217 code MERCHANT_ID does not accept (default CHF)
#   PERF_REQUESTS=200 PERF_CONCURRENCY=20   the performance run
#   BANK_TIMEOUT_TEST=1 also send the 10-second bank-timeout card (4000000000000903)
#
# Prints one PASS/FAIL line per check (card numbers only as their last four digits), then
# exactly "N passed, M failed"; exits 1 when anything failed, 2 on a usage error.
set -uo pipefail

BASE_URL=${BASE_URL:-http://localhost:8000}
BASE_URL=${BASE_URL%/}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PERF_REQUESTS=${PERF_REQUESTS:-200}
PERF_CONCURRENCY=${PERF_CONCURRENCY:-20}
UNSUPPORTED_CURRENCY=${UNSUPPORTED_CURRENCY:-CHF}
CURL_MAX_TIME=${CURL_MAX_TIME:-30}
API=/api/v1/payments

if [[ -t 1 && -z ${NO_COLOR:-} ]]; then
    GREEN=$'\e[32m' RED=$'\e[31m' YELLOW=$'\e[33m' BOLD=$'\e[1m' RESET=$'\e[0m'
else
    GREEN="" RED="" YELLOW="" BOLD="" RESET=""
fi

die() {
    printf 'test_api: %s\n' "$*" >&2
    exit 2
}

for tool in curl jq; do
    command -v "$tool" >/dev/null 2>&1 ||
        die "$tool is required (Debian/Ubuntu: apt-get install -y $tool; macOS: brew install $tool)"
done

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
BODY=$TMP/body HEADERS=$TMP/headers REQUEST=$TMP/request
STATUS=000

PASSED=0 FAILED=0 SKIPPED=0
section() { printf '\n%s== %s ==%s\n' "$BOLD" "$1" "$RESET"; }
pass() {
    PASSED=$((PASSED + 1))
    printf '%sPASS%s %s\n' "$GREEN" "$RESET" "$1"
}
fail() {
    FAILED=$((FAILED + 1))
    printf '%sFAIL%s %s\n     %s\n' "$RED" "$RESET" "$1" "$2"
}
skip() {
    SKIPPED=$((SKIPPED + 1))
    printf '%sSKIP%s %s (%s)\n' "$YELLOW" "$RESET" "$1" "$2"
}

last4() { printf '…%s' "${1: -4}"; }

# The last response body, shortened, with anything that looks like a card number masked.
excerpt() { head -c 400 "$BODY" 2>/dev/null | tr '\n' ' ' | sed -E 's/[0-9]{12,19}/<digits>/g'; }

# Value of a response header of the last request (case-insensitive name).
header() { tr -d '\r' <"$HEADERS" | awk -v h="$1" 'BEGIN { h = tolower(h) } { split($0, kv, ":"); if (tolower(kv[1]) == h) { sub(/^[^:]*:[ \t]*/, ""); v = $0 } } END { print v }'; }

# jq over the last response body; true when the filter yields true.
body_has() { jq -e "$1" "$BODY" >/dev/null 2>&1; }
field() { jq -r "$1 // empty" "$BODY" 2>/dev/null; }

# Header files keep the API keys off curl's command line (and so out of `ps`).
auth_file() {
    local file=$TMP/auth.$2
    printf 'Authorization: %s\n' "$1" >"$file"
    echo "$file"
}

# req [-a AUTH_HEADER_FILE | -n] [-H HEADER]... METHOD PATH [BODY_FILE]
# Sends one request; sets STATUS and leaves the body in $BODY, the headers in $HEADERS.
req() {
    local auth=$MAIN_AUTH args=()
    while (($#)); do
        case $1 in
        -a) auth=$2 && shift 2 ;;
        -n) auth="" && shift ;;
        -H) args+=(-H "$2") && shift 2 ;;
        *) break ;;
        esac
    done
    local method=$1 path=$2 data=${3:-}
    [[ -n $auth ]] && args+=(-H "@$auth")
    [[ -n $data ]] && args+=(-H 'Content-Type: application/json' --data-binary "@$data")
    : >"$BODY"
    : >"$HEADERS"
    STATUS=$(curl -sS --max-time "$CURL_MAX_TIME" -o "$BODY" -D "$HEADERS" -w '%{http_code}' \
        -X "$method" "${args[@]}" "$BASE_URL$path" 2>"$TMP/curl.err") || STATUS=000
}

# expect NAME STATUS [JQ_FILTER]: the last response has STATUS and satisfies the filter.
expect() {
    local name=$1 want=$2 filter=${3:-}
    if [[ $STATUS != "$want" ]]; then
        if [[ $STATUS == 000 ]]; then
            fail "$name" "no response: $(head -c 200 "$TMP/curl.err")"
        else
            fail "$name" "HTTP $STATUS, expected $want: $(excerpt)"
        fi
        return 1
    fi
    if [[ -n $filter ]] && ! body_has "$filter"; then
        fail "$name" "body does not satisfy [$filter]: $(excerpt)"
        return 1
    fi
    pass "$name"
}

# expect_problem NAME STATUS CODE [JQ_FILTER]: an RFC 9457 problem with that code.
expect_problem() {
    local name=$1 want=$2 code=$3 extra=${4:-true}
    expect "$name" "$want" ".code == \"$code\" and .status == $want and (.correlation_id | type) == \"string\" and ($extra)" || return 1
    local type
    type=$(header Content-Type)
    [[ $type == application/problem+json* ]] ||
        fail "$name: content type" "Content-Type is '$type', expected application/problem+json"
}

# check NAME COMMAND...: a free-form assertion.
check() {
    local name=$1
    shift
    if "$@"; then pass "$name"; else fail "$name" "${WHY:-assertion failed}"; fi
    WHY=""
}

YEAR=$(date +%Y)
EXP_YEAR=$((YEAR + 3))
RUN_ID="$(date +%s)r$$" # letters and digits: valid in ids, keys and correlation ids

# payment_body CARD AMOUNT CURRENCY [CVV] [EXP_MONTH] [EXP_YEAR] [MERCHANT]: a request body.
# AMOUNT is JSON text: 12.5 is a number, '"12.50"' a decimal string.
payment_body() {
    jq -n --arg m "${7:-$MERCHANT_ID}" --arg card "$1" --argjson amount "$2" --arg cur "$3" \
        --arg cvv "${4:-123}" --argjson month "${5:-12}" --argjson year "${6:-$EXP_YEAR}" \
        --arg run "$RUN_ID" '{
            merchant_id: $m, amount: $amount, currency: $cur, payment_method: "credit_card",
            card_data: {card_number: $card, expiry_month: $month, expiry_year: $year,
                        cvv: $cvv, cardholder_name: "API Test"},
            description: "scripts/test_api.sh", metadata: {run: $run}}'
}

# pay CARD AMOUNT CURRENCY [CVV] [req options...]: POST a payment; TXN = its transaction id.
pay() {
    local card=$1 amount=$2 currency=$3 cvv=${4:-123}
    shift 4 2>/dev/null || shift $#
    payment_body "$card" "$amount" "$currency" "$cvv" >"$REQUEST"
    req "$@" POST "$API/process" "$REQUEST"
    TXN=$(field .transaction_id)
}

random_key() { printf 'sk_test_%s' "$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"; }

read -ra ADMIN_CMD <<<"${PAYMENTS_ADMIN:-uv run --project $REPO --frozen payments-admin}"
admin() { "${ADMIN_CMD[@]}" "$@"; }

# ------------------------------------------------------------------------- merchants

ADMIN_TESTS=${ADMIN_TESTS:-0}
if [[ ${CREATE_MERCHANT:-0} == 1 ]]; then
    ADMIN_TESTS=1
    MERCHANT_ID="api_test_${RUN_ID}"
    API_KEY=$(random_key)
    admin create-merchant "$MERCHANT_ID" --api-key "$API_KEY" --currencies USD,EUR,GBP,JPY \
        >/dev/null || die "could not create merchant $MERCHANT_ID with: ${ADMIN_CMD[*]}"
    echo "created merchant $MERCHANT_ID (key ${API_KEY:0:8}…)"
fi
[[ -n ${API_KEY:-} && -n ${MERCHANT_ID:-} ]] ||
    die "set API_KEY and MERCHANT_ID, or CREATE_MERCHANT=1 to create a merchant"
MAIN_AUTH=$(auth_file "Bearer $API_KEY" main)

OTHER_ID="" DISABLED_ID=""
if [[ $ADMIN_TESTS == 1 ]]; then
    OTHER_ID="api_test_other_${RUN_ID}" OTHER_KEY=$(random_key)
    DISABLED_ID="api_test_off_${RUN_ID}" DISABLED_KEY=$(random_key)
    if admin create-merchant "$OTHER_ID" --api-key "$OTHER_KEY" --currencies EUR >/dev/null &&
        admin create-merchant "$DISABLED_ID" --api-key "$DISABLED_KEY" --currencies USD >/dev/null &&
        admin disable-merchant "$DISABLED_ID" >/dev/null; then
        OTHER_AUTH=$(auth_file "Bearer $OTHER_KEY" other)
        DISABLED_AUTH=$(auth_file "Bearer $DISABLED_KEY" disabled)
    else
        fail "admin CLI creates the helper merchants" "'${ADMIN_CMD[*]}' failed"
        OTHER_ID="" DISABLED_ID=""
    fi
fi

printf '%sPayment service API tests%s against %s as merchant %s\n' "$BOLD" "$RESET" "$BASE_URL" "$MERCHANT_ID"

# --------------------------------------------------------------------------- health

section "Health"
req -n GET /
expect "GET / describes the service" 200 '.service == "payment-service" and (.version | type) == "string" and .docs == "/docs"'
req -n GET /health
expect "GET /health is healthy or degraded, database up" 200 \
    '(.status == "healthy" or .status == "degraded") and .checks.database.status == "up" and (.checks | has("kafka") and has("bank") and has("outbox"))'
echo "     health: $(jq -c '{status, kafka: .checks.kafka.status, bank: .checks.bank.status, circuit: .checks.bank.circuit, outbox_pending: .checks.outbox.pending}' "$BODY" 2>/dev/null)"
req -n GET /health/live
expect "GET /health/live answers 200" 200
req -n GET /health/ready
expect "GET /health/ready answers 200" 200 '.status == "ready"'
req -n -H "X-Correlation-ID: api-test.${RUN_ID}" GET /health/live
WHY="X-Correlation-ID was '$(header X-Correlation-ID)'"
check "a valid X-Correlation-ID is echoed" test "$(header X-Correlation-ID)" = "api-test.${RUN_ID}"

# ------------------------------------------------------------------------- payments

section "Payment processing"
APPROVING=(4242424242424242 4111111111111111 5555555555554444 378282246310005)
LEAKED=""
declare -A BRAND=([4242424242424242]=visa [4111111111111111]=visa [5555555555554444]=mastercard [378282246310005]=amex)
for card in "${APPROVING[@]}"; do
    cvv=123
    [[ ${BRAND[$card]} == amex ]] && cvv=1234
    pay "$card" 25.50 USD "$cvv"
    expect "card $(last4 "$card") is captured" 200 \
        ".status == \"captured\" and .amount == \"25.50\" and .currency == \"USD\" and .card.brand == \"${BRAND[$card]}\" and .card.last4 == \"${card: -4}\" and .card_last_four == \"${card: -4}\" and .decline_code == null and (.authorization_code | type) == \"string\" and .refundable_amount == \"25.50\""
    grep -qF "$card" "$BODY" && LEAKED+=" $(last4 "$card")"
done
WHY="the full number of${LEAKED:-} is in its response"
check "no payment response carries the full card number" test -z "$LEAKED"

declare -A DECLINES=(
    [4000000000000002]=card_declined [4000000000009995]=insufficient_funds
    [4000000000009987]=lost_card [4000000000009979]=stolen_card
    [4000000000000069]=expired_card [4000000000000127]=incorrect_cvc
)
for card in 4000000000000002 4000000000009995 4000000000009987 4000000000009979 4000000000000069 4000000000000127; do
    pay "$card" 10.00 USD
    expect "card $(last4 "$card") is declined with ${DECLINES[$card]}" 200 \
        ".status == \"declined\" and .decline_code == \"${DECLINES[$card]}\" and (.decline_message | type) == \"string\" and .refundable_amount == \"0.00\""
done
DECLINED_TXN=$TXN

payment_body 4242424242424242 10.00 USD 123 12 $((YEAR - 1)) >"$REQUEST"
req POST "$API/process" "$REQUEST"
expect "a card that expired last year is declined with expired_card" 200 '.status == "declined" and .decline_code == "expired_card"'

pay 4242424242424242 '"1999.00"' jpy
expect "a decimal-string amount in a lower-case zero-decimal currency" 200 '.status == "captured" and .amount == "1999" and .currency == "JPY"'
pay 4242424242424242 0.5 EUR
expect "amounts are shown with the currency's decimals" 200 '.amount == "0.50" and .currency == "EUR"'

section "Validation"
jq 'del(.card_data)' <<<"$(payment_body 4242424242424242 10 USD)" >"$REQUEST"
req POST "$API/process" "$REQUEST"
expect_problem "missing card_data is 422 naming the field" 422 validation_error '[.errors[].field] | index("card_data") != null'

payment_body 4242424242424241 10 USD >"$REQUEST"
req POST "$API/process" "$REQUEST"
expect_problem "a number failing Luhn is 422 on card_data.card_number" 422 validation_error '[.errors[].field] | index("card_data.card_number") != null'
if grep -q 4242424242424241 "$BODY"; then fail "the rejected card number is not echoed" "it is in the body"; else pass "the rejected card number is not echoed"; fi

jq '.description = ("d" * 501) | .card_data.cvv = "12" | .card_data.expiry_month = 13' <<<"$(payment_body 4242424242424242 10 USD)" >"$REQUEST"
req POST "$API/process" "$REQUEST"
expect_problem "every bad field is listed (description, cvv, expiry_month)" 422 validation_error \
    '[.errors[].field] | (index("description") != null) and (index("card_data.cvv") != null) and (index("card_data.expiry_month") != null)'

pay 4242424242424242 -5 USD
expect_problem "a negative amount is 422 on amount" 422 validation_error '[.errors[].field] | index("amount") != null'

pay 4242424242424242 10.001 USD
expect_problem "more decimals than USD allows is 422 on amount" 422 validation_error '[.errors[].field] | index("amount") != null'

jq '.surprise = true' <<<"$(payment_body 4242424242424242 10 USD)" >"$REQUEST"
req POST "$API/process" "$REQUEST"
expect_problem "unknown top-level fields are rejected" 422 validation_error '[.errors[].field] | index("surprise") != null'

jq '.payment_method = "cash"' <<<"$(payment_body 4242424242424242 10 USD)" >"$REQUEST"
req POST "$API/process" "$REQUEST"
expect_problem "payment_method must be a card" 422 validation_error '[.errors[].field] | index("payment_method") != null'

pay 4242424242424242 10 XYZ
expect_problem "an unknown currency is 422 validation_error on currency" 422 validation_error '[.errors[].field] | index("currency") != null'

pay 4242424242424242 10 "$UNSUPPORTED_CURRENCY"
expect_problem "a currency the merchant does not accept ($UNSUPPORTED_CURRENCY) is currency_not_supported" 422 currency_not_supported

if [[ -n $OTHER_ID ]]; then
    payment_body 4242424242424242 10 USD 123 12 "$EXP_YEAR" "$OTHER_ID" >"$REQUEST"
    req -a "$OTHER_AUTH" POST "$API/process" "$REQUEST"
    expect_problem "USD for a second merchant that only accepts EUR is currency_not_supported" 422 currency_not_supported
else
    skip "currency_not_supported for a second merchant" "needs ADMIN_TESTS=1 or CREATE_MERCHANT=1"
fi

# --------------------------------------------------------------------------- status

section "Status retrieval"
pay 5555555555554444 100.00 USD
PAYMENT=$TXN
expect "a 100.00 USD payment to read back and refund" 200 '.status == "captured"'
req GET "$API/$PAYMENT"
expect "GET the payment returns it with an empty refunds list" 200 \
    ".transaction_id == \"$PAYMENT\" and .status == \"captured\" and .amount == \"100.00\" and .refunds == [] and .metadata.run == \"$RUN_ID\""
req GET "$API/txn_doesnotexist${RUN_ID}"
expect_problem "an unknown transaction id is 404 payment_not_found" 404 payment_not_found

# -------------------------------------------------------------------------- listing
# Every payment of this run carries metadata {"run": RUN_ID}: filtering on it keeps the
# checks to this run's payments on a merchant that has others. Brackets are sent
# percent-encoded (curl would read [ ] in a URL as a glob).

section "Listing"
RUN_FILTER="metadata%5Brun%5D=$RUN_ID"
LISTED=()
for _ in 1 2 3; do
    pay 4242424242424242 5.00 USD
    LISTED+=("$TXN")
done
req GET "$API?limit=2&$RUN_FILTER"
expect "the newest two payments of the run, newest first, and more to come" 200 \
    ".object == \"list\" and .url == \"$API\" and .has_more == true and ([.data[].transaction_id] == [\"${LISTED[2]}\", \"${LISTED[1]}\"]) and .data[0].amount == \"5.00\" and (.data[0] | has(\"refunds\") | not)"
req GET "$API?limit=2&$RUN_FILTER&starting_after=${LISTED[1]}"
expect "starting_after the second goes on with the first, then older ones" 200 \
    ".data[0].transaction_id == \"${LISTED[0]}\" and (.data | length) == 2"
req GET "$API?limit=1&$RUN_FILTER&ending_before=${LISTED[1]}"
expect "ending_before the second pages back to the newest" 200 \
    "[.data[].transaction_id] == [\"${LISTED[2]}\"] and .has_more == false"
req GET "$API?status=declined&limit=100&$RUN_FILTER"
expect "status=declined lists the run's declines, and only declines" 200 \
    '(.data | length) >= 6 and all(.data[]; .status == "declined")'
req GET "$API?limit=0"
expect_problem "limit=0 is 422 naming limit" 422 validation_error '[.errors[].field] == ["limit"]'
req GET "$API?colour=blue&created%5Bgte%5D=yesterday"
expect_problem "an unknown parameter and a bad date are both named in one 422" 422 validation_error \
    '([.errors[].field] | sort) == ["colour", "created[gte]"]'
req GET "$API?starting_after=txn_doesnotexist${RUN_ID}"
expect_problem "a cursor that is not one of your payments is 422 naming it" 422 validation_error \
    '[.errors[].field] == ["starting_after"]'
if [[ -n $OTHER_ID ]]; then
    req -a "$OTHER_AUTH" GET "$API?limit=100&$RUN_FILTER"
    expect "a second merchant lists none of this merchant's payments" 200 \
        "all(.data[]; .merchant_id == \"$OTHER_ID\") and ([.data[].transaction_id] | index(\"${LISTED[0]}\") == null)"
else
    skip "listing isolation from a second merchant" "needs ADMIN_TESTS=1 or CREATE_MERCHANT=1"
fi

# -------------------------------------------------------------------------- refunds

section "Refunds"
printf '{"amount": 30.00, "reason": "partial", "metadata": {"ticket": "T-1"}}' >"$REQUEST"
req POST "$API/$PAYMENT/refund" "$REQUEST"
expect "a partial refund of 30.00" 200 \
    ".transaction_id == \"$PAYMENT\" and .amount == \"30.00\" and .status == \"succeeded\" and .payment_status == \"partially_refunded\" and .refunded_amount == \"30.00\" and .refundable_amount == \"70.00\" and (.refund_id | startswith(\"re_\"))"

printf '{"amount": "80.00"}' >"$REQUEST"
req POST "$API/$PAYMENT/refund" "$REQUEST"
expect_problem "refunding 80.00 of the remaining 70.00 is refund_exceeds_balance" 409 refund_exceeds_balance

printf '{"amount": "20.00"}' >"$REQUEST"
req POST "$API/$PAYMENT/refund" "$REQUEST"
expect "a decimal-string refund of 20.00" 200 '.amount == "20.00" and .refunded_amount == "50.00" and .refundable_amount == "50.00"'

printf '{"reason": "rest"}' >"$REQUEST"
req POST "$API/$PAYMENT/refund" "$REQUEST"
expect "a refund without an amount refunds the remaining 50.00" 200 \
    '.amount == "50.00" and .payment_status == "refunded" and .refunded_amount == "100.00" and .refundable_amount == "0.00"'

req GET "$API/$PAYMENT"
expect "the payment shows status refunded and its three refunds, oldest first" 200 \
    '.status == "refunded" and (.refunds | length) == 3 and ([.refunds[].amount] == ["30.00", "20.00", "50.00"])'

printf '{"amount": 1}' >"$REQUEST"
req POST "$API/$PAYMENT/refund" "$REQUEST"
expect_problem "a fully refunded payment is payment_not_refundable" 409 payment_not_refundable
req POST "$API/$DECLINED_TXN/refund" "$REQUEST"
expect_problem "a declined payment is payment_not_refundable" 409 payment_not_refundable
req POST "$API/txn_doesnotexist${RUN_ID}/refund" "$REQUEST"
expect_problem "refunding an unknown transaction is 404" 404 payment_not_found
printf '{"amount": 0}' >"$REQUEST"
req POST "$API/$PAYMENT/refund" "$REQUEST"
expect_problem "a zero refund amount is 422 on amount" 422 validation_error '[.errors[].field] | index("amount") != null'

# ------------------------------------------------------------------ capture and void

section "Capture and void"
payment_body 4242424242424242 '"100.00"' USD | jq '.capture_method = "manual"' >"$REQUEST.manual"
req POST "$API/process" "$REQUEST.manual"
expect "capture_method manual: the approval is authorized, nothing captured or refundable" 200 \
    '.status == "authorized" and .capture_method == "manual" and .captured_amount == "0.00" and .refundable_amount == "0.00"'
AUTHORIZED=$(field .transaction_id)
printf '{"amount": 1}' >"$REQUEST"
req POST "$API/$AUTHORIZED/refund" "$REQUEST"
expect_problem "an authorization is not refundable" 409 payment_not_refundable
printf '{"amount": "100.01"}' >"$REQUEST"
req POST "$API/$AUTHORIZED/capture" "$REQUEST"
expect_problem "capturing more than was authorized is 422 on amount" 422 validation_error '[.errors[].field] | index("amount") != null'
printf '{"amount": "80.00"}' >"$REQUEST"
req -H "Idempotency-Key: capture-$RUN_ID" POST "$API/$AUTHORIZED/capture" "$REQUEST"
expect "a partial capture of 80.00 captures it and releases the rest" 200 \
    '.status == "captured" and .amount == "100.00" and .captured_amount == "80.00" and .refundable_amount == "80.00"'
req -H "Idempotency-Key: capture-$RUN_ID" POST "$API/$AUTHORIZED/capture" "$REQUEST"
expect "the capture retried with its key is replayed" 200 '.status == "captured" and .captured_amount == "80.00"'
WHY="Idempotent-Replayed was '$(header Idempotent-Replayed)'"
check "the replay says Idempotent-Replayed: true" test "$(header Idempotent-Replayed)" = true
printf '{}' >"$REQUEST"
req POST "$API/$AUTHORIZED/capture" "$REQUEST"
expect_problem "a second capture is payment_not_capturable" 409 payment_not_capturable
req POST "$API/$AUTHORIZED/void"
expect_problem "voiding a captured payment is payment_not_voidable" 409 payment_not_voidable
printf '{"amount": "80.01"}' >"$REQUEST"
req POST "$API/$AUTHORIZED/refund" "$REQUEST"
expect_problem "refunds take only from the 80.00 captured" 409 refund_exceeds_balance

req POST "$API/process" "$REQUEST.manual"
VOIDED=$(field .transaction_id)
req POST "$API/$VOIDED/void"
expect "a void releases the authorization" 200 '.status == "voided" and .captured_amount == "0.00" and .refundable_amount == "0.00"'
printf '{}' >"$REQUEST"
req POST "$API/$VOIDED/capture" "$REQUEST"
expect_problem "a voided payment is payment_not_capturable" 409 payment_not_capturable
req GET "$API/$VOIDED"
expect "the payment reads voided" 200 '.status == "voided" and .capture_method == "manual"'
req POST "$API/$PAYMENT/capture" "$REQUEST"
expect_problem "an automatically captured payment is payment_not_capturable" 409 payment_not_capturable
req POST "$API/txn_doesnotexist${RUN_ID}/void"
expect_problem "voiding an unknown transaction is 404" 404 payment_not_found

# -------------------------------------------------------------------- authentication

section "Authentication and merchants"
payment_body 4242424242424242 10 USD >"$REQUEST"
req -n POST "$API/process" "$REQUEST"
expect_problem "no Authorization header is 401" 401 unauthorized
WHY="WWW-Authenticate was '$(header WWW-Authenticate)'"
check "the 401 carries WWW-Authenticate: Bearer" test "$(header WWW-Authenticate)" = Bearer
req -a "$(auth_file "Basic dXNlcjpwYXNz" basic)" POST "$API/process" "$REQUEST"
expect_problem "a non-Bearer Authorization header is 401" 401 unauthorized
req -a "$(auth_file "Bearer $(random_key)" unknown)" POST "$API/process" "$REQUEST"
expect_problem "an unknown API key is 401" 401 unauthorized
req -a "$(auth_file "Bearer $(random_key)" unknown)" GET "$API/$PAYMENT"
expect_problem "reading with an unknown API key is 401" 401 unauthorized

payment_body 4242424242424242 10 USD 123 12 "$EXP_YEAR" "someone_else_${RUN_ID}" >"$REQUEST"
req POST "$API/process" "$REQUEST"
expect_problem "a body merchant_id other than the key's is 403 merchant_mismatch" 403 merchant_mismatch

if [[ -n $OTHER_ID ]]; then
    req -a "$OTHER_AUTH" GET "$API/$PAYMENT"
    expect_problem "another merchant's payment is 404 to a second merchant" 404 payment_not_found
    printf '{}' >"$REQUEST"
    req -a "$OTHER_AUTH" POST "$API/$PAYMENT/refund" "$REQUEST"
    expect_problem "refunding another merchant's payment is 404" 404 payment_not_found
    payment_body 4242424242424242 10 USD 123 12 "$EXP_YEAR" "$DISABLED_ID" >"$REQUEST"
    req -a "$DISABLED_AUTH" POST "$API/process" "$REQUEST"
    expect_problem "a disabled merchant is 403 merchant_inactive" 403 merchant_inactive
else
    skip "cross-merchant isolation and disabled merchant" "needs ADMIN_TESTS=1 or CREATE_MERCHANT=1"
fi

# ---------------------------------------------------------------------- idempotency

section "Idempotent retries"
IDEM_KEY="api-test-${RUN_ID}-pay"
payment_body 4111111111111111 42.00 USD >"$REQUEST"
req -H "Idempotency-Key: $IDEM_KEY" POST "$API/process" "$REQUEST"
expect "a payment with an Idempotency-Key" 200 '.status == "captured"'
FIRST_TXN=$(field .transaction_id)
req -H "Idempotency-Key: $IDEM_KEY" POST "$API/process" "$REQUEST"
expect "the same key and body replay the first answer" 200 ".transaction_id == \"$FIRST_TXN\""
WHY="Idempotent-Replayed was '$(header Idempotent-Replayed)'"
check "the replay carries Idempotent-Replayed: true" test "$(header Idempotent-Replayed)" = true
payment_body 4111111111111111 43.00 USD >"$REQUEST"
req -H "Idempotency-Key: $IDEM_KEY" POST "$API/process" "$REQUEST"
expect_problem "the same key with another body is 422 idempotency_key_reused" 422 idempotency_key_reused

printf '{"amount": 2.00}' >"$REQUEST"
req -H "Idempotency-Key: ${IDEM_KEY}-refund" POST "$API/$FIRST_TXN/refund" "$REQUEST"
expect "a refund with an Idempotency-Key" 200 '.refunded_amount == "2.00"'
FIRST_REFUND=$(field .refund_id)
req -H "Idempotency-Key: ${IDEM_KEY}-refund" POST "$API/$FIRST_TXN/refund" "$REQUEST"
expect "a replayed refund refunds nothing twice" 200 ".refund_id == \"$FIRST_REFUND\" and .refunded_amount == \"2.00\""
req GET "$API/$FIRST_TXN"
expect "the payment has exactly one refund after the replay" 200 '(.refunds | length) == 1 and .refunded_amount == "2.00"'

# ---------------------------------------------------------------------------- errors

section "Error scenarios"
printf '{"merchant_id": "%s", "amount": ' "$MERCHANT_ID" >"$REQUEST"
req POST "$API/process" "$REQUEST"
expect_problem "malformed JSON is 400 malformed_json" 400 malformed_json

jq --arg pad "$(head -c 70000 /dev/zero | tr '\0' a)" '.description = $pad' \
    <<<"$(payment_body 4242424242424242 10 USD)" >"$REQUEST"
req POST "$API/process" "$REQUEST"
expect_problem "a body over 64 KiB is 413" 413 payload_too_large

req GET /api/v1/nothing-here
expect "an unknown path is 404 problem+json" 404 '.status == 404'
req DELETE "$API/$PAYMENT"
expect "an unsupported method is 405" 405 '.status == 405'

# ------------------------------------------------------------------------ performance

section "Performance: $PERF_REQUESTS payments, $PERF_CONCURRENCY at a time"
payment_body 4242424242424242 12.34 USD >"$TMP/perf.json"
perf_one() {
    curl -sS -o /dev/null --max-time "$CURL_MAX_TIME" -w '%{http_code} %{time_total}\n' \
        -H "@$MAIN_AUTH" -H 'Content-Type: application/json' --data-binary "@$TMP/perf.json" \
        "$BASE_URL$API/process" 2>/dev/null || echo "000 0"
}
export -f perf_one
export CURL_MAX_TIME MAIN_AUTH TMP BASE_URL API
started=$(date +%s%N)
seq "$PERF_REQUESTS" | xargs -P "$PERF_CONCURRENCY" -I{} bash -c perf_one >"$TMP/perf.out"
elapsed_ns=$(($(date +%s%N) - started))
ok_count=$(awk '$1 == 200' "$TMP/perf.out" | wc -l)
read -r rps p50 p95 p99 < <(awk '{print $2}' "$TMP/perf.out" | sort -n | awk -v n="$PERF_REQUESTS" -v ns="$elapsed_ns" '
    { t[NR] = $1 }
    function pct(q,   i) { i = int(q * NR + 0.999999); if (i < 1) i = 1; if (i > NR) i = NR; return t[i] * 1000 }
    END { printf "%.1f %.1f %.1f %.1f\n", n / (ns / 1e9), pct(0.50), pct(0.95), pct(0.99) }')
printf '     %s requests in %.2fs: %s req/s; latency p50 %s ms, p95 %s ms, p99 %s ms\n' \
    "$PERF_REQUESTS" "$(awk -v ns="$elapsed_ns" 'BEGIN { print ns / 1e9 }')" "$rps" "$p50" "$p95" "$p99"
WHY="$ok_count of $PERF_REQUESTS answered 200 ($(awk '$1 != 200 {print $1}' "$TMP/perf.out" | sort | uniq -c | tr '\n' ' '))"
check "all $PERF_REQUESTS concurrent payments answered 200" test "$ok_count" -eq "$PERF_REQUESTS"

# -------------------------------------------------------------------- unknown bank answers
# The bank's answer is unknown (a 5xx, a timeout): 202 with the payment processing, kept
# for the key; the reconciler settles it from the bank's status lookup later.

section "Unknown bank answers"
if [[ ${BANK_TIMEOUT_TEST:-0} == 1 ]]; then
    pay 4000000000000903 10.00 USD
    expect "card $(last4 4000000000000903): a bank timeout is 202 with the payment processing" 202 '.status == "processing" and (.transaction_id | type) == "string"'
else
    skip "card $(last4 4000000000000903) bank timeout" "10 s; set BANK_TIMEOUT_TEST=1"
fi
BANK_KEY="api-test-${RUN_ID}-bank"
payment_body 4000000000000119 10.00 USD >"$REQUEST"
req -H "Idempotency-Key: $BANK_KEY" POST "$API/process" "$REQUEST"
expect "card $(last4 4000000000000119): a bank error is 202 with the payment processing" 202 '.status == "processing" and .refundable_amount == "0.00"'
UNKNOWN_TXN=$(field .transaction_id)
req -H "Idempotency-Key: $BANK_KEY" POST "$API/process" "$REQUEST"
expect "retrying with the same key replays the 202" 202 ".transaction_id == \"$UNKNOWN_TXN\" and .status == \"processing\""
WHY="Idempotent-Replayed '$(header Idempotent-Replayed)'"
check "the replayed 202 is marked replayed" test "$(header Idempotent-Replayed)" = true
if [[ -n $UNKNOWN_TXN ]]; then
    req GET "$API/$UNKNOWN_TXN"
    expect "the payment waits for the reconciler, processing" 200 '.status == "processing" and .refundable_amount == "0.00"'
    printf '{}' >"$REQUEST"
    req POST "$API/$UNKNOWN_TXN/refund" "$REQUEST"
    expect_problem "a processing payment is not refundable" 409 payment_not_refundable
else
    skip "the payment waits for the reconciler, processing" "no transaction id in the 202"
    skip "a processing payment is not refundable" "no transaction id in the 202"
fi

# --------------------------------------------------------------------------- summary

echo
if ((SKIPPED)); then echo "($SKIPPED checks skipped)"; fi
if ((FAILED)); then
    printf '%s%d passed, %d failed%s\n' "$RED" "$PASSED" "$FAILED" "$RESET"
    exit 1
fi
printf '%s%d passed, %d failed%s\n' "$GREEN" "$PASSED" "$FAILED" "$RESET"
