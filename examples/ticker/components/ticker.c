/* An SSE ticker, built with `rusmd build` (or `make guests`) against the
 * C SDK (rusm.h; the reference is docs/abi.md, "Serving").
 *
 * On an SSE listener an action is a process for the life of its stream:
 * every rusm_sse_event is one event on the wire, rusm_sleep waits without
 * costing CPU budget (or holding the worker), and returning ends the
 * stream. When the client goes away, rusm_sse_event returns
 * RUSM_ERR_CLOSED and the action stops; a kill wakes a sleep. A bad query
 * is answered with a plain 400 before any event is sent. */
#include <stdio.h>
#include <stdlib.h>

#include "rusm.h"

/* Bounds on what a client may ask for: a stream is a process, and one
 * request must not hold it for hours or spin it without pause. */
#define MAX_TICKS 1000
#define MIN_EVERY_MS 10
#define MAX_EVERY_MS 60000

/* A whole number from the query (absent: fallback), or -1 when it is not
 * one, or outside lo..hi. */
static long number(int32_t found, const char *text, long fallback, long lo, long hi) {
    if (found == RUSM_ERR_NOTFOUND) return fallback;
    char *end = NULL;
    long n = found > 0 ? strtol(text, &end, 10) : -1;
    if (found <= 0 || *end != '\0' || n < lo || n > hi) return -1;
    return n;
}

/* GET /ticks?n=COUNT&every-ms=MS: COUNT `tick` events (default 5), MS
 * apart (default 1000); each event's data is {"tick": i, "of": COUNT}. */
RUSM_EXPORT(ticks) int ticks(void) {
    char arg[16];
    long n = number(rusm_query_param("n", arg, sizeof arg), arg, 5, 1, MAX_TICKS);
    long every = number(rusm_query_param("every-ms", arg, sizeof arg), arg, 1000, MIN_EVERY_MS,
                        MAX_EVERY_MS);
    if (n < 0 || every < 0) {
        rusm_respond_text(400, "n must be 1..1000 and every-ms 10..60000\n");
        return 0;
    }
    char data[64];
    for (long i = 1; i <= n; i++) {
        if (i > 1) rusm_sleep((int32_t)every);
        snprintf(data, sizeof data, "{\"tick\":%ld,\"of\":%ld}", i, n);
        if (rusm_sse_event_str("tick", data) == RUSM_ERR_CLOSED) return 0;
    }
    return 0;
}

/* GET /countdown/:from: FROM, FROM-1 ... 1 as `count` events 100 ms
 * apart, then one `liftoff` event. FROM is a route parameter, 1..100. */
RUSM_EXPORT(countdown) int countdown(void) {
    char arg[16];
    long from = number(rusm_param("from", arg, sizeof arg), arg, -1, 1, 100);
    if (from < 0) {
        rusm_respond_text(400, "count down from 1..100\n");
        return 0;
    }
    char data[16];
    for (long i = from; i >= 1; i--) {
        snprintf(data, sizeof data, "%ld", i);
        if (rusm_sse_event_str("count", data) == RUSM_ERR_CLOSED) return 0;
        rusm_sleep(100);
    }
    rusm_sse_event_str("liftoff", "0");
    return 0;
}
