/* The denied half of the capability demo: the same write as
 * components/keeper.c, under `sandboxed`, which has no allow-storage.
 * The kv functions are checked per call, so the module loads and runs,
 * and rusm_kv_set returns RUSM_ERR_DENIED: it answers 403 with that. */
#include <stdio.h>

#include "rusm.h"

/* POST /locked: store the body under `last`, say what the store said. */
RUSM_EXPORT(store) int store(void) {
    char body[256];
    if (rusm_body_str(body, sizeof body) < 0) {
        rusm_respond_text(413, "body longer than 255 bytes\n");
        return 0;
    }
    int32_t stored = rusm_kv_set_str("demo", "last", body);
    if (stored < 0) {
        char text[64];
        snprintf(text, sizeof text, "kv_set: %s\n", rusm_strerror(stored));
        rusm_logf(RUSM_LOG_WARN, "kv_set: %s", rusm_strerror(stored));
        rusm_respond_text(stored == RUSM_ERR_DENIED ? 403 : 503, text);
        return 0;
    }
    rusm_respond_text(200, "stored\n");
    return 0;
}
