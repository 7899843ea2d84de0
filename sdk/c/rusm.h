/* rusm.h — the C SDK for rusm guests: the `rusm` import module, ABI version 1.
 *
 * A single header: include it and build a wasip1 module, for example
 *
 *     python -m ziglang cc --target=wasm32-wasi -O2 -s \
 *         -Wl,-z,stack-size=1048576 -I sdk/c -o wasm/hello.wasm hello.c
 *
 * The reference is docs/abi.md; rusmd/wasm/abi.py is the source of truth
 * and tests/unit/wasm/test_abi_contract.py keeps this file in step with it.
 *
 * Conventions:
 * - Pointers and lengths address the guest's own linear memory (i32);
 *   pids are rusm_pid_t (i64). Strings are UTF-8, passed as (ptr, len) and
 *   never NUL-terminated on the wire; the *_str helpers call strlen for you.
 * - A result >= 0 is success; a negative result is one of RUSM_ERR_*.
 * - A (ptr, len) outside the memory does not return an error: the host
 *   ends the calling process with exit reason crashed ("bad pointer").
 * - Each import needs a grant ("Needs:" below). A module that imports a
 *   function its component's profile does not grant is refused at spawn,
 *   before any guest code runs, so import only what the profile allows:
 *   an unused static inline helper below imports nothing.
 */
#ifndef RUSM_H
#define RUSM_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped on any incompatible change to the `rusm` import module. */
#define RUSM_ABI_VERSION 1

/* Results: 0 and positive values mean success. */
#define RUSM_OK 0
#define RUSM_ERR_NOPROC (-1)      /* no such process (or it has exited) */
#define RUSM_ERR_DENIED (-2)      /* the caller's profile does not allow this */
#define RUSM_ERR_INVALID (-3)     /* a malformed argument (bad UTF-8, negative size, unknown level) */
#define RUSM_ERR_NOTFOUND (-4)    /* no such component */
#define RUSM_ERR_LIMIT (-5)       /* a limit was reached (processes per worker, sizes) */
#define RUSM_ERR_TIMEOUT (-6)     /* a blocking call ran out of time */
#define RUSM_ERR_UNAVAILABLE (-7) /* the thing exists but cannot be used now (failed to load) */
#define RUSM_ERR_TOOBIG (-8)      /* the caller's buffer is too small */

/* rusm_log levels; a line shows when the manifest's [log].level admits it. */
#define RUSM_LOG_ERROR 0
#define RUSM_LOG_WARN 1
#define RUSM_LOG_INFO 2
#define RUSM_LOG_DEBUG 3

/* The stack buffer rusm_logf formats into; longer text is cut to fit. */
#ifndef RUSM_LOGF_MAX
#define RUSM_LOGF_MAX 1024
#endif

/* Marks a function as a wasm export, e.g. the entry:
 *     RUSM_EXPORT(run) void run(void) { ... }
 */
#define RUSM_EXPORT(name) __attribute__((export_name(#name)))

/* A process id: unique for the node's life, never reused. Its last three
 * decimal digits name the worker that hosts it. */
typedef int64_t rusm_pid_t;

/* ── Raw imports ──────────────────────────────────────────────────────── */

/* The caller's own pid.
 * Wasm: rusm.self () -> (i64). Needs: always. */
__attribute__((import_module("rusm"), import_name("self")))
rusm_pid_t rusm_self(void);

/* Write one UTF-8 line (len bytes at text) to the platform log at a level
 * (RUSM_LOG_ERROR … RUSM_LOG_DEBUG). Returns RUSM_OK (also when the line
 * is below [log].level and not shown), or RUSM_ERR_INVALID for an unknown
 * level or bad UTF-8.
 * Wasm: rusm.log (i32 level, i32 ptr, i32 len) -> (i32). Needs: always. */
__attribute__((import_module("rusm"), import_name("log")))
int32_t rusm_log(int32_t level, const char *text, size_t len);

/* End the caller now: code 0 exits normal, any other code exits crashed.
 * Does not return; no atexit handlers or stdio flushes run.
 * Wasm: rusm.exit (i32 code) -> (). Needs: always. */
__attribute__((import_module("rusm"), import_name("exit"), noreturn))
void rusm_exit(int32_t code);

/* Block the caller for ms milliseconds; only this process waits, and the
 * time is not counted against its CPU budget. A kill ends the sleep (and
 * the process). Returns RUSM_OK, or RUSM_ERR_INVALID for a negative ms.
 * Wasm: rusm.sleep (i32 ms) -> (i32). Needs: always. */
__attribute__((import_module("rusm"), import_name("sleep")))
int32_t rusm_sleep(int32_t ms);

/* Start the registered component [components.<name>] (name_len bytes of
 * UTF-8 at name) under its own profile. Returns its pid (>= 0), or
 * RUSM_ERR_NOTFOUND (no such component), RUSM_ERR_UNAVAILABLE (it failed
 * to load), RUSM_ERR_LIMIT (no room for another process) or
 * RUSM_ERR_INVALID (bad UTF-8).
 * Wasm: rusm.spawn (i32 name_ptr, i32 name_len) -> (i64). Needs: allow-spawn. */
__attribute__((import_module("rusm"), import_name("spawn")))
rusm_pid_t rusm_spawn(const char *name, size_t name_len);

/* Kill another process; it exits with reason killed. Returns RUSM_OK, or
 * RUSM_ERR_NOPROC if no such process is alive.
 * Wasm: rusm.kill (i64 pid) -> (i32). Needs: allow-process-control. */
__attribute__((import_module("rusm"), import_name("kill")))
int32_t rusm_kill(rusm_pid_t pid);

/* 1 if the process is alive, 0 if not.
 * Wasm: rusm.is_alive (i64 pid) -> (i32). Needs: allow-process-control. */
__attribute__((import_module("rusm"), import_name("is_alive")))
int32_t rusm_is_alive(rusm_pid_t pid);

/* ── Conveniences (static inline; each imports only what it calls) ───── */

/* rusm_log with a NUL-terminated string. Needs: always. */
static inline int32_t rusm_log_str(int32_t level, const char *text) {
    return rusm_log(level, text, strlen(text));
}

/* Log a NUL-terminated string at one level. Needs: always. */
static inline int32_t rusm_error(const char *text) { return rusm_log_str(RUSM_LOG_ERROR, text); }
static inline int32_t rusm_warn(const char *text) { return rusm_log_str(RUSM_LOG_WARN, text); }
static inline int32_t rusm_info(const char *text) { return rusm_log_str(RUSM_LOG_INFO, text); }
static inline int32_t rusm_debug(const char *text) { return rusm_log_str(RUSM_LOG_DEBUG, text); }

/* The length of text[0..len) shortened so it does not end inside a UTF-8
 * sequence: a cut multi-byte character would make the line bad UTF-8. */
static inline size_t rusm_internal_utf8_prefix(const char *text, size_t len) {
    size_t lead = len;
    while (lead > 0 && ((unsigned char)text[lead - 1] & 0xC0) == 0x80) {
        lead--;
    }
    if (lead == 0) {
        return len;
    }
    unsigned char byte = (unsigned char)text[lead - 1];
    size_t need = byte < 0x80 ? 1 : byte >= 0xF0 ? 4 : byte >= 0xE0 ? 3 : byte >= 0xC0 ? 2 : 1;
    return lead - 1 + need <= len ? len : lead - 1;
}

/* printf-style rusm_log. The text is formatted into a RUSM_LOGF_MAX-byte
 * stack buffer; longer text is cut (at a character boundary) to fit.
 * Needs: always. */
static inline int32_t rusm_logf(int32_t level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static inline int32_t rusm_logf(int32_t level, const char *fmt, ...) {
    char line[RUSM_LOGF_MAX];
    va_list args;
    va_start(args, fmt);
    int written = vsnprintf(line, sizeof line, fmt, args);
    va_end(args);
    if (written < 0) {
        return RUSM_ERR_INVALID;
    }
    size_t len = (size_t)written;
    if (len >= sizeof line) {
        len = rusm_internal_utf8_prefix(line, sizeof line - 1);
    }
    return rusm_log(level, line, len);
}

/* rusm_spawn with a NUL-terminated component name. Needs: allow-spawn. */
static inline rusm_pid_t rusm_spawn_str(const char *name) {
    return rusm_spawn(name, strlen(name));
}

/* A short description of a result code; "ok" for any success value.
 * Pass a pid-returning result through it as (int)result when it is < 0. */
static inline const char *rusm_strerror(int code) {
    switch (code) {
    case RUSM_ERR_NOPROC:
        return "no such process";
    case RUSM_ERR_DENIED:
        return "denied";
    case RUSM_ERR_INVALID:
        return "invalid argument";
    case RUSM_ERR_NOTFOUND:
        return "no such component";
    case RUSM_ERR_LIMIT:
        return "limit reached";
    case RUSM_ERR_TIMEOUT:
        return "timed out";
    case RUSM_ERR_UNAVAILABLE:
        return "unavailable";
    case RUSM_ERR_TOOBIG:
        return "buffer too small";
    default:
        return code >= 0 ? "ok" : "unknown error";
    }
}

#ifdef __cplusplus
}
#endif

#endif /* RUSM_H */
