/* The example guest: a resident service, built with `make guests` against
 * the C SDK (rusmd/sdk/c/rusm.h; the reference is docs/abi.md).
 *
 * rusm.toml makes it resident, so rusmd spawns it at boot, registers it
 * under its component name `hello`, and restarts it (fresh state, new
 * pid, same name) if it crashes or its worker dies. It waits in
 * rusm_recv, which costs no CPU, and greets whoever asks:
 *
 *   - a call (rusm_call from another guest, found with
 *     rusm_whereis_str("hello")) gets the reply "hello, <request>!";
 *   - a plain message (`rusmctl send hello world`) is greeted in the log.
 *
 * Nothing here needs a grant, so the default-deny `sandboxed` profile is
 * enough. The serving actions (home, greet) arrive with the HTTP
 * listeners. */
#include <stdio.h>
#include <stdlib.h>

#include "rusm.h"

#define MAX_NAME 1024

static char request[MAX_NAME + 1];
static char greeting[MAX_NAME + 16];

RUSM_EXPORT(run) void run(void) {
    rusm_info("hello from a rusm guest");
    rusm_logf(RUSM_LOG_INFO, "I am pid %lld; ask me with rusmctl send hello NAME",
              (long long)rusm_self());
    unsigned long greeted = 0;
    for (;;) {
        rusm_header header;
        int32_t n = rusm_recv(&header, request, MAX_NAME, RUSM_FOREVER);
        if (n == RUSM_ERR_TOOBIG) {
            /* Too long to greet: take it out of the mailbox and say so. */
            char *big = malloc((size_t)header.size);
            if (big == NULL) rusm_exit(1);
            rusm_recv(&header, big, (size_t)header.size, 0);
            free(big);
            rusm_warn("a name that long does not fit on a badge");
            continue;
        }
        if (n < 0) continue;
        request[n] = '\0';
        if (header.kind != RUSM_KIND_CALL && header.kind != RUSM_KIND_MESSAGE) continue;
        int len = snprintf(greeting, sizeof greeting, "hello, %s!", request);
        greeted++;
        if (header.kind == RUSM_KIND_CALL) {
            rusm_reply(header.from, header.ref, greeting, (size_t)len);
        } else {
            rusm_logf(RUSM_LOG_INFO, "%s (greeting #%lu)", greeting, greeted);
        }
    }
}
