/* actor.c — a test guest that runs the commands it is sent.
 *
 * Integration tests drive the actor runtime through it: a test sends a
 * process of this guest a command as a message (`rusmctl send`) or as a
 * call, and reads what happened from the platform log. Built with
 * tests/guests/build.py against rusmd/sdk/c/rusm.h.
 *
 * It logs `ready <pid>`, then loops on rusm_recv. Each message gets one
 * info line describing it (`got message ...`, `got call ...`, `got exit
 * ...`, `got down ...`, `got timer ...`); the payload of a message or a
 * call is then run as a command, which logs `result <op>=<value>`. A call
 * is answered with `re:<payload>` once its command has run. The commands
 * are listed in tests/guests/README.md.
 *
 * It imports rusm.spawn, rusm.spawn_link and rusm.supervise, so its
 * profile needs allow-spawn; built with -DACTOR_NO_SPAWN it imports only
 * functions every profile grants, and those commands are unknown.
 */
#define RUSM_LOGF_MAX 8192
#include "rusm.h"

#include <stdlib.h>
#include <time.h>

#define BUF_BYTES (256 * 1024)

static char buf[BUF_BYTES];       /* the payload of the message in hand */
static char request[BUF_BYTES];   /* the payload as a NUL-terminated string */
static char command[BUF_BYTES];   /* the same, cut into words */
static char answer[BUF_BYTES];    /* what `call` got back; info JSON; this actor's reply */
static rusm_pid_t pids[1024];     /* rusm_list */
static int quiet;                 /* `quiet 1`: messages are counted, not described */
static int64_t stream_taken;      /* `pong <i>` messages taken while quiet */
static int64_t stream_last = -1;  /* the last `pong <i>` index taken while quiet */
static int64_t stream_disorder;   /* `pong <i>` taken while quiet with i not above the last */
static int64_t stream_big;        /* padded `pong <i>` taken while quiet */
static int64_t stream_bad;        /* padded ones whose padding was not all '.' */

/* Check a `pong <i>[ ....]` message of a `stream` (taken while quiet). */
static void check_stream(const char *data, int32_t size) {
    if (size < 6 || memcmp(data, "pong ", 5) != 0) {
        return;
    }
    int64_t index = 0;
    int32_t at = 5;
    while (at < size && data[at] >= '0' && data[at] <= '9') {
        index = index * 10 + (data[at++] - '0');
    }
    stream_taken++;
    if (index <= stream_last) {
        stream_disorder++;
    }
    stream_last = index;
    if (at < size) {
        stream_big++;
        for (int32_t i = at + 1; i < size; i++) {
            if (data[i] != '.') {
                stream_bad++;
                break;
            }
        }
    }
}

/* The next space-separated word at *cursor, NUL-terminated in place. */
static char *word(char **cursor) {
    char *p = *cursor;
    while (*p == ' ') {
        p++;
    }
    char *start = p;
    while (*p != '\0' && *p != ' ') {
        p++;
    }
    if (*p != '\0') {
        *p++ = '\0';
    }
    *cursor = p;
    return start;
}

static int64_t number(char **cursor) { return strtoll(word(cursor), NULL, 10); }

/* An exit reason by name (normal, shutdown, killed, crashed, noproc), or a decimal code. */
static int32_t reason_code(const char *name) {
    for (int32_t reason = RUSM_REASON_NORMAL; reason <= RUSM_REASON_NOPROC; reason++) {
        if (strcmp(name, rusm_reason_name(reason)) == 0) {
            return reason;
        }
    }
    return (int32_t)strtoll(name, NULL, 10);
}

/* How many bytes of a size-returning result were written into a cap-byte buffer. */
static int shown(int32_t result, size_t cap) {
    if (result < 0) {
        return 0;
    }
    return (size_t)result < cap ? (int)result : (int)cap;
}

static void result(const char *op, int64_t value) {
    rusm_logf(RUSM_LOG_INFO, "result %s=%lld", op, (long long)value);
}

/* Take the next message into buf (a bigger one into heap memory); its payload. */
static char *receive(rusm_header *header, int32_t *size) {
    *size = rusm_recv(header, buf, sizeof buf, RUSM_FOREVER);
    if (*size != RUSM_ERR_TOOBIG) {
        return buf;
    }
    rusm_logf(RUSM_LOG_INFO, "recv toobig size=%d", header->size);
    char *big = malloc((size_t)header->size);
    if (big == NULL) {
        rusm_exit(3);
    }
    *size = rusm_recv(header, big, (size_t)header->size, 0);
    return big;
}

/* The one line that says what arrived. */
static void describe(const rusm_header *header, const char *data, int32_t size) {
    long long from = (long long)header->from, ref = (long long)header->ref;
    int len = size < 0 ? 0 : size;
    switch (header->kind) {
    case RUSM_KIND_MESSAGE:
        rusm_logf(RUSM_LOG_INFO, "got message from=%lld data=%.*s", from, len, data);
        break;
    case RUSM_KIND_CALL:
        rusm_logf(RUSM_LOG_INFO, "got call from=%lld ref=%lld data=%.*s", from, ref, len, data);
        break;
    case RUSM_KIND_EXIT:
        rusm_logf(RUSM_LOG_INFO, "got exit from=%lld reason=%s", from,
                  rusm_reason_name(header->reason));
        break;
    case RUSM_KIND_DOWN:
        rusm_logf(RUSM_LOG_INFO, "got down ref=%lld from=%lld reason=%s", ref, from,
                  rusm_reason_name(header->reason));
        break;
    case RUSM_KIND_TIMER:
        rusm_logf(RUSM_LOG_INFO, "got timer ref=%lld data=%.*s", ref, len, data);
        break;
    default:
        rusm_logf(RUSM_LOG_INFO, "got kind=%d from=%lld ref=%lld reason=%d size=%d",
                  header->kind, from, ref, header->reason, size);
    }
}

/* `call`: a call and its reply, logged as `result call=<n> reply=<text>`. */
static void call(rusm_pid_t pid, int32_t timeout_ms, const char *text) {
    int32_t n = pid < 0 ? (int32_t)pid
                        : rusm_call(pid, text, strlen(text), answer, sizeof answer, timeout_ms);
    rusm_logf(RUSM_LOG_INFO, "result call=%d reply=%.*s", n, shown(n, sizeof answer), answer);
}

/* `pingpong PID N`: N rounds of `ping` out, `pong` back. */
static void pingpong(rusm_pid_t pid, int64_t rounds) {
    for (int64_t round = 0; round < rounds; round++) {
        int32_t sent = rusm_send_str(pid, "ping");
        if (sent < 0) {
            result("pingpong", sent);
            return;
        }
        for (;;) {
            rusm_header header;
            int32_t size;
            char *data = receive(&header, &size);
            describe(&header, data, size);
            int pong = header.kind == RUSM_KIND_MESSAGE && size == 4 &&
                       memcmp(data, "pong", 4) == 0;
            if (data != buf) {
                free(data);
            }
            if (size < 0) {
                result("pingpong", size);
                return;
            }
            if (pong) {
                break;
            }
        }
    }
    result("pingpong", rounds);
}

static int64_t monotonic_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* `stream PID N BIG EVERY`: N messages `pong <i>` to PID as fast as they go,
 * every EVERY-th (i % EVERY == 0, EVERY > 0) padded with '.' to BIG bytes;
 * with for_ms > 0, it also stops once that many ms have passed. */
static void stream(rusm_pid_t pid, int64_t count, int64_t big, int64_t every, int64_t for_ms) {
    int64_t deadline = monotonic_ms() + for_ms;
    char *data = malloc(big > 64 ? (size_t)big : 64);
    if (data == NULL) {
        result("stream", -1);
        return;
    }
    if (big > 64) {
        memset(data, '.', (size_t)big);
    }
    int64_t ok = 0, limit = 0, noproc = 0, other = 0;
    for (int64_t i = 0; i < count; i++) {
        int len = snprintf(data, 64, "pong %lld", (long long)i);
        size_t size = (size_t)len;
        if (every > 0 && i % every == 0 && big > len) {
            data[len] = ' ';
            size = (size_t)big;
        }
        int32_t sent = rusm_send(pid, data, size);
        if (sent == 0) {
            ok++;
        } else if (sent == RUSM_ERR_LIMIT) {
            limit++;
        } else if (sent == RUSM_ERR_NOPROC) {
            noproc++;
        } else {
            other++;
        }
        if (for_ms > 0 && i % 256 == 255 && monotonic_ms() >= deadline) {
            break;
        }
    }
    free(data);
    rusm_logf(RUSM_LOG_INFO, "result stream=%lld limit=%lld noproc=%lld other=%lld",
              (long long)ok, (long long)limit, (long long)noproc, (long long)other);
}

/* Run one command; from is the sender of the message that carried it. */
static void run_command(char *line, rusm_pid_t from) {
    size_t len = strlen(line);
    char *rest = line;
    const char *op = word(&rest);
    if (strcmp(op, "exit") == 0) {
        rusm_exit((int32_t)number(&rest));
    } else if (strcmp(op, "crash") == 0) {
        __builtin_trap();
    } else if (strcmp(op, "exit_signal") == 0) {
        rusm_pid_t pid = number(&rest);
        result(op, rusm_exit_signal(pid, reason_code(word(&rest))));
    } else if (strcmp(op, "kill") == 0) {
        result(op, rusm_kill(number(&rest)));
    } else if (strcmp(op, "link") == 0) {
        result(op, rusm_link(number(&rest)));
    } else if (strcmp(op, "unlink") == 0) {
        result(op, rusm_unlink(number(&rest)));
    } else if (strcmp(op, "monitor") == 0) {
        result(op, rusm_monitor(number(&rest)));
    } else if (strcmp(op, "demonitor") == 0) {
        result(op, rusm_demonitor(number(&rest)));
    } else if (strcmp(op, "trap_exit") == 0) {
        result(op, rusm_trap_exit((int32_t)number(&rest)));
    } else if (strcmp(op, "register") == 0) {
        result(op, rusm_register_str(word(&rest)));
    } else if (strcmp(op, "unregister") == 0) {
        result(op, rusm_unregister_str(word(&rest)));
    } else if (strcmp(op, "whereis") == 0) {
        result(op, rusm_whereis_str(word(&rest)));
    } else if (strcmp(op, "send") == 0) {
        rusm_pid_t pid = number(&rest);
        result(op, rusm_send_str(pid, rest));
    } else if (strcmp(op, "send_name") == 0) {
        rusm_pid_t pid = rusm_whereis_str(word(&rest));
        result("send", pid < 0 ? pid : rusm_send_str(pid, rest));
    } else if (strcmp(op, "call") == 0) {
        rusm_pid_t pid = number(&rest);
        int32_t timeout_ms = (int32_t)number(&rest);
        call(pid, timeout_ms, rest);
    } else if (strcmp(op, "call_name") == 0) {
        rusm_pid_t pid = rusm_whereis_str(word(&rest));
        int32_t timeout_ms = (int32_t)number(&rest);
        call(pid, timeout_ms, rest);
#ifndef ACTOR_NO_SPAWN
    } else if (strcmp(op, "spawn") == 0) {
        result(op, rusm_spawn_str(word(&rest)));
    } else if (strcmp(op, "spawn_link") == 0) {
        result(op, rusm_spawn_link_str(word(&rest)));
    } else if (strcmp(op, "supervise") == 0) {
        result(op, rusm_supervise_str(rest));
#endif
    } else if (strcmp(op, "send_after") == 0) {
        rusm_pid_t pid = number(&rest);
        int32_t ms = (int32_t)number(&rest);
        result(op, rusm_send_after(pid, ms, rest, strlen(rest)));
    } else if (strcmp(op, "cancel_timer") == 0) {
        result(op, rusm_cancel_timer(number(&rest)));
    } else if (strcmp(op, "is_alive") == 0) {
        result(op, rusm_is_alive(number(&rest)));
    } else if (strcmp(op, "list") == 0) {
        result(op, rusm_list(pids, sizeof pids / sizeof pids[0]));
    } else if (strcmp(op, "info") == 0) {
        int32_t n = rusm_process_info(number(&rest), answer, sizeof answer);
        rusm_logf(RUSM_LOG_INFO, "result info=%d json=%.*s", n, shown(n, sizeof answer), answer);
    } else if (strcmp(op, "set_label") == 0) {
        result(op, rusm_set_label_str(rest));
    } else if (strcmp(op, "sleep") == 0) {
        result(op, rusm_sleep((int32_t)number(&rest)));
    } else if (strcmp(op, "ping") == 0) {
        rusm_send_str(from, "pong");
    } else if (strcmp(op, "pong") == 0) {
        /* the answer to a ping outside pingpong: nothing to do */
    } else if (strcmp(op, "pingpong") == 0) {
        rusm_pid_t pid = number(&rest);
        pingpong(pid, number(&rest));
    } else if (strcmp(op, "self") == 0) {
        result(op, rusm_self());
    } else if (strcmp(op, "stream") == 0) {
        rusm_pid_t pid = number(&rest);
        int64_t count = number(&rest);
        int64_t big = number(&rest);
        stream(pid, count, big, number(&rest), 0);
    } else if (strcmp(op, "stream_for") == 0) {
        rusm_pid_t pid = number(&rest);
        int64_t ms = number(&rest);
        stream(pid, INT64_MAX, 0, 0, ms > 0 ? ms : 1);
    } else if (strcmp(op, "quiet") == 0) {
        int old = quiet;
        quiet = (int)number(&rest);
        result(op, old);
    } else if (strcmp(op, "received") == 0) {
        rusm_logf(RUSM_LOG_INFO, "result received=%lld disorder=%lld big=%lld bad=%lld",
                  (long long)stream_taken, (long long)stream_disorder,
                  (long long)stream_big, (long long)stream_bad);
    } else {
        for (size_t i = 0; i < len; i++) { /* undo word(): the whole line again */
            line[i] = line[i] == '\0' ? ' ' : line[i];
        }
        rusm_logf(RUSM_LOG_INFO, "unknown command %s", line);
    }
}

RUSM_EXPORT(run) void run(void) {
    rusm_logf(RUSM_LOG_INFO, "ready %lld", (long long)rusm_self());
    for (;;) {
        rusm_header header;
        int32_t size;
        char *data = receive(&header, &size);
        if (size < 0) {
            rusm_logf(RUSM_LOG_INFO, "recv failed %d", size);
            rusm_exit(2);
        }
        if (!quiet || header.kind != RUSM_KIND_MESSAGE) {
            describe(&header, data, size);
        } else {
            check_stream(data, size);
        }
        if (header.kind == RUSM_KIND_MESSAGE || header.kind == RUSM_KIND_CALL) {
            size_t len = (size_t)size < sizeof request - 1 ? (size_t)size : sizeof request - 1;
            memcpy(request, data, len);
            request[len] = '\0';
            memcpy(command, request, len + 1);
            run_command(command, header.from);
            if (header.kind == RUSM_KIND_CALL) {
                snprintf(answer, sizeof answer, "re:%s", request);
                result("reply", rusm_reply_str(header.from, header.ref, answer));
            }
        }
        if (data != buf) {
            free(data);
        }
    }
}
