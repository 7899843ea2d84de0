/* kv_get.c — one read of the node store behind "GET .../:key": the guest
 * of the kv-storm scenario (component sc_kv, "GET /sc/kv/:key") and of
 * python -m bench http's kv workload (component kv, "GET /kv/:key").
 *
 * One source for both, so the two figures measure the same handler: the
 * scenario app compiles it at run time with `rusmd build`'s compiler and
 * flags (rusmd/guest/module_cache.py keeps the module between runs); the
 * Makefile's bench-guests target builds bench/guests/http_kv.wasm from it
 * with the ZIGCC line. Either way a WASI reactor. It imports only calls
 * that run inline (the request, rusm.kv_get, rusm.respond), so a request
 * is a call on the worker's I/O thread (docs/abi.md, "Where an action
 * runs"). Its profile grants allow-storage. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "rusm.h"

#define JSON "Content-Type: application/json"
#define BUCKET "bench"

/* Values up to this size are read in one call; a bigger one is read again
 * into a buffer of its size. */
#define VALUE_BUFFER_BYTES 4096

static int refuse(int32_t status, const char *body) {
    rusm_respond(status, JSON, strlen(JSON), body, strlen(body));
    return 0;
}

/* GET /kv/:key: the value stored under key in the bucket "bench", as
 * application/json (the benchmark stores a JSON document there). */
RUSM_EXPORT(get) int get(void) {
    char key[RUSM_KV_MAX_KEY_BYTES + 1];
    int32_t key_len = rusm_param("key", key, sizeof key);
    if (key_len <= 0) {
        return refuse(404, "{\"error\":\"no such key\"}");
    }
    char small[VALUE_BUFFER_BYTES];
    char *value = small;
    int32_t size = rusm_kv_get(BUCKET, strlen(BUCKET), key, (size_t)key_len, small, sizeof small);
    if (size > (int32_t)sizeof small) {
        value = malloc((size_t)size);
        if (value == NULL) {
            return refuse(500, "{\"error\":\"value too big\"}");
        }
        size = rusm_kv_get(BUCKET, strlen(BUCKET), key, (size_t)key_len, value, (size_t)size);
    }
    if (size == RUSM_ERR_NOTFOUND) {
        return refuse(404, "{\"error\":\"no such key\"}");
    }
    if (size < 0) {
        return refuse(503, "{\"error\":\"store unavailable\"}");
    }
    rusm_respond(200, JSON, strlen(JSON), value, (size_t)size);
    if (value != small) {
        free(value);
    }
    return 0;
}
