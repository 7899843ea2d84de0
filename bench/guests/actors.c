/* actors.c — the guest of the actor benchmark (bench/actors.py).
 *
 * Every process of it waits in rusm_recv and answers its peers:
 *
 *   message "p"  sends "P" back to the sender (a ping-pong round trip);
 *   message "f"  counts it; every ACK_EVERY-th is acknowledged with "a"
 *                to the sender (the flow control of `flood`);
 *   a call       is replied to with "C".
 *
 * A text message from anyone else is a command that starts a measurement
 * against another process (PID) and logs one line when it is done, with
 * the time it took on the WASI monotonic clock (clock_gettime):
 *
 *   pingpong PID N  N times: send "p" to PID, wait for "P"
 *                   -> `pingpong n=N ns=T p50=.. p90=.. p99=.. max=..`
 *   calls PID N     N times: rusm_call(PID, "c")
 *                   -> `calls n=N ns=T p50=.. p90=.. p99=.. max=..`
 *   flood PID N     N messages "f" to PID as fast as it takes them, with at
 *                   most WINDOW sent and not yet acknowledged (a mailbox
 *                   holds RUSM_MAILBOX_LIMIT user messages; past that they
 *                   are dropped), until all N are acknowledged
 *                   -> `flood n=N ns=T`
 *
 * T is the whole command's time; p50 to max are the percentiles of the
 * single round trips, each timed on its own (up to MAX_TIMED of them: the
 * rest count in T only).
 *
 * A failing rusm call logs `failed <op> <code>` and ends the command.
 * Built at bench time with tests/guests/build.py against rusmd/sdk/c/rusm.h.
 */
#include "rusm.h"

#include <stdlib.h>
#include <time.h>

#define ACK_EVERY 500
#define WINDOW 4000
#define BUF_BYTES 256
/* The round trips a command times one by one: 8 bytes each, taken from the
 * heap only by the process that runs the command. */
#define MAX_TIMED 1000000

static char buf[BUF_BYTES];
static char reply[16];
static int64_t floods_counted;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void failed(const char *op, int64_t code) {
    rusm_logf(RUSM_LOG_ERROR, "failed %s %lld", op, (long long)code);
}

/* The answers every process gives; true if the message was one of them. */
static int answer(const rusm_header *header, int32_t size) {
    if (header->kind == RUSM_KIND_CALL) {
        rusm_reply(header->from, header->ref, "C", 1);
        return 1;
    }
    if (header->kind != RUSM_KIND_MESSAGE || size != 1) {
        return 0;
    }
    if (buf[0] == 'p') {
        rusm_send(header->from, "P", 1);
        return 1;
    }
    if (buf[0] == 'f') {
        if (++floods_counted % ACK_EVERY == 0) {
            rusm_send(header->from, "a", 1);
        }
        return 1;
    }
    return 0;
}

/* Wait for a one-byte message `want`, answering peers meanwhile; 0 or an error. */
static int32_t await_byte(char want) {
    for (;;) {
        rusm_header header;
        int32_t size = rusm_recv(&header, buf, sizeof buf, RUSM_FOREVER);
        if (size < 0) {
            return size;
        }
        if (header.kind == RUSM_KIND_MESSAGE && size == 1 && buf[0] == want) {
            return 0;
        }
        answer(&header, size);
    }
}

static int compare_ns(const void *a, const void *b) {
    int64_t left = *(const int64_t *)a, right = *(const int64_t *)b;
    return (left > right) - (left < right);
}

/* Room for the times of up to `rounds` round trips (NULL if none is left). */
static int64_t *timings(int64_t rounds) {
    return malloc((size_t)(rounds < MAX_TIMED ? rounds : MAX_TIMED) * sizeof(int64_t));
}

/* Log `OP n=N ns=T p50=.. p90=.. p99=.. max=..` and free the times. */
static void report(const char *op, int64_t rounds, int64_t total, int64_t *times) {
    int64_t timed = rounds < MAX_TIMED ? rounds : MAX_TIMED;
    int64_t p50 = 0, p90 = 0, p99 = 0, max = 0;
    if (times != NULL && timed > 0) {
        qsort(times, (size_t)timed, sizeof(int64_t), compare_ns);
        p50 = times[timed / 2];
        p90 = times[timed * 9 / 10];
        p99 = times[timed * 99 / 100];
        max = times[timed - 1];
    }
    free(times);
    rusm_logf(RUSM_LOG_INFO, "%s n=%lld ns=%lld p50=%lld p90=%lld p99=%lld max=%lld", op,
              (long long)rounds, (long long)total, (long long)p50, (long long)p90,
              (long long)p99, (long long)max);
}

static void pingpong(rusm_pid_t pid, int64_t rounds) {
    int64_t *times = timings(rounds);
    int64_t start = now_ns();
    for (int64_t i = 0; i < rounds; i++) {
        int64_t sent = now_ns();
        int32_t code = rusm_send(pid, "p", 1);
        if (code < 0) {
            failed("send", code);
            free(times);
            return;
        }
        code = await_byte('P');
        if (code < 0) {
            failed("recv", code);
            free(times);
            return;
        }
        if (times != NULL && i < MAX_TIMED) {
            times[i] = now_ns() - sent;
        }
    }
    report("pingpong", rounds, now_ns() - start, times);
}

static void calls(rusm_pid_t pid, int64_t rounds) {
    int64_t *times = timings(rounds);
    int64_t start = now_ns();
    for (int64_t i = 0; i < rounds; i++) {
        int64_t called = now_ns();
        int32_t code = rusm_call(pid, "c", 1, reply, sizeof reply, RUSM_FOREVER);
        if (code != 1) {
            failed("call", code);
            free(times);
            return;
        }
        if (times != NULL && i < MAX_TIMED) {
            times[i] = now_ns() - called;
        }
    }
    report("calls", rounds, now_ns() - start, times);
}

static void flood(rusm_pid_t pid, int64_t count) {
    int64_t start = now_ns();
    int64_t acked = 0;
    for (int64_t sent = 0; sent < count; sent++) {
        while (sent - acked >= WINDOW) {
            int32_t code = await_byte('a');
            if (code < 0) {
                failed("recv", code);
                return;
            }
            acked += ACK_EVERY;
        }
        int32_t code = rusm_send(pid, "f", 1);
        if (code < 0) {
            failed("send", code);
            return;
        }
    }
    while (acked < count - count % ACK_EVERY) {
        int32_t code = await_byte('a');
        if (code < 0) {
            failed("recv", code);
            return;
        }
        acked += ACK_EVERY;
    }
    rusm_logf(RUSM_LOG_INFO, "flood n=%lld ns=%lld", (long long)count,
              (long long)(now_ns() - start));
}

/* Run a command: `OP PID N`. */
static void command(char *text) {
    char *cursor = text;
    char *op = cursor;
    while (*cursor != '\0' && *cursor != ' ') {
        cursor++;
    }
    if (*cursor == ' ') {
        *cursor++ = '\0';
    }
    rusm_pid_t pid = strtoll(cursor, &cursor, 10);
    int64_t n = strtoll(cursor, &cursor, 10);
    if (strcmp(op, "pingpong") == 0) {
        pingpong(pid, n);
    } else if (strcmp(op, "calls") == 0) {
        calls(pid, n);
    } else if (strcmp(op, "flood") == 0) {
        flood(pid, n);
    } else {
        rusm_logf(RUSM_LOG_ERROR, "unknown command %s", op);
    }
}

RUSM_EXPORT(run) void run(void) {
    rusm_logf(RUSM_LOG_INFO, "ready %lld", (long long)rusm_self());
    for (;;) {
        rusm_header header;
        int32_t size = rusm_recv(&header, buf, sizeof buf - 1, RUSM_FOREVER);
        if (size < 0) {
            failed("recv", size);
            rusm_exit(2);
        }
        if (answer(&header, size) || header.kind != RUSM_KIND_MESSAGE) {
            continue;
        }
        buf[size] = '\0';
        command(buf);
    }
}
