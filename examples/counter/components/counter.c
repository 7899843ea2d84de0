/* The counter service: a resident process (rusm.toml), registered as
 * `counter`, holding named counts in its memory. It waits in rusm_recv
 * and answers each RUSM_KIND_CALL with rusm_reply; requests and replies
 * use the SDK's message encoding (rusm_msg):
 *
 *   request: 'o' the operation ("get" or "add"), 'k' the name,
 *            'n' the amount (add only)
 *   reply:   'n' the count, or 'e' an error text
 *
 * One process serves every call in turn, so an add is never lost to a
 * race. The counts are its state: if it crashes or its worker dies,
 * rusmd restarts it with fresh (zero) counts under the same name. */
#include <stdlib.h>
#include <string.h>

#include "rusm.h"

/* Distinct names held; past this an add is refused with an error, so a
 * client inventing names cannot grow the process without bound. */
#define MAX_COUNTERS 256
#define MAX_NAME 64

static struct {
    char name[MAX_NAME];
    int64_t count;
} counters[MAX_COUNTERS];
static int used;

/* The slot of name, created when create is set; -1 when absent or full. */
static int slot(const char *name, int create) {
    for (int i = 0; i < used; i++) {
        if (strcmp(counters[i].name, name) == 0) return i;
    }
    if (!create || used == MAX_COUNTERS) return -1;
    strcpy(counters[used].name, name);
    counters[used].count = 0;
    return used++;
}

/* Fill the reply for one request; its length. */
static int32_t answer(const void *req, size_t len, unsigned char *out, size_t cap) {
    char op[8], name[MAX_NAME];
    int64_t by = 0;
    rusm_msg reply;
    rusm_msg_init(&reply, out, cap);
    if (rusm_msg_get_str(req, len, 'o', op, sizeof op) < 0 ||
        rusm_msg_get_str(req, len, 'k', name, sizeof name) < 0) {
        rusm_msg_put_str(&reply, 'e', "a request needs 'o' and a 'k' under 64 bytes");
    } else if (strcmp(op, "get") == 0) {
        int at = slot(name, 0);
        rusm_msg_put_i64(&reply, 'n', at < 0 ? 0 : counters[at].count);
    } else if (strcmp(op, "add") == 0 && rusm_msg_get_i64(req, len, 'n', &by) == RUSM_OK) {
        int at = slot(name, 1);
        if (at < 0) {
            rusm_msg_put_str(&reply, 'e', "too many counters");
        } else {
            counters[at].count += by;
            rusm_msg_put_i64(&reply, 'n', counters[at].count);
        }
    } else {
        rusm_msg_put_str(&reply, 'e', "unknown operation");
    }
    return rusm_msg_finish(&reply);
}

RUSM_EXPORT(run) void run(void) {
    unsigned char req[256];
    unsigned char out[128];
    rusm_logf(RUSM_LOG_INFO, "counter up as pid %lld", (long long)rusm_self());
    for (;;) {
        rusm_header header;
        int32_t n = rusm_recv(&header, req, sizeof req, RUSM_FOREVER);
        if (n == RUSM_ERR_TOOBIG) {
            /* Not a request of ours: take it out of the mailbox (it stays
             * there until read whole) and refuse it. */
            void *big = malloc((size_t)header.size);
            if (big == NULL) rusm_exit(1);
            rusm_recv(&header, big, (size_t)header.size, 0);
            free(big);
            if (header.kind == RUSM_KIND_CALL) rusm_reply(header.from, header.ref, NULL, 0);
            continue;
        }
        if (n < 0 || header.kind != RUSM_KIND_CALL) continue;
        int32_t len = answer(req, (size_t)n, out, sizeof out);
        rusm_reply(header.from, header.ref, out, len < 0 ? 0 : (size_t)len);
    }
}
