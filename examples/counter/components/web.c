/* The counter's HTTP face: actions that rusm_call the resident `counter`
 * (components/counter.c) and answer JSON. A fresh instance serves each
 * request and keeps nothing; the counts live in the resident. Its pid is
 * looked up by name per request, so a restarted counter is found. */
#include <stdlib.h>
#include <string.h>

#include "rusm.h"

/* How long a request waits for the counter before answering 503. */
#define CALL_TIMEOUT_MS 2000

/* Ask the counter (op "get" or "add" by), answer {"name":..,"count":..}. */
static int ask(const char *op, int64_t by) {
    char name[64];
    if (rusm_param("name", name, sizeof name) < 0) {
        rusm_respond_json(400, "{\"error\":\"a name under 64 bytes\"}");
        return 0;
    }
    unsigned char req[128], reply[128];
    rusm_msg m;
    rusm_msg_init(&m, req, sizeof req);
    rusm_msg_put_str(&m, 'o', op);
    rusm_msg_put_str(&m, 'k', name);
    rusm_msg_put_i64(&m, 'n', by);
    int32_t req_len = rusm_msg_finish(&m);
    rusm_pid_t counter = rusm_whereis_str("counter");
    int32_t n = counter < 0 || req_len < 0
                    ? RUSM_ERR_UNAVAILABLE
                    : rusm_call(counter, req, (size_t)req_len, reply, sizeof reply,
                                CALL_TIMEOUT_MS);
    int64_t count = 0;
    char error[96];
    char out[192];
    if (n < 0 || (size_t)n > sizeof reply) {
        rusm_logf(RUSM_LOG_WARN, "the counter did not answer: %s", rusm_strerror(n));
        rusm_respond_json(503, "{\"error\":\"the counter is not available; try again\"}");
        return 0;
    }
    rusm_json j;
    rusm_json_init(&j, out, sizeof out);
    rusm_json_object(&j);
    int counted = rusm_msg_get_i64(reply, (size_t)n, 'n', &count) == RUSM_OK;
    if (counted) {
        rusm_json_key(&j, "name");
        rusm_json_str(&j, name);
        rusm_json_key(&j, "count");
        rusm_json_int(&j, count);
    } else {
        if (rusm_msg_get_str(reply, (size_t)n, 'e', error, sizeof error) < 0) {
            strcpy(error, "the counter's reply is malformed");
        }
        rusm_json_key(&j, "error");
        rusm_json_str(&j, error);
    }
    rusm_json_object_end(&j);
    if (rusm_json_finish(&j) < 0) return 1;
    rusm_respond_json(counted ? 200 : 409, out);
    return 0;
}

/* GET /counts/:name */
RUSM_EXPORT(show) int show(void) { return ask("get", 0); }

/* POST /counts/:name?by=N: N from -1000000 to 1000000, default 1. */
RUSM_EXPORT(bump) int bump(void) {
    char arg[16];
    int32_t found = rusm_query_param("by", arg, sizeof arg);
    char *end = arg;
    long by = found == RUSM_ERR_NOTFOUND ? 1 : found > 0 ? strtol(arg, &end, 10) : 0;
    if (found != RUSM_ERR_NOTFOUND && (found <= 0 || *end != '\0' || by < -1000000 ||
                                       by > 1000000)) {
        rusm_respond_json(400, "{\"error\":\"by must be a whole number, at most a million\"}");
        return 0;
    }
    return ask("add", by);
}
