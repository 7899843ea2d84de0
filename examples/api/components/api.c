/* An HTTP API over the node store, built with `rusmd build` (or `make
 * guests`) against the C SDK (rusm.h; the reference is docs/abi.md).
 *
 * Each route names an action of this module; rusmd runs a fresh instance
 * per request, so nothing lives in globals: the items live in the store's
 * `items` bucket (rusm_kv_*), which needs the allow-storage grant the
 * manifest's `store-user` profile gives. The key comes from the route's
 * `:key` parameter (decoded by the host), the value is the request body.
 * Answers are JSON built with rusm_json, so a value with quotes or
 * newlines comes back escaped. */
#include <stdlib.h>
#include <string.h>

#include "rusm.h"

#define BUCKET "items"
/* Keys and values this example accepts; the store allows more (511-byte
 * keys, 1 MiB values), a buffer on the stack does not. */
#define MAX_KEY 128
#define MAX_VALUE 4096

/* Answer {"error": message} with a status. */
static int fail(int32_t status, const char *message) {
    char out[256];
    rusm_json j;
    rusm_json_init(&j, out, sizeof out);
    rusm_json_object(&j);
    rusm_json_key(&j, "error");
    rusm_json_str(&j, message);
    rusm_json_object_end(&j);
    if (rusm_json_finish(&j) < 0) return 1;
    rusm_respond_json(status, out);
    return 0;
}

/* The route's :key, or 0 when it is too long (an answer was sent). */
static int read_key(char *key) {
    if (rusm_param("key", key, MAX_KEY) < 0) {
        fail(400, "key longer than 127 bytes");
        return 0;
    }
    return 1;
}

/* Answer {"key": key, "value": value}. */
static int item(int32_t status, const char *key, const char *value) {
    static char out[2 * MAX_VALUE + 2 * MAX_KEY];
    rusm_json j;
    rusm_json_init(&j, out, sizeof out);
    rusm_json_object(&j);
    rusm_json_key(&j, "key");
    rusm_json_str(&j, key);
    rusm_json_key(&j, "value");
    rusm_json_str(&j, value);
    rusm_json_object_end(&j);
    if (rusm_json_finish(&j) < 0) return 1;
    rusm_respond_json(status, out);
    return 0;
}

/* GET /: the routes. */
RUSM_EXPORT(home) int home(void) {
    rusm_respond_text(200,
                      "rusm API example: items in the node store\n"
                      "\n"
                      "PUT    /items/KEY   store the body under KEY\n"
                      "GET    /items/KEY   {\"key\": KEY, \"value\": ...}, or 404\n"
                      "DELETE /items/KEY   remove it, or 404\n");
    return 0;
}

/* GET /items/:key */
RUSM_EXPORT(get_item) int get_item(void) {
    char key[MAX_KEY];
    static char value[MAX_VALUE];
    if (!read_key(key)) return 0;
    int32_t n = rusm_kv_get_str(BUCKET, key, value, sizeof value);
    if (n == RUSM_ERR_NOTFOUND) return fail(404, "no such item");
    if (n < 0) return fail(503, rusm_strerror(n));
    return item(200, key, value);
}

/* PUT /items/:key: the body (text) becomes the value; 201 when new. */
RUSM_EXPORT(put_item) int put_item(void) {
    char key[MAX_KEY];
    static char value[MAX_VALUE];
    if (!read_key(key)) return 0;
    if (rusm_body_str(value, sizeof value) < 0) return fail(413, "value longer than 4095 bytes");
    int32_t existed = rusm_kv_exists_str(BUCKET, key);
    int32_t stored = rusm_kv_set_str(BUCKET, key, value);
    if (stored < 0) return fail(503, rusm_strerror(stored));
    rusm_logf(RUSM_LOG_INFO, "put %s (%d bytes)", key, (int)strlen(value));
    return item(existed == 1 ? 200 : 201, key, value);
}

/* DELETE /items/:key */
RUSM_EXPORT(delete_item) int delete_item(void) {
    char key[MAX_KEY];
    if (!read_key(key)) return 0;
    int32_t n = rusm_kv_delete_str(BUCKET, key);
    if (n == RUSM_ERR_NOTFOUND) return fail(404, "no such item");
    if (n < 0) return fail(503, rusm_strerror(n));
    rusm_respond_str(204, "", "");
    return 0;
}
