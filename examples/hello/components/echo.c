/* The example's WebSocket component: rusm.toml's ws listener names it, so
 * after each upgrade rusmd spawns one process of it for the connection,
 * built with `make guests` against the C SDK (rusmd/sdk/c/rusm.h; the reference
 * is docs/abi.md, "Serving").
 *
 * The client's messages arrive in the mailbox as RUSM_KIND_FRAME (reason:
 * RUSM_WS_TEXT or RUSM_WS_BINARY) and each goes back with the same kind.
 * When the client closes, a RUSM_KIND_CLOSED message arrives and run
 * returns: a normal exit, which closes the socket with 1000. */
#include <stdlib.h>

#include "rusm.h"

/* Most messages fit here; a bigger one stays in the mailbox (TOOBIG) and
 * is taken out into a buffer of its own size. */
static char buf[65536];

RUSM_EXPORT(run) void run(void) {
    rusm_set_label_str("ws echo");
    rusm_header header = {0};
    for (;;) {
        char *data = buf;
        int32_t n = rusm_recv(&header, buf, sizeof buf, RUSM_FOREVER);
        if (n == RUSM_ERR_TOOBIG) {
            data = malloc((size_t)header.size);
            if (data == NULL) {
                rusm_exit(1); /* crashed: the client gets close code 1011 */
            }
            n = rusm_recv(&header, data, (size_t)header.size, 0);
        }
        int32_t sent = 0;
        if (n >= 0 && header.kind == RUSM_KIND_FRAME) {
            sent = rusm_ws_send(header.reason, data, (size_t)n);
        }
        if (data != buf) {
            free(data);
        }
        if (header.kind == RUSM_KIND_CLOSED) {
            rusm_logf(RUSM_LOG_DEBUG, "client closed with code %lld", (long long)header.ref);
            return;
        }
        if (sent == RUSM_ERR_CLOSED) {
            return; /* closed under us; the CLOSED message is not worth waiting for */
        }
    }
}
