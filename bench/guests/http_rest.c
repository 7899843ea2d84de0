/* http_rest.c — the `rest` component of the HTTP benchmark (bench/http.py):
 * the actions behind "GET /users/:id" and "POST /items".
 *
 * Built by `make bench/guests/http_rest.wasm` with the flags every C guest
 * gets (the Makefile's ZIGCC line); it defines neither main nor run, so it
 * is a WASI reactor: a fresh instance per request, _initialize, the action.
 * It imports only rusm.request and rusm.respond, so its actions run inline
 * on the worker's I/O thread.
 *
 * Each answer must be byte for byte what the baseline's ASGI app sends
 * (bench/http_baseline.py builds the same documents with json.dumps), since
 * the benchmark compares the two answers before it measures either. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rusm.h"

#define JSON "Content-Type: application/json"

/* The user's bio: the bulk of the ~1 KB document (the baseline's BIO is
 * the same sentence ten times). */
#define BIO_SENTENCE "Writes small services and reads the logs they leave behind. "
#define BIO_TWICE BIO_SENTENCE BIO_SENTENCE
#define BIO BIO_TWICE BIO_TWICE BIO_TWICE BIO_TWICE BIO_TWICE

/* Longer ids are refused: 18 decimal digits always fit in 64 bits. */
#define MAX_ID_DIGITS 18
/* A request id longer than this is refused (the baseline refuses it too). */
#define MAX_REQUEST_ID_BYTES 128
/* An item name longer than this (as sent, escapes included) is refused. */
#define MAX_NAME_BYTES 256

static int respond_json(int32_t status, const char *body, size_t len) {
    rusm_respond(status, JSON, strlen(JSON), body, len);
    return 0;
}

static int refuse(int32_t status, const char *body) {
    return respond_json(status, body, strlen(body));
}

/* Writes text[0..len) as a JSON string (quotes included) at out, which has
 * room for 6 * len + 3 bytes, and returns the bytes written. Escapes what
 * json.dumps escapes when ensure_ascii is off: the quote, the backslash
 * and the control characters; other bytes (UTF-8 included) go as they are. */
static size_t json_string(char *out, const char *text, size_t len) {
    static const char hex[] = "0123456789abcdef";
    size_t n = 0;
    out[n++] = '"';
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)text[i];
        const char *short_form = c == '"'    ? "\\\""
                                 : c == '\\' ? "\\\\"
                                 : c == '\n' ? "\\n"
                                 : c == '\r' ? "\\r"
                                 : c == '\t' ? "\\t"
                                 : c == '\b' ? "\\b"
                                 : c == '\f' ? "\\f"
                                             : NULL;
        if (short_form != NULL) {
            out[n++] = short_form[0];
            out[n++] = short_form[1];
        } else if (c < 0x20) {
            memcpy(out + n, "\\u00", 4);
            out[n + 4] = hex[c >> 4];
            out[n + 5] = hex[c & 0xF];
            n += 6;
        } else {
            out[n++] = (char)c;
        }
    }
    out[n++] = '"';
    out[n] = '\0';
    return n;
}

/* GET /users/:id: the user's profile, about 1 KB of JSON, with the id and
 * the request's x-request-id header (null when it has none). */
RUSM_EXPORT(user) int user(void) {
    char id[MAX_ID_DIGITS + 1];
    int32_t id_len = rusm_param("id", id, sizeof id);
    if (id_len <= 0 || strspn(id, "0123456789") != (size_t)id_len) {
        return refuse(404, "{\"error\":\"no such user\"}");
    }
    unsigned long long number = strtoull(id, NULL, 10);

    char request_id[MAX_REQUEST_ID_BYTES + 1];
    char quoted[6 * MAX_REQUEST_ID_BYTES + 3];
    int32_t found = rusm_request_header("x-request-id", request_id, sizeof request_id);
    if (found == RUSM_ERR_NOTFOUND) {
        strcpy(quoted, "null");
    } else if (found < 0) {
        return refuse(400, "{\"error\":\"x-request-id over 128 bytes\"}");
    } else {
        json_string(quoted, request_id, (size_t)found);
    }

    char body[2048];
    int len = snprintf(body, sizeof body,
                       "{\"id\":%llu,\"request_id\":%s,\"name\":\"User %llu\","
                       "\"email\":\"user%llu@example.com\",\"active\":true,"
                       "\"roles\":[\"reader\",\"writer\"],"
                       "\"created_at\":\"2026-01-01T00:00:00Z\","
                       "\"links\":{\"self\":\"/users/%llu\",\"avatar\":\"/users/%llu/avatar.png\"},"
                       "\"bio\":\"" BIO "\"}",
                       number, quoted, number, number, number, number);
    if (len < 0 || (size_t)len >= sizeof body) {
        return 1; /* cannot happen with the bounds above: a 502 */
    }
    return respond_json(200, body, (size_t)len);
}

/* The index of the quote that ends the JSON string whose contents start at
 * text[start], or len when the text ends first. A backslash escapes the
 * byte after it, so an escaped quote does not end the string. */
static size_t string_end(const char *text, size_t len, size_t start) {
    size_t i = start;
    while (i < len && text[i] != '"') {
        i += text[i] == '\\' ? 2 : 1;
    }
    return i < len ? i : len;
}

static size_t skip_space(const char *text, size_t len, size_t i) {
    while (i < len && (text[i] == ' ' || text[i] == '\t' || text[i] == '\n' || text[i] == '\r')) {
        i++;
    }
    return i;
}

/* Finds the string value of `key` among the members of the top-level JSON
 * object in text[0..len): points *value at its contents (still escaped,
 * without the quotes) and returns their length, or returns -1 (not an
 * object, no such member, or its value is not a string).
 *
 * A small scan, not a parser: it follows strings (and their escapes) and
 * the nesting of objects and arrays, so a "name" member of a nested object,
 * or the text "name" inside a string, is not taken for the top-level one;
 * a string at depth 1 followed by a colon is a member's key. It does not
 * validate the rest of the document, and it compares keys as spelled: for
 * valid JSON whose key is written without escapes (not "na\u006de") it is
 * correct; for invalid JSON it may find a value where a parser refuses. */
static int32_t top_level_string(const char *text, size_t len, const char *key,
                                const char **value) {
    size_t key_len = strlen(key);
    size_t i = skip_space(text, len, 0);
    if (i == len || text[i] != '{') {
        return -1;
    }
    int depth = 0;
    while (i < len) {
        char c = text[i];
        if (c == '{' || c == '[') {
            depth++;
        } else if (c == '}' || c == ']') {
            depth--;
        }
        if (c != '"') {
            i++;
            continue;
        }
        size_t start = i + 1;
        size_t end = string_end(text, len, start);
        i = skip_space(text, len, end + 1);
        if (depth != 1 || i >= len || text[i] != ':') {
            continue; /* a value, or a key of a nested object */
        }
        if (end - start != key_len || memcmp(text + start, key, key_len) != 0) {
            i++;
            continue;
        }
        i = skip_space(text, len, i + 1);
        if (i >= len || text[i] != '"') {
            return -1;
        }
        end = string_end(text, len, i + 1);
        if (end == len) {
            return -1;
        }
        *value = text + i + 1;
        return (int32_t)(end - i - 1);
    }
    return -1;
}

/* A body this size or smaller is read in one host call, with no malloc. */
#define BODY_BUFFER_BYTES 16384

static void release(char *body, const char *small) {
    if (body != small) {
        free(body);
    }
}

/* POST /items: takes the body (a JSON object, about 4 KB in the benchmark)
 * and answers its "name" with the body's size. The name goes back as the
 * request spelled it, escapes and all: the same string. */
RUSM_EXPORT(create_item) int create_item(void) {
    /* One host call for a body that fits the static buffer (the common
     * case, and no heap growth: the memory stays within the pages the host
     * keeps resident); a bigger one is asked for again into the heap. */
    static char small[BODY_BUFFER_BYTES];
    int32_t size = rusm_request(RUSM_REQ_BODY, NULL, 0, small, sizeof small);
    if (size < 0) {
        return 1; /* cannot happen while serving a request: a 502 */
    }
    char *body = small;
    if ((size_t)size > sizeof small) {
        body = malloc((size_t)size);
        if (body == NULL) {
            return refuse(413, "{\"error\":\"body too big\"}");
        }
        rusm_request(RUSM_REQ_BODY, NULL, 0, body, (size_t)size);
    }
    const char *name = NULL;
    int32_t name_len = top_level_string(body, (size_t)size, "name", &name);
    if (name_len < 0) {
        release(body, small);
        return refuse(400, "{\"error\":\"no name\"}");
    }
    if (name_len > MAX_NAME_BYTES) {
        release(body, small);
        return refuse(400, "{\"error\":\"name over 256 bytes\"}");
    }
    char answer[MAX_NAME_BYTES + 64];
    int len = snprintf(answer, sizeof answer, "{\"created\":true,\"name\":\"%.*s\",\"bytes\":%d}",
                       (int)name_len, name, (int)size);
    release(body, small);
    return respond_json(200, answer, (size_t)len);
}
