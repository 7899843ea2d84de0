/* The example's handler component: the actions behind the HTTP and SSE
 * routes in rusm.toml, built with `make guests` against the C SDK
 * (rusmd/sdk/c/rusm.h; the reference is docs/abi.md, "Serving").
 *
 * It defines neither main nor run, so `make guests` builds it as a WASI
 * reactor. Its _initialize (libc's start-up) runs once, when rusmd
 * compiles it (pre-initialisation); for each request rusmd makes a fresh
 * instance of the result and calls the route's action. Nothing survives
 * between requests, which GET /count shows.
 *
 * greet asks the resident greeter with rusm_call, and ticks sleeps
 * between events. Those imports may block, so every action of this
 * module runs as a process on a guest thread; a module whose actions
 * only read the request and respond would run on the worker's I/O
 * thread instead. None of it needs a grant: `sandboxed` is enough. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rusm.h"

#define TEXT "Content-Type: text/plain; charset=utf-8"
#define MAX_TICKS 100

/* Zero in every fresh instance: each request sees its own. */
static unsigned long served;

/* GET /: what there is to try. */
RUSM_EXPORT(home) int home(void) {
    rusm_respond_text(200,
                      "rusm example app\n"
                      "\n"
                      "GET  /hello/NAME   the resident greeter `hello` greets NAME\n"
                      "GET  /count        a counter that is always 1: nothing survives a request\n"
                      "POST /echo         the body back, with its content-type\n"
                      "SSE  :8081/ticks   a `tick` event a second, 5 of them (?n=N: N, up to 100)\n"
                      "WS   :8082/        every message back\n");
    return 0;
}

/* GET /hello/:name: a handler calling a resident. The greeter's pid is
 * looked up per request, so a restarted greeter (new pid) is found. */
RUSM_EXPORT(greet) int greet(void) {
    char name[256];
    char reply[512];
    if (rusm_param("name", name, sizeof name) < 0) {
        rusm_respond_text(400, "a name that long does not fit on a badge\n");
        return 0;
    }
    rusm_pid_t greeter = rusm_whereis_str("hello");
    int32_t n = greeter < 0 ? (int32_t)greeter
                            : rusm_call(greeter, name, strlen(name), reply, sizeof reply - 1, 1000);
    if (n < 0) {
        rusm_logf(RUSM_LOG_WARN, "greet: the greeter did not answer: %s", rusm_strerror(n));
        rusm_respond_text(503, "the greeter is not available; try again\n");
        return 0;
    }
    size_t len = (size_t)n < sizeof reply - 1 ? (size_t)n : sizeof reply - 1;
    reply[len++] = '\n';
    rusm_respond(200, TEXT, strlen(TEXT), reply, len);
    return 0;
}

/* GET /count: increments a global and shows it, always 1. */
RUSM_EXPORT(count) int count(void) {
    char body[32];
    snprintf(body, sizeof body, "%lu\n", ++served);
    rusm_respond_text(200, body);
    return 0;
}

/* POST /echo: the body back, with the request's content-type. The body's
 * size is asked first (a buffer of 0 bytes), then it is read whole. */
RUSM_EXPORT(echo) int echo(void) {
    int32_t size = rusm_request(RUSM_REQ_BODY, NULL, 0, NULL, 0);
    if (size < 0) {
        return 1; /* cannot happen while serving a request: a 502 */
    }
    char *body = malloc((size_t)size + 1);
    if (body == NULL) {
        rusm_respond_text(413, "too big to echo\n");
        return 0;
    }
    rusm_request(RUSM_REQ_BODY, NULL, 0, body, (size_t)size);
    char type[256];
    char headers[sizeof type + 16];
    if (rusm_request_header("content-type", type, sizeof type) < 0) {
        strcpy(type, "application/octet-stream");
    }
    int headers_len = snprintf(headers, sizeof headers, "Content-Type: %s", type);
    rusm_respond(200, headers, (size_t)headers_len, body, (size_t)size);
    free(body);
    return 0;
}

/* The n query parameter: 5 when absent, else 1..MAX_TICKS (more is
 * capped), or -1 when it is not a positive whole number (or over 15 bytes). */
static int ticks_wanted(void) {
    char arg[16];
    int32_t found = rusm_query_param("n", arg, sizeof arg);
    if (found == RUSM_ERR_NOTFOUND) {
        return 5;
    }
    char *end = arg;
    long n = found > 0 ? strtol(arg, &end, 10) : 0;
    if (found <= 0 || *end != '\0' || n < 1) {
        return -1;
    }
    return n > MAX_TICKS ? MAX_TICKS : (int)n;
}

/* GET /ticks on the SSE listener: this action is a process for the life
 * of the stream. It sends a `tick` event a second (data: its number) and
 * returns, which ends the stream. If the client leaves, sse_event returns
 * CLOSED and rusmd stops the process (a sleep is woken). */
RUSM_EXPORT(ticks) int ticks(void) {
    int n = ticks_wanted();
    if (n < 0) {
        rusm_respond_text(400, "n must be a whole number from 1 to 100\n");
        return 0;
    }
    char data[16];
    for (int i = 1; i <= n; i++) {
        if (i > 1) {
            rusm_sleep(1000);
        }
        snprintf(data, sizeof data, "%d", i);
        if (rusm_sse_event_str("tick", data) == RUSM_ERR_CLOSED) {
            return 0;
        }
    }
    return 0;
}
