/* rusm.h — the C SDK for rusm guests: the `rusm` import module, ABI version 2.
 *
 * A single header, shipped inside the rusm package: `rusmd build` compiles
 * the C files of components/<name>/ into wasm/<name>.wasm with it on the
 * include path (docs/writing-c.md). By hand, include it and build a wasip1
 * module, for example
 *
 *     python -m ziglang cc --target=wasm32-wasi -O2 -s \
 *         -Wl,-z,stack-size=65536 -I rusmd/sdk/c -o wasm/hello.wasm hello.c
 *
 * The reference is docs/abi.md; rusmd/abi.py and rusmd/wasm/abi.py are the
 * source of truth and tests/unit/wasm/test_abi_contract.py keeps this file in
 * step with them.
 *
 * Conventions:
 * - Pointers and lengths address the guest's own linear memory (i32);
 *   pids and refs are 64-bit (rusm_pid_t, rusm_ref_t). Strings are UTF-8,
 *   passed as (ptr, len) and never NUL-terminated on the wire; the *_str
 *   helpers call strlen for you.
 * - A result >= 0 is success; a negative result is one of RUSM_ERR_*.
 * - A (ptr, len) outside the memory does not return an error: the host
 *   ends the calling process with exit reason crashed ("bad pointer").
 * - Each import needs a grant ("Needs:" below). A module that imports a
 *   function its component's profile does not grant is refused at spawn,
 *   before any guest code runs, so import only what the profile allows:
 *   an unused static inline helper below imports nothing. Some functions
 *   that need no grant still check one when they run: acting on another
 *   process with kill, is_alive, exit_signal or info returns
 *   RUSM_ERR_DENIED without allow-process-control.
 * - The kv functions (kv_get, kv_exists, kv_set, kv_delete, kv_batch,
 *   kv_list) are the exception: any module may import them, and each call
 *   checks allow-storage, returning RUSM_ERR_DENIED without it (and
 *   RUSM_ERR_NOSTORE on a node whose manifest sets no [node] store).
 * - Blocking calls (sleep, recv, call, register, info) cost no CPU budget
 *   while they wait, and a kill wakes them: the process ends and the call
 *   does not return. The kv writes (kv_set, kv_delete, kv_batch) wait for
 *   the disk the same way, without a timeout; a kill meanwhile ends the
 *   process once the commit is done.
 * - The serving functions (request, respond, write, flush, sse_event,
 *   ws_send, ws_close) act on the request the caller serves, and return
 *   RUSM_ERR_UNAVAILABLE in a process that serves none. An HTTP action
 *   that imports only self, log, exit, request, respond, write and flush
 *   runs on the worker's I/O thread, the fastest path; see "Serving" in
 *   docs/abi.md.
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
#define RUSM_STATIC_ASSERT static_assert
#else
#define RUSM_STATIC_ASSERT _Static_assert
#endif

/* Bumped on any incompatible change to the `rusm` import module. */
#define RUSM_ABI_VERSION 2

/* Results: 0 and positive values mean success. */
#define RUSM_OK 0
#define RUSM_ERR_NOPROC (-1)      /* no such process (or it has exited) */
#define RUSM_ERR_DENIED (-2)      /* the caller's profile does not allow this */
#define RUSM_ERR_INVALID (-3)     /* a malformed argument (bad UTF-8, negative size, unknown level) */
#define RUSM_ERR_NOTFOUND (-4)    /* no such component, name, monitor or timer */
#define RUSM_ERR_LIMIT (-5)       /* a limit was reached (processes per worker, a full mailbox) */
#define RUSM_ERR_TIMEOUT (-6)     /* a blocking call ran out of time */
#define RUSM_ERR_UNAVAILABLE (-7) /* the thing exists but cannot be used now (failed to load) */
#define RUSM_ERR_TOOBIG (-8)      /* a size over a limit, or the caller's buffer is too small */
#define RUSM_ERR_EXISTS (-9)      /* the name is taken, or the caller already has one */
#define RUSM_ERR_CLOSED (-10)     /* the client went away (or the socket is closed): stop serving it */
#define RUSM_ERR_NOSTORE (-11)    /* no store configured ([node] store is not set) */

/* rusm_log levels; a line shows when the manifest's [log].level admits it. */
#define RUSM_LOG_ERROR 0
#define RUSM_LOG_WARN 1
#define RUSM_LOG_INFO 2
#define RUSM_LOG_DEBUG 3

/* What a received message is: rusm_header.kind. */
#define RUSM_KIND_MESSAGE 0 /* rusm_send; the payload is the sender's bytes */
#define RUSM_KIND_EXIT 1    /* a linked process exited and the receiver traps exits */
#define RUSM_KIND_DOWN 2    /* a monitored process exited (ref: the monitor) */
#define RUSM_KIND_CALL 3    /* rusm_call; answer with rusm_reply(from, ref, ...) */
#define RUSM_KIND_TIMER 4   /* rusm_send_after fired (ref: the timer) */
#define RUSM_KIND_FRAME 5   /* a WebSocket message from the client (reason: RUSM_WS_*) */
#define RUSM_KIND_CLOSED 6  /* the WebSocket client closed (ref: its close code, 1005 for none) */

/* Exit reasons: rusm_header.reason of exit and down messages, and the
 * reason rusm_exit_signal sends. */
#define RUSM_REASON_NORMAL 0
#define RUSM_REASON_SHUTDOWN 1
#define RUSM_REASON_KILLED 2
#define RUSM_REASON_CRASHED 3
#define RUSM_REASON_NOPROC 4

/* timeout_ms for rusm_recv and rusm_call: wait as long as it takes. */
#define RUSM_FOREVER (-1)

/* The bytes rusm_recv writes at header_ptr. */
#define RUSM_HEADER_BYTES 32
/* The largest payload of one message, call or reply (8 MiB). */
#define RUSM_MAX_MESSAGE_BYTES 8388608
/* User messages (message, call, timer) a mailbox holds; past this they
 * are dropped and counted. Exit and down messages always get through. */
#define RUSM_MAILBOX_LIMIT 10000
/* A registered name is 1 to this many bytes of UTF-8. */
#define RUSM_MAX_NAME_BYTES 255

/* What rusm_request reads: its field argument. */
#define RUSM_REQ_METHOD 0      /* GET, POST, ... */
#define RUSM_REQ_PATH 1        /* the path as sent, without the query (still percent-encoded) */
#define RUSM_REQ_QUERY 2       /* the raw query string after '?', without the '?' */
#define RUSM_REQ_PARAM 3       /* a route parameter by name (key), decoded; "*": the wildcard's rest */
#define RUSM_REQ_HEADER 4      /* a header by name (key, any case); repeats joined with ", " */
#define RUSM_REQ_HEADERS 5     /* every header as "name: value\n" lines, names lower-case */
#define RUSM_REQ_BODY 6        /* the request body (de-chunked, read whole before the action runs) */
#define RUSM_REQ_QUERY_PARAM 7 /* the first query parameter by name (key), decoded */
#define RUSM_REQ_BLOCK 8       /* method, path, query, params and headers in one block */
/* The request block: entries back to back, each three little-endian u32s
 * (its RUSM_REQ_* field, key length, value length), then key, then value.
 * rusm_request_str and the helpers below read it once per request. */
#define RUSM_REQUEST_BLOCK_ENTRY_BYTES 12
/* The block a handler keeps: a larger request falls back to one host call
 * per field. Define it before including rusm.h to change it (0: never). */
#ifndef RUSM_REQUEST_BLOCK_BYTES
#define RUSM_REQUEST_BLOCK_BYTES 4096
#endif

/* A WebSocket message's type: rusm_ws_send's kind, a RUSM_KIND_FRAME's reason. */
#define RUSM_WS_TEXT 1   /* UTF-8 text */
#define RUSM_WS_BINARY 2 /* bytes */

/* rusm_respond's status range. */
#define RUSM_MIN_STATUS 200
#define RUSM_MAX_STATUS 599
/* The response header block one action may set. */
#define RUSM_MAX_RESPONSE_HEADER_BYTES 65536
/* Body bytes the host holds before it starts sending (chunked). */
#define RUSM_RESPONSE_HOLD_BYTES 16384
/* One SSE event's data, or one WebSocket message the guest sends (1 MiB). */
#define RUSM_MAX_EVENT_BYTES 1048576

/* The node store (rusm_kv_*). A bucket name is 1 to RUSM_KV_MAX_BUCKET_BYTES
 * of A-Z a-z 0-9 _ . -, and a store holds up to RUSM_KV_MAX_BUCKETS. */
#define RUSM_KV_MAX_BUCKET_BYTES 64
#define RUSM_KV_MAX_BUCKETS 1000
/* A key is 1 to this many bytes (any bytes; keys sort in byte order). */
#define RUSM_KV_MAX_KEY_BYTES 511
/* The largest value of one key (1 MiB). */
#define RUSM_KV_MAX_VALUE_BYTES 1048576
/* The largest rusm_kv_batch: all its records' bytes (8 MiB). */
#define RUSM_KV_MAX_BATCH_BYTES 8388608
/* Keys one rusm_kv_list returns at most, whatever its limit. */
#define RUSM_KV_MAX_LIST_KEYS 1000
/* A rusm_kv_batch record: a header of op (u8), key length (u16) and value
 * length (u32), little-endian and unpadded, then the key, then the value. */
#define RUSM_KV_OP_HEADER_BYTES 7
#define RUSM_KV_SET 1    /* store the value under the key */
#define RUSM_KV_DELETE 2 /* remove the key (value length 0) */

/* The stack buffer rusm_logf formats into; longer text is cut to fit. */
#ifndef RUSM_LOGF_MAX
#define RUSM_LOGF_MAX 1024
#endif

/* Marks a function as a wasm export, e.g. the entry, or a route's action
 * ("GET /" = "web#home" in rusm.toml):
 *     RUSM_EXPORT(run) void run(void) { ... }
 *     RUSM_EXPORT(home) int home(void) { ... }  (non-zero: crashed, 502)
 * A module of actions only (no main, no run) is built as a WASI reactor
 * (-mexec-model=reactor); the host calls its _initialize first.
 */
#define RUSM_EXPORT(name) __attribute__((export_name(#name)))

/* A process id: unique for the node's life, never reused. Its last three
 * decimal digits name the worker that hosts it. Pid 0 as a sender is the
 * operator (`rusmctl send`). */
typedef int64_t rusm_pid_t;

/* A monitor, timer or call reference (> 0). */
typedef int64_t rusm_ref_t;

/* What rusm_recv writes about a message (little-endian, as wasm is). */
typedef struct rusm_header {
    int32_t kind;     /* RUSM_KIND_* */
    int32_t reason;   /* RUSM_REASON_* for exit and down; RUSM_WS_* for frame; else 0 */
    rusm_pid_t from;  /* the sender; the exited process for exit and down; 0 for frame */
    rusm_ref_t ref;   /* the monitor (down), the call (call), the timer (timer), the close
                       * code (closed); else 0 */
    int32_t size;     /* the payload's size in bytes */
    int32_t reserved; /* 0 */
} rusm_header;

RUSM_STATIC_ASSERT(sizeof(rusm_header) == RUSM_HEADER_BYTES, "rusm_header is 32 bytes");
RUSM_STATIC_ASSERT(offsetof(rusm_header, kind) == 0, "rusm_header.kind at 0");
RUSM_STATIC_ASSERT(offsetof(rusm_header, reason) == 4, "rusm_header.reason at 4");
RUSM_STATIC_ASSERT(offsetof(rusm_header, from) == 8, "rusm_header.from at 8");
RUSM_STATIC_ASSERT(offsetof(rusm_header, ref) == 16, "rusm_header.ref at 16");
RUSM_STATIC_ASSERT(offsetof(rusm_header, size) == 24, "rusm_header.size at 24");
RUSM_STATIC_ASSERT(offsetof(rusm_header, reserved) == 28, "rusm_header.reserved at 28");

/* ── Raw imports ──────────────────────────────────────────────────────── */

/* ── The caller ── */

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

/* A free-form label for the caller (up to 255 bytes of UTF-8), shown by
 * `rusmctl list`. Returns RUSM_OK, RUSM_ERR_INVALID (bad UTF-8) or
 * RUSM_ERR_TOOBIG.
 * Wasm: rusm.set_label (i32 ptr, i32 len) -> (i32). Needs: always. */
__attribute__((import_module("rusm"), import_name("set_label")))
int32_t rusm_set_label(const char *text, size_t len);

/* ── Messages ── */

/* Put len bytes at data in pid's mailbox as a RUSM_KIND_MESSAGE. Messages
 * from one sender to one receiver arrive in the order sent. Returns
 * RUSM_OK (a receiver on another worker: delivered asynchronously, and
 * dropped if it has exited), RUSM_ERR_NOPROC (the pid is known dead; the
 * message is dropped), RUSM_ERR_LIMIT (the receiver is on the caller's
 * worker and its mailbox is full, or on another worker that has 16 MiB
 * waiting for it already; dropped), RUSM_ERR_TOOBIG (len over
 * RUSM_MAX_MESSAGE_BYTES).
 * Wasm: rusm.send (i64 pid, i32 ptr, i32 len) -> (i32). Needs: always. */
__attribute__((import_module("rusm"), import_name("send")))
int32_t rusm_send(rusm_pid_t pid, const void *data, size_t len);

/* Take the oldest message from the caller's mailbox, waiting up to
 * timeout_ms (RUSM_FOREVER: no limit; 0: only look). Writes its header
 * at header and its payload into buf, and returns the payload's size.
 * Returns RUSM_ERR_TIMEOUT when nothing came (no message is lost), or
 * RUSM_ERR_TOOBIG when buf_cap < the payload's size: the header is
 * written (header->size says what is needed) and the message stays in
 * the mailbox for a retry with a bigger buffer.
 * Wasm: rusm.recv (i32 header_ptr, i32 buf_ptr, i32 buf_cap, i32 timeout_ms) -> (i32).
 * Needs: always. */
__attribute__((import_module("rusm"), import_name("recv")))
int32_t rusm_recv(rusm_header *header, void *buf, size_t buf_cap, int32_t timeout_ms);

/* Send a request (req_len bytes at req) to pid, which receives it as a
 * RUSM_KIND_CALL, and wait up to timeout_ms for its rusm_reply. Returns
 * the reply's size; only buf_cap bytes of it are written into buf (like
 * snprintf). Returns RUSM_ERR_NOPROC when the callee is dead or dies
 * before replying, RUSM_ERR_TIMEOUT (a later reply is discarded),
 * RUSM_ERR_LIMIT (the callee's mailbox is full, or its worker has 16 MiB
 * waiting for it already), RUSM_ERR_TOOBIG, or
 * RUSM_ERR_INVALID (pid is the caller's own, or timeout_ms < -1).
 * Wasm: rusm.call (i64 pid, i32 req_ptr, i32 req_len, i32 buf_ptr, i32 buf_cap,
 * i32 timeout_ms) -> (i32). Needs: always. */
__attribute__((import_module("rusm"), import_name("call")))
int32_t rusm_call(rusm_pid_t pid, const void *req, size_t req_len, void *buf, size_t buf_cap,
                  int32_t timeout_ms);

/* Answer a RUSM_KIND_CALL message: pid and ref are its header's from and
 * ref. Returns RUSM_OK (also when the caller has stopped waiting: the
 * reply is discarded), RUSM_ERR_NOPROC or RUSM_ERR_TOOBIG.
 * Wasm: rusm.reply (i64 pid, i64 ref, i32 ptr, i32 len) -> (i32). Needs: always. */
__attribute__((import_module("rusm"), import_name("reply")))
int32_t rusm_reply(rusm_pid_t pid, rusm_ref_t ref, const void *data, size_t len);

/* ── Names ── */

/* Give the caller a node-wide name (1 to RUSM_MAX_NAME_BYTES of UTF-8),
 * released when it exits. Returns RUSM_OK, RUSM_ERR_EXISTS (the name is
 * taken, or the caller already has one), RUSM_ERR_INVALID or
 * RUSM_ERR_UNAVAILABLE (the registry did not answer). It waits for the
 * main process, which keeps the registry.
 * Wasm: rusm.register (i32 name_ptr, i32 name_len) -> (i32). Needs: always. */
__attribute__((import_module("rusm"), import_name("register")))
int32_t rusm_register(const char *name, size_t name_len);

/* Drop the caller's own name. Returns RUSM_OK, RUSM_ERR_NOTFOUND (nobody
 * has it), RUSM_ERR_DENIED (another process has it) or RUSM_ERR_INVALID.
 * Wasm: rusm.unregister (i32 name_ptr, i32 name_len) -> (i32). Needs: always. */
__attribute__((import_module("rusm"), import_name("unregister")))
int32_t rusm_unregister(const char *name, size_t name_len);

/* The pid registered under a name, RUSM_ERR_NOTFOUND or RUSM_ERR_INVALID.
 * A name registered on another worker shows here a moment later.
 * Wasm: rusm.whereis (i32 name_ptr, i32 name_len) -> (i64). Needs: always. */
__attribute__((import_module("rusm"), import_name("whereis")))
rusm_pid_t rusm_whereis(const char *name, size_t name_len);

/* ── Links and monitors ── */

/* Link the caller and pid, both ways: when one exits with a reason other
 * than normal, the other exits with the same reason, or, if it traps
 * exits, gets a RUSM_KIND_EXIT message. Returns RUSM_OK, or
 * RUSM_ERR_NOPROC when pid is known dead.
 * Wasm: rusm.link (i64 pid) -> (i32). Needs: always. */
__attribute__((import_module("rusm"), import_name("link")))
int32_t rusm_link(rusm_pid_t pid);

/* Remove the link between the caller and pid, if any. Returns RUSM_OK.
 * Wasm: rusm.unlink (i64 pid) -> (i32). Needs: always. */
__attribute__((import_module("rusm"), import_name("unlink")))
int32_t rusm_unlink(rusm_pid_t pid);

/* Watch pid: when it exits, the caller gets one RUSM_KIND_DOWN message
 * with this ref and the exit reason (at once, RUSM_REASON_NOPROC, if pid
 * is not alive). One-way; monitors stack. Returns the monitor ref (> 0).
 * Wasm: rusm.monitor (i64 pid) -> (i64). Needs: always. */
__attribute__((import_module("rusm"), import_name("monitor")))
rusm_ref_t rusm_monitor(rusm_pid_t pid);

/* Drop a monitor, and the down message it already queued if any. Returns
 * RUSM_OK, or RUSM_ERR_NOTFOUND.
 * Wasm: rusm.demonitor (i64 ref) -> (i32). Needs: always. */
__attribute__((import_module("rusm"), import_name("demonitor")))
int32_t rusm_demonitor(rusm_ref_t ref);

/* on != 0: exit signals from links arrive as RUSM_KIND_EXIT messages
 * instead of ending the caller; on = 0: they end it (the default). A kill
 * is never trapped. Returns the old value (0 or 1).
 * Wasm: rusm.trap_exit (i32 on) -> (i32). Needs: always. */
__attribute__((import_module("rusm"), import_name("trap_exit")))
int32_t rusm_trap_exit(int32_t on);

/* Send an exit signal with a reason (RUSM_REASON_*). To the caller itself,
 * it ends the caller with that reason (no return). Another pid traps it
 * (an exit message) or exits with the reason, except that it ignores
 * RUSM_REASON_NORMAL; RUSM_REASON_KILLED is a kill. Returns RUSM_OK,
 * RUSM_ERR_NOPROC, RUSM_ERR_INVALID (an unknown reason, or noproc), or
 * RUSM_ERR_DENIED for another pid without allow-process-control.
 * Wasm: rusm.exit_signal (i64 pid, i32 reason) -> (i32). Needs: always. */
__attribute__((import_module("rusm"), import_name("exit_signal")))
int32_t rusm_exit_signal(rusm_pid_t pid, int32_t reason);

/* ── Processes ── */

/* Kill a process, untrappably: it exits with reason killed. The caller's
 * own pid ends the caller. Returns RUSM_OK, RUSM_ERR_NOPROC if no such
 * process is alive, or RUSM_ERR_DENIED for another pid without
 * allow-process-control.
 * Wasm: rusm.kill (i64 pid) -> (i32). Needs: always. */
__attribute__((import_module("rusm"), import_name("kill")))
int32_t rusm_kill(rusm_pid_t pid);

/* 1 if the process is alive, 0 if not, or RUSM_ERR_DENIED for another pid
 * without allow-process-control.
 * Wasm: rusm.is_alive (i64 pid) -> (i32). Needs: always. */
__attribute__((import_module("rusm"), import_name("is_alive")))
int32_t rusm_is_alive(rusm_pid_t pid);

/* Write up to max pids of this node's processes into pids and return how
 * many there are (which may be more than max), or RUSM_ERR_INVALID for a
 * negative max. Without allow-process-control the list holds only the
 * caller's own pid.
 * Wasm: rusm.list (i32 buf_ptr, i32 max) -> (i32). Needs: always. */
__attribute__((import_module("rusm"), import_name("list")))
int32_t rusm_list(rusm_pid_t *pids, size_t max);

/* Describe a process as a JSON object: pid, component, label
 * (component#pid), worker, state, memory_bytes, uptime_s, links, monitors,
 * names, mailbox, label_text (from rusm_set_label), ...
 * Returns the JSON's size; only buf_cap bytes of it are written, with no
 * NUL (like snprintf, but never terminated). Returns RUSM_ERR_NOPROC, or
 * RUSM_ERR_DENIED for another pid without allow-process-control.
 * The C name is not rusm_info, which is the log helper below.
 * Wasm: rusm.info (i64 pid, i32 buf_ptr, i32 buf_cap) -> (i32). Needs: always. */
__attribute__((import_module("rusm"), import_name("info")))
int32_t rusm_process_info(rusm_pid_t pid, char *buf, size_t buf_cap);

/* ── Timers ── */

/* After ms milliseconds, put a RUSM_KIND_TIMER message with len bytes of
 * data in pid's mailbox (from: the caller, ref: this timer). The timer is
 * cancelled if the caller exits first. Returns the timer ref (> 0),
 * RUSM_ERR_INVALID (negative ms), RUSM_ERR_TOOBIG or RUSM_ERR_LIMIT (10,000
 * timers pending).
 * Wasm: rusm.send_after (i64 pid, i32 ms, i32 ptr, i32 len) -> (i64). Needs: always. */
__attribute__((import_module("rusm"), import_name("send_after")))
rusm_ref_t rusm_send_after(rusm_pid_t pid, int32_t ms, const void *data, size_t len);

/* Cancel a timer: RUSM_OK if it had not fired (it never will), or
 * RUSM_ERR_NOTFOUND (it fired, was cancelled, or is unknown).
 * Wasm: rusm.cancel_timer (i64 ref) -> (i32). Needs: always. */
__attribute__((import_module("rusm"), import_name("cancel_timer")))
int32_t rusm_cancel_timer(rusm_ref_t ref);

/* ── Spawning (allow-spawn) ── */

/* Start the registered component [components.<name>] (name_len bytes of
 * UTF-8 at name) under its own profile. Returns its pid (>= 0), or
 * RUSM_ERR_NOTFOUND (no such component), RUSM_ERR_UNAVAILABLE (it failed
 * to load), RUSM_ERR_LIMIT (no room for another process) or
 * RUSM_ERR_INVALID (bad UTF-8).
 * Wasm: rusm.spawn (i32 name_ptr, i32 name_len) -> (i64). Needs: allow-spawn. */
__attribute__((import_module("rusm"), import_name("spawn")))
rusm_pid_t rusm_spawn(const char *name, size_t name_len);

/* rusm_spawn, with the child linked to the caller before it runs.
 * Wasm: rusm.spawn_link (i32 name_ptr, i32 name_len) -> (i64). Needs: allow-spawn. */
__attribute__((import_module("rusm"), import_name("spawn_link")))
rusm_pid_t rusm_spawn_link(const char *name, size_t name_len);

/* Start a supervisor from a JSON spec (spec_len bytes at spec; see
 * docs/abi.md) on the caller's worker, linked to the caller. Returns its
 * pid, or RUSM_ERR_INVALID (a bad spec; the reason is logged),
 * RUSM_ERR_NOTFOUND (a child's component) or RUSM_ERR_UNAVAILABLE.
 * Wasm: rusm.supervise (i32 spec_ptr, i32 spec_len) -> (i64). Needs: allow-spawn. */
__attribute__((import_module("rusm"), import_name("supervise")))
rusm_pid_t rusm_supervise(const char *spec, size_t spec_len);

/* ── Storage (allow-storage, checked per call) ── */

/* The kv functions read and write the node store ([node] store in the
 * manifest). Every module may import them; each call returns
 * RUSM_ERR_DENIED when the profile lacks allow-storage, RUSM_ERR_NOSTORE
 * when the node has no store, RUSM_ERR_UNAVAILABLE when the store failed to
 * open (or a commit failed), and RUSM_ERR_INVALID for a bad bucket name
 * or key. None of these ends the caller; a bad pointer does. */

/* Read the value of key in bucket. Returns the value's size; only buf_cap
 * bytes of it are written (like snprintf, but never terminated), so a call
 * with buf_cap 0 asks for the size. Returns RUSM_ERR_NOTFOUND (no such key)
 * or a store error.
 * Wasm: rusm.kv_get (i32 bucket_ptr, i32 bucket_len, i32 key_ptr, i32 key_len, i32 buf_ptr,
 * i32 buf_cap) -> (i32). Needs: allow-storage. */
__attribute__((import_module("rusm"), import_name("kv_get")))
int32_t rusm_kv_get(const char *bucket, size_t bucket_len, const void *key, size_t key_len,
                    void *buf, size_t buf_cap);

/* 1 if bucket holds key, 0 if not, or a store error.
 * Wasm: rusm.kv_exists (i32 bucket_ptr, i32 bucket_len, i32 key_ptr, i32 key_len) -> (i32).
 * Needs: allow-storage. */
__attribute__((import_module("rusm"), import_name("kv_exists")))
int32_t rusm_kv_exists(const char *bucket, size_t bucket_len, const void *key, size_t key_len);

/* Store value_len bytes at value under key in bucket (created by its first
 * write). Returns RUSM_OK once the commit holding the write is on disk,
 * or RUSM_ERR_TOOBIG (value over RUSM_KV_MAX_VALUE_BYTES), RUSM_ERR_LIMIT
 * (a new bucket past RUSM_KV_MAX_BUCKETS) or a store error. It waits for
 * the disk, without a timeout and without using CPU budget.
 * Wasm: rusm.kv_set (i32 bucket_ptr, i32 bucket_len, i32 key_ptr, i32 key_len, i32 val_ptr,
 * i32 val_len) -> (i32). Needs: allow-storage. */
__attribute__((import_module("rusm"), import_name("kv_set")))
int32_t rusm_kv_set(const char *bucket, size_t bucket_len, const void *key, size_t key_len,
                    const void *value, size_t value_len);

/* Remove key from bucket, durably as rusm_kv_set. Returns RUSM_OK,
 * RUSM_ERR_NOTFOUND (it was not there) or a store error.
 * Wasm: rusm.kv_delete (i32 bucket_ptr, i32 bucket_len, i32 key_ptr, i32 key_len) -> (i32).
 * Needs: allow-storage. */
__attribute__((import_module("rusm"), import_name("kv_delete")))
int32_t rusm_kv_delete(const char *bucket, size_t bucket_len, const void *key, size_t key_len);

/* Apply the records at ops (ops_len bytes; see RUSM_KV_OP_HEADER_BYTES and
 * rusm_kv_batch_add) to bucket in order, all together or not at all, in
 * one durable commit. A delete of a missing key is not an error here; an
 * empty batch returns RUSM_OK. Returns RUSM_OK, RUSM_ERR_INVALID (a
 * malformed, truncated or unknown record, a bad key, a delete with a
 * value), RUSM_ERR_TOOBIG (a value over RUSM_KV_MAX_VALUE_BYTES, or
 * ops_len over RUSM_KV_MAX_BATCH_BYTES), RUSM_ERR_LIMIT or a store error.
 * Wasm: rusm.kv_batch (i32 bucket_ptr, i32 bucket_len, i32 ops_ptr, i32 ops_len) -> (i32).
 * Needs: allow-storage. */
__attribute__((import_module("rusm"), import_name("kv_batch")))
int32_t rusm_kv_batch(const char *bucket, size_t bucket_len, const void *ops, size_t ops_len);

/* List the keys of bucket that start with prefix, in byte order, strictly
 * after the key after (after_len 0: from the first). Writes up to limit
 * keys (and at most RUSM_KV_MAX_LIST_KEYS) that fit whole in buf, each as
 * a u16 little-endian length then its bytes (read them with
 * rusm_kv_list_next), and returns how many; 0 means there are no more.
 * To page, call again with after = the last key returned. Returns
 * RUSM_ERR_TOOBIG when even the first key does not fit (2 +
 * RUSM_KV_MAX_KEY_BYTES bytes always hold one), RUSM_ERR_INVALID (a
 * negative limit, a prefix or after over RUSM_KV_MAX_KEY_BYTES) or a store
 * error.
 * Wasm: rusm.kv_list (i32 bucket_ptr, i32 bucket_len, i32 prefix_ptr, i32 prefix_len,
 * i32 after_ptr, i32 after_len, i32 limit, i32 buf_ptr, i32 buf_cap) -> (i32).
 * Needs: allow-storage. */
__attribute__((import_module("rusm"), import_name("kv_list")))
int32_t rusm_kv_list(const char *bucket, size_t bucket_len, const void *prefix, size_t prefix_len,
                     const void *after, size_t after_len, int32_t limit, void *buf,
                     size_t buf_cap);

/* ── Serving ── */

/* Read one field (RUSM_REQ_*) of the request the caller serves; key (key_len
 * bytes) names the route param, header or query param, and is ignored for
 * the other fields. Returns the field's full size; only buf_cap bytes of it
 * are written, with no NUL (like snprintf, but never terminated), so a call
 * with buf_cap 0 asks for the size. Returns RUSM_ERR_NOTFOUND (no such
 * param, header or query param), RUSM_ERR_INVALID (an unknown field) or
 * RUSM_ERR_UNAVAILABLE (the caller serves no request).
 * Wasm: rusm.request (i32 field, i32 key_ptr, i32 key_len, i32 buf_ptr, i32 buf_cap) -> (i32).
 * Needs: always. */
__attribute__((import_module("rusm"), import_name("request")))
int32_t rusm_request(int32_t field, const char *key, size_t key_len, void *buf, size_t buf_cap);

/* Answer the request: a status (RUSM_MIN_STATUS..RUSM_MAX_STATUS), headers
 * as "Name: value" lines separated by "\n" (headers_len 0 for none), and
 * the first body bytes (more with rusm_write). Content-Length,
 * Transfer-Encoding, Connection and Upgrade are the host's: setting one is
 * RUSM_ERR_INVALID. Without a Content-Type the host sends
 * "text/plain; charset=utf-8". Returns RUSM_OK, RUSM_ERR_INVALID (a bad
 * status or header line; the platform log names it), RUSM_ERR_TOOBIG
 * (headers over RUSM_MAX_RESPONSE_HEADER_BYTES), RUSM_ERR_EXISTS (already
 * answered), RUSM_ERR_CLOSED or RUSM_ERR_UNAVAILABLE.
 * Wasm: rusm.respond (i32 status, i32 headers_ptr, i32 headers_len, i32 body_ptr,
 * i32 body_len) -> (i32). Needs: always. */
__attribute__((import_module("rusm"), import_name("respond")))
int32_t rusm_respond(int32_t status, const char *headers, size_t headers_len, const void *body,
                     size_t body_len);

/* Append len bytes to the response body; answers 200 first if rusm_respond
 * was not called. Returns RUSM_OK, RUSM_ERR_CLOSED or RUSM_ERR_UNAVAILABLE.
 * Wasm: rusm.write (i32 ptr, i32 len) -> (i32). Needs: always. */
__attribute__((import_module("rusm"), import_name("write")))
int32_t rusm_write(const void *data, size_t len);

/* Send what the host holds of the response now. A response that is never
 * flushed and fits in RUSM_RESPONSE_HOLD_BYTES goes out with
 * Content-Length when the action returns; a flushed one is chunked.
 * Returns RUSM_OK, RUSM_ERR_CLOSED or RUSM_ERR_UNAVAILABLE.
 * Wasm: rusm.flush () -> (i32). Needs: always. */
__attribute__((import_module("rusm"), import_name("flush")))
int32_t rusm_flush(void);

/* Send one server-sent event: an "event:" line when name_len > 0, then
 * data split on "\n" into "data:" lines. The first event (or flush) sends
 * the stream's headers. Returns RUSM_OK, RUSM_ERR_CLOSED (the client left:
 * return), RUSM_ERR_INVALID (CR or LF in the name), RUSM_ERR_TOOBIG (data
 * over RUSM_MAX_EVENT_BYTES) or RUSM_ERR_UNAVAILABLE.
 * Wasm: rusm.sse_event (i32 name_ptr, i32 name_len, i32 data_ptr, i32 data_len) -> (i32).
 * Needs: always. */
__attribute__((import_module("rusm"), import_name("sse_event")))
int32_t rusm_sse_event(const char *name, size_t name_len, const void *data, size_t data_len);

/* Send one WebSocket message: kind RUSM_WS_TEXT (must be UTF-8) or
 * RUSM_WS_BINARY. Returns RUSM_OK, RUSM_ERR_CLOSED, RUSM_ERR_INVALID,
 * RUSM_ERR_TOOBIG (over RUSM_MAX_EVENT_BYTES) or RUSM_ERR_UNAVAILABLE.
 * Wasm: rusm.ws_send (i32 kind, i32 ptr, i32 len) -> (i32). Needs: always. */
__attribute__((import_module("rusm"), import_name("ws_send")))
int32_t rusm_ws_send(int32_t kind, const void *data, size_t len);

/* Close the WebSocket with a code (1000, or 3000-4999) and a reason of up
 * to 123 bytes of UTF-8. Returns RUSM_OK, RUSM_ERR_CLOSED (already closed),
 * RUSM_ERR_INVALID or RUSM_ERR_UNAVAILABLE.
 * Wasm: rusm.ws_close (i32 code, i32 reason_ptr, i32 reason_len) -> (i32). Needs: always. */
__attribute__((import_module("rusm"), import_name("ws_close")))
int32_t rusm_ws_close(int32_t code, const char *reason, size_t reason_len);

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

/* rusm_set_label with a NUL-terminated string. Needs: always. */
static inline int32_t rusm_set_label_str(const char *text) {
    return rusm_set_label(text, strlen(text));
}

/* rusm_send with a NUL-terminated string (the NUL is not sent). Needs: always. */
static inline int32_t rusm_send_str(rusm_pid_t pid, const char *text) {
    return rusm_send(pid, text, strlen(text));
}

/* rusm_reply with a NUL-terminated string (the NUL is not sent). Needs: always. */
static inline int32_t rusm_reply_str(rusm_pid_t pid, rusm_ref_t ref, const char *text) {
    return rusm_reply(pid, ref, text, strlen(text));
}

/* rusm_register, rusm_unregister, rusm_whereis with a NUL-terminated
 * name. Needs: always. */
static inline int32_t rusm_register_str(const char *name) {
    return rusm_register(name, strlen(name));
}
static inline int32_t rusm_unregister_str(const char *name) {
    return rusm_unregister(name, strlen(name));
}
static inline rusm_pid_t rusm_whereis_str(const char *name) {
    return rusm_whereis(name, strlen(name));
}

/* rusm_send to the process registered under a NUL-terminated name:
 * the send's result, or RUSM_ERR_NOTFOUND when nobody has the name.
 * Needs: always. */
static inline int32_t rusm_send_name(const char *name, const void *data, size_t len) {
    rusm_pid_t pid = rusm_whereis_str(name);
    return pid < 0 ? (int32_t)pid : rusm_send(pid, data, len);
}

/* rusm_spawn, rusm_spawn_link with a NUL-terminated component name.
 * Needs: allow-spawn. */
static inline rusm_pid_t rusm_spawn_str(const char *name) {
    return rusm_spawn(name, strlen(name));
}
static inline rusm_pid_t rusm_spawn_link_str(const char *name) {
    return rusm_spawn_link(name, strlen(name));
}

/* rusm_supervise with a NUL-terminated JSON spec. Needs: allow-spawn. */
static inline rusm_pid_t rusm_supervise_str(const char *spec) {
    return rusm_supervise(spec, strlen(spec));
}

#if RUSM_REQUEST_BLOCK_BYTES > 0
/* The request block, read by the first helper that needs a field (an
 * instance serves one request, so it is never stale): one host call for
 * every param and header a handler reads. -1: not read yet; -2: it did not
 * fit (or there is no request), so each field is asked for on its own. */
static unsigned char rusm_internal_block[RUSM_REQUEST_BLOCK_BYTES];
static int32_t rusm_internal_block_len = -1;

static inline uint32_t rusm_internal_u32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline int rusm_internal_key_is(const unsigned char *have, size_t have_len,
                                       const char *want, size_t want_len, int any_case) {
    if (have_len != want_len) {
        return 0;
    }
    for (size_t i = 0; i < want_len; i++) {
        unsigned char a = have[i], b = (unsigned char)want[i];
        if (any_case && b >= 'A' && b <= 'Z') {
            b = (unsigned char)(b + ('a' - 'A'));
        }
        if (a != b) {
            return 0;
        }
    }
    return 1;
}

/* Find field (with key) in the block: its value's length and *value, or
 * RUSM_ERR_NOTFOUND; RUSM_ERR_UNAVAILABLE when the block cannot answer
 * (not read, too big, or a header that repeats: the host joins those). */
static inline int32_t rusm_internal_block_find(int32_t field, const char *key,
                                               const unsigned char **value) {
    if (field != RUSM_REQ_METHOD && field != RUSM_REQ_PATH && field != RUSM_REQ_QUERY &&
        field != RUSM_REQ_PARAM && field != RUSM_REQ_HEADER) {
        return RUSM_ERR_UNAVAILABLE;
    }
    if (rusm_internal_block_len == -1) {
        int32_t n = rusm_request(RUSM_REQ_BLOCK, NULL, 0, rusm_internal_block,
                                 sizeof rusm_internal_block);
        rusm_internal_block_len = n >= 0 && (size_t)n <= sizeof rusm_internal_block ? n : -2;
    }
    if (rusm_internal_block_len < 0) {
        return RUSM_ERR_UNAVAILABLE;
    }
    size_t key_len = key == NULL ? 0 : strlen(key);
    int keyed = field == RUSM_REQ_PARAM || field == RUSM_REQ_HEADER;
    int32_t found = RUSM_ERR_NOTFOUND;
    const unsigned char *at = rusm_internal_block;
    const unsigned char *end = at + rusm_internal_block_len;
    while ((size_t)(end - at) >= RUSM_REQUEST_BLOCK_ENTRY_BYTES) {
        uint32_t kind = rusm_internal_u32(at);
        uint32_t klen = rusm_internal_u32(at + 4);
        uint32_t vlen = rusm_internal_u32(at + 8);
        at += RUSM_REQUEST_BLOCK_ENTRY_BYTES;
        if ((size_t)(end - at) < (size_t)klen + vlen) {
            return RUSM_ERR_UNAVAILABLE; /* cannot happen: the host wrote it */
        }
        if ((int32_t)kind == field &&
            (!keyed || rusm_internal_key_is(at, klen, key, key_len, field == RUSM_REQ_HEADER))) {
            if (found >= 0) {
                return RUSM_ERR_UNAVAILABLE; /* a repeated header: ask the host */
            }
            *value = at + klen;
            found = (int32_t)vlen;
            if (field != RUSM_REQ_HEADER) {
                break;
            }
        }
        at += klen + vlen;
    }
    return found;
}
#endif

/* Read a request field into buf as a NUL-terminated string; key (a
 * NUL-terminated name, or NULL) as for rusm_request. Returns its length,
 * RUSM_ERR_TOOBIG when it does not fit with its NUL (buf is then "", and
 * rusm_request(field, key, len, NULL, 0) says the size), or
 * rusm_request's error. The method, path, query, params and headers come
 * from the request block (one host call for them all, see
 * RUSM_REQUEST_BLOCK_BYTES). Needs: always. */
static inline int32_t rusm_request_str(int32_t field, const char *key, char *buf, size_t buf_cap) {
    if (buf_cap == 0) {
        return RUSM_ERR_TOOBIG;
    }
    buf[0] = '\0';
    int32_t n;
#if RUSM_REQUEST_BLOCK_BYTES > 0
    const unsigned char *value = NULL;
    n = rusm_internal_block_find(field, key, &value);
    if (n >= 0 && (size_t)n < buf_cap) {
        memcpy(buf, value, (size_t)n);
    }
    if (n == RUSM_ERR_UNAVAILABLE)
#endif
        n = rusm_request(field, key, key == NULL ? 0 : strlen(key), buf, buf_cap);
    if (n < 0) {
        return n;
    }
    if ((size_t)n >= buf_cap) {
        buf[0] = '\0';
        return RUSM_ERR_TOOBIG;
    }
    buf[n] = '\0';
    return n;
}

/* A route parameter (":name", or "*" for the wildcard's rest), a header
 * (any case) or a query parameter, decoded, into buf as a NUL-terminated
 * string: as rusm_request_str (RUSM_ERR_NOTFOUND when absent).
 * Needs: always. */
static inline int32_t rusm_param(const char *name, char *buf, size_t buf_cap) {
    return rusm_request_str(RUSM_REQ_PARAM, name, buf, buf_cap);
}
static inline int32_t rusm_request_header(const char *name, char *buf, size_t buf_cap) {
    return rusm_request_str(RUSM_REQ_HEADER, name, buf, buf_cap);
}
static inline int32_t rusm_query_param(const char *name, char *buf, size_t buf_cap) {
    return rusm_request_str(RUSM_REQ_QUERY_PARAM, name, buf, buf_cap);
}

/* rusm_respond with NUL-terminated headers (NULL for none) and body.
 * Needs: always. */
static inline int32_t rusm_respond_str(int32_t status, const char *headers, const char *body) {
    return rusm_respond(status, headers, headers == NULL ? 0 : strlen(headers), body,
                        strlen(body));
}

/* Answer with a NUL-terminated body as "text/plain; charset=utf-8".
 * Needs: always. */
static inline int32_t rusm_respond_text(int32_t status, const char *body) {
    return rusm_respond_str(status, "Content-Type: text/plain; charset=utf-8", body);
}

/* rusm_write with a NUL-terminated string. Needs: always. */
static inline int32_t rusm_write_str(const char *text) { return rusm_write(text, strlen(text)); }

/* rusm_sse_event with a NUL-terminated name ("" or NULL for none) and data.
 * Needs: always. */
static inline int32_t rusm_sse_event_str(const char *name, const char *data) {
    return rusm_sse_event(name, name == NULL ? 0 : strlen(name), data, strlen(data));
}

/* Send a NUL-terminated string as a WebSocket text message. Needs: always. */
static inline int32_t rusm_ws_send_text(const char *text) {
    return rusm_ws_send(RUSM_WS_TEXT, text, strlen(text));
}

/* rusm_ws_close with a NUL-terminated reason (NULL for none). Needs: always. */
static inline int32_t rusm_ws_close_str(int32_t code, const char *reason) {
    return rusm_ws_close(code, reason, reason == NULL ? 0 : strlen(reason));
}

/* rusm_kv_get with a NUL-terminated bucket and key, reading the value into
 * buf as a NUL-terminated string. Returns its length, RUSM_ERR_TOOBIG when
 * it does not fit with its NUL (buf is then ""), or rusm_kv_get's error.
 * Needs: allow-storage. */
static inline int32_t rusm_kv_get_str(const char *bucket, const char *key, char *buf,
                                      size_t buf_cap) {
    if (buf_cap == 0) {
        return RUSM_ERR_TOOBIG;
    }
    buf[0] = '\0';
    int32_t n = rusm_kv_get(bucket, strlen(bucket), key, strlen(key), buf, buf_cap);
    if (n < 0) {
        return n;
    }
    if ((size_t)n >= buf_cap) {
        buf[0] = '\0';
        return RUSM_ERR_TOOBIG;
    }
    buf[n] = '\0';
    return n;
}

/* rusm_kv_exists, rusm_kv_delete with a NUL-terminated bucket and key.
 * Needs: allow-storage. */
static inline int32_t rusm_kv_exists_str(const char *bucket, const char *key) {
    return rusm_kv_exists(bucket, strlen(bucket), key, strlen(key));
}
static inline int32_t rusm_kv_delete_str(const char *bucket, const char *key) {
    return rusm_kv_delete(bucket, strlen(bucket), key, strlen(key));
}

/* rusm_kv_set with a NUL-terminated bucket, key and value (the value's NUL
 * is not stored). Needs: allow-storage. */
static inline int32_t rusm_kv_set_str(const char *bucket, const char *key, const char *value) {
    return rusm_kv_set(bucket, strlen(bucket), key, strlen(key), value, strlen(value));
}

/* Append one rusm_kv_batch record (op RUSM_KV_SET or RUSM_KV_DELETE, the
 * key, the value) to the used bytes of buf (buf_cap bytes). Returns the
 * batch's new length, or, writing nothing: RUSM_ERR_INVALID (an unknown
 * op, a key of 0 or over RUSM_KV_MAX_KEY_BYTES bytes, a delete with a
 * value), RUSM_ERR_TOOBIG (a value over RUSM_KV_MAX_VALUE_BYTES, or the
 * record does not fit in buf_cap or in RUSM_KV_MAX_BATCH_BYTES). The host
 * would refuse the same records with the same codes. Imports nothing. */
static inline int32_t rusm_kv_batch_add(void *buf, size_t buf_cap, size_t used, int32_t op,
                                        const void *key, size_t key_len, const void *value,
                                        size_t value_len) {
    if ((op != RUSM_KV_SET && op != RUSM_KV_DELETE) || key_len == 0 ||
        key_len > RUSM_KV_MAX_KEY_BYTES || (op == RUSM_KV_DELETE && value_len != 0)) {
        return RUSM_ERR_INVALID;
    }
    if (value_len > RUSM_KV_MAX_VALUE_BYTES) {
        return RUSM_ERR_TOOBIG;
    }
    size_t record = RUSM_KV_OP_HEADER_BYTES + key_len + value_len;
    size_t room = buf_cap < RUSM_KV_MAX_BATCH_BYTES ? buf_cap : RUSM_KV_MAX_BATCH_BYTES;
    if (used > room || record > room - used) {
        return RUSM_ERR_TOOBIG;
    }
    unsigned char *at = (unsigned char *)buf + used;
    at[0] = (unsigned char)op;
    at[1] = (unsigned char)(key_len & 0xFF);
    at[2] = (unsigned char)(key_len >> 8);
    at[3] = (unsigned char)(value_len & 0xFF);
    at[4] = (unsigned char)((value_len >> 8) & 0xFF);
    at[5] = (unsigned char)((value_len >> 16) & 0xFF);
    at[6] = (unsigned char)((value_len >> 24) & 0xFF);
    memcpy(at + RUSM_KV_OP_HEADER_BYTES, key, key_len);
    if (value_len != 0) {
        memcpy(at + RUSM_KV_OP_HEADER_BYTES + key_len, value, value_len);
    }
    return (int32_t)(used + record);
}

/* Step through the keys rusm_kv_list wrote into buf. *count starts as its
 * result and *offset as 0. Returns 1 and points *key (not NUL-terminated;
 * *key_len bytes) at the next key inside buf, or returns 0, changing
 * nothing, when *count is 0 or an error: after the loop *key is the last
 * key, the after of the next page (copy it out before buf is reused).
 * Imports nothing. */
static inline int rusm_kv_list_next(const void *buf, int32_t *count, size_t *offset,
                                    const char **key, size_t *key_len) {
    if (*count <= 0) {
        return 0;
    }
    const unsigned char *at = (const unsigned char *)buf + *offset;
    size_t len = (size_t)at[0] | (size_t)at[1] << 8;
    *key = (const char *)(at + 2);
    *key_len = len;
    *offset += 2 + len;
    *count -= 1;
    return 1;
}

/* The name of an exit reason ("normal", "shutdown", "killed", "crashed",
 * "noproc"), or "unknown". */
static inline const char *rusm_reason_name(int32_t reason) {
    switch (reason) {
    case RUSM_REASON_NORMAL:
        return "normal";
    case RUSM_REASON_SHUTDOWN:
        return "shutdown";
    case RUSM_REASON_KILLED:
        return "killed";
    case RUSM_REASON_CRASHED:
        return "crashed";
    case RUSM_REASON_NOPROC:
        return "noproc";
    default:
        return "unknown";
    }
}

/* A short description of a result code; "ok" for any success value.
 * Pass a pid- or ref-returning result through it as (int)result when it
 * is < 0. */
static inline const char *rusm_strerror(int code) {
    switch (code) {
    case RUSM_ERR_NOPROC:
        return "no such process";
    case RUSM_ERR_DENIED:
        return "denied";
    case RUSM_ERR_INVALID:
        return "invalid argument";
    case RUSM_ERR_NOTFOUND:
        return "not found";
    case RUSM_ERR_LIMIT:
        return "limit reached";
    case RUSM_ERR_TIMEOUT:
        return "timed out";
    case RUSM_ERR_UNAVAILABLE:
        return "unavailable";
    case RUSM_ERR_TOOBIG:
        return "too big";
    case RUSM_ERR_EXISTS:
        return "already exists";
    case RUSM_ERR_CLOSED:
        return "closed";
    case RUSM_ERR_NOSTORE:
        return "no store configured";
    default:
        return code >= 0 ? "ok" : "unknown error";
    }
}

/* ── Request helpers ──────────────────────────────────────────────────── */

/* The request's method ("GET", "POST", ...), its path (without the query,
 * still percent-encoded) and its raw query string (without the '?'; "" for
 * none), into buf as NUL-terminated strings: as rusm_request_str.
 * Needs: always. */
static inline int32_t rusm_method(char *buf, size_t buf_cap) {
    return rusm_request_str(RUSM_REQ_METHOD, NULL, buf, buf_cap);
}
static inline int32_t rusm_path(char *buf, size_t buf_cap) {
    return rusm_request_str(RUSM_REQ_PATH, NULL, buf, buf_cap);
}
static inline int32_t rusm_query(char *buf, size_t buf_cap) {
    return rusm_request_str(RUSM_REQ_QUERY, NULL, buf, buf_cap);
}

/* Whether the request's method is method (a NUL-terminated name, e.g.
 * "POST"): 1 or 0 (0 also when there is no request). Needs: always. */
static inline int rusm_method_is(const char *method) {
    char have[16];
    return rusm_method(have, sizeof have) >= 0 && strcmp(have, method) == 0;
}

/* The request body's bytes into buf, not NUL-terminated. Returns the
 * body's whole size: only buf_cap bytes of it are written when it is
 * larger (like snprintf; rusm_body(NULL, 0) asks for the size), or
 * RUSM_ERR_UNAVAILABLE when the caller serves no request. Needs: always. */
static inline int32_t rusm_body(void *buf, size_t buf_cap) {
    return rusm_request(RUSM_REQ_BODY, NULL, 0, buf, buf_cap);
}

/* The request body into buf as a NUL-terminated string (a JSON or form
 * body, say): its length, or RUSM_ERR_TOOBIG when it does not fit with its
 * NUL (buf is then ""). A body with a NUL byte in it reads as text up to
 * that byte; use rusm_body for bytes. Needs: always. */
static inline int32_t rusm_body_str(char *buf, size_t buf_cap) {
    return rusm_request_str(RUSM_REQ_BODY, NULL, buf, buf_cap);
}

/* Answer with a NUL-terminated JSON document as "application/json".
 * Needs: always. */
static inline int32_t rusm_respond_json(int32_t status, const char *json) {
    return rusm_respond_str(status, "Content-Type: application/json", json);
}

/* ── JSON ─────────────────────────────────────────────────────────────── */

/* Write text (len bytes of UTF-8) into out as a JSON string: quoted, with
 * '"', '\\' and control characters escaped (\n, \t, \u00XX ...), and a NUL
 * after it. Returns the length written without the NUL, or
 * RUSM_ERR_TOOBIG when it does not fit (out is then ""). Bytes above 0x7F
 * are copied as they are: pass UTF-8. Imports nothing. */
static inline int32_t rusm_json_escape(char *out, size_t out_cap, const char *text, size_t len) {
    static const char hex[] = "0123456789abcdef";
    size_t at = 0;
    if (out_cap == 0) {
        return RUSM_ERR_TOOBIG;
    }
    for (size_t i = 0; i <= len + 1; i++) {
        char piece[6];
        size_t piece_len = 1;
        if (i == 0 || i == len + 1) {
            piece[0] = '"';
        } else {
            unsigned char c = (unsigned char)text[i - 1];
            piece[0] = (char)c;
            if (c == '"' || c == '\\') {
                piece[0] = '\\';
                piece[1] = (char)c;
                piece_len = 2;
            } else if (c == '\n' || c == '\r' || c == '\t') {
                piece[0] = '\\';
                piece[1] = c == '\n' ? 'n' : c == '\r' ? 'r' : 't';
                piece_len = 2;
            } else if (c < 0x20 || c == 0x7F) {
                memcpy(piece, "\\u00", 4);
                piece[4] = hex[c >> 4];
                piece[5] = hex[c & 0xF];
                piece_len = 6;
            }
        }
        if (out_cap - at <= piece_len) {
            out[0] = '\0';
            return RUSM_ERR_TOOBIG;
        }
        memcpy(out + at, piece, piece_len);
        at += piece_len;
    }
    out[at] = '\0';
    return (int32_t)at;
}

/* Objects and arrays a rusm_json builder may nest. */
#define RUSM_JSON_MAX_DEPTH 32

/* A JSON builder writing into a caller's buffer. Commas are placed for
 * you; keys go before each member of an object:
 *
 *     char out[256];
 *     rusm_json j;
 *     rusm_json_init(&j, out, sizeof out);
 *     rusm_json_object(&j);
 *     rusm_json_key(&j, "name");  rusm_json_str(&j, name);
 *     rusm_json_key(&j, "count"); rusm_json_int(&j, 3);
 *     rusm_json_object_end(&j);
 *     if (rusm_json_finish(&j) >= 0) rusm_respond_json(200, out);
 *
 * The first failure sticks (later calls do nothing) and rusm_json_finish
 * reports it: RUSM_ERR_TOOBIG when the buffer is full, RUSM_ERR_INVALID for
 * misuse (a key outside an object, an end without its start, nesting past
 * RUSM_JSON_MAX_DEPTH). Imports nothing. */
typedef struct rusm_json {
    char *buf;
    size_t cap;
    size_t len;
    int32_t error;      /* RUSM_OK until something fails */
    uint32_t depth;     /* open objects and arrays */
    uint32_t objects;   /* bit d: the container at depth d is an object */
    uint32_t members;   /* bit d: the container at depth d has a member */
    int after_key;      /* a key was written; its value comes next */
} rusm_json;

/* Start building into buf (buf_cap bytes; the result is NUL-terminated). */
static inline void rusm_json_init(rusm_json *j, char *buf, size_t buf_cap) {
    memset(j, 0, sizeof *j);
    j->buf = buf;
    j->cap = buf_cap;
    j->error = buf_cap == 0 ? RUSM_ERR_TOOBIG : RUSM_OK;
    if (buf_cap != 0) {
        buf[0] = '\0';
    }
}

static inline void rusm_internal_json_put(rusm_json *j, const char *text, size_t len) {
    if (j->error != RUSM_OK) {
        return;
    }
    if (j->cap - j->len <= len) {
        j->error = RUSM_ERR_TOOBIG;
        return;
    }
    memcpy(j->buf + j->len, text, len);
    j->len += len;
    j->buf[j->len] = '\0';
}

/* Before a value: a comma after the previous member; a value inside an
 * object must follow its key. */
static inline void rusm_internal_json_value(rusm_json *j) {
    if (j->error != RUSM_OK || j->depth == 0) {
        return;
    }
    uint32_t bit = 1u << (j->depth - 1);
    if (j->objects & bit) {
        if (!j->after_key) {
            j->error = RUSM_ERR_INVALID;
        }
        j->after_key = 0;
        return;
    }
    if (j->members & bit) {
        rusm_internal_json_put(j, ",", 1);
    }
    j->members |= bit;
}

static inline void rusm_internal_json_open(rusm_json *j, int object) {
    rusm_internal_json_value(j);
    if (j->error == RUSM_OK && j->depth == RUSM_JSON_MAX_DEPTH) {
        j->error = RUSM_ERR_INVALID;
    }
    rusm_internal_json_put(j, object ? "{" : "[", 1);
    if (j->error != RUSM_OK) {
        return;
    }
    uint32_t bit = 1u << j->depth;
    j->objects = object ? j->objects | bit : j->objects & ~bit;
    j->members &= ~bit;
    j->depth++;
}

static inline void rusm_internal_json_close(rusm_json *j, int object) {
    if (j->error != RUSM_OK) {
        return;
    }
    uint32_t bit = j->depth == 0 ? 0 : 1u << (j->depth - 1);
    if (j->depth == 0 || j->after_key || !!(j->objects & bit) != !!object) {
        j->error = RUSM_ERR_INVALID;
        return;
    }
    rusm_internal_json_put(j, object ? "}" : "]", 1);
    j->depth--;
}

/* Open and close an object ({...}) or an array ([...]). */
static inline void rusm_json_object(rusm_json *j) { rusm_internal_json_open(j, 1); }
static inline void rusm_json_object_end(rusm_json *j) { rusm_internal_json_close(j, 1); }
static inline void rusm_json_array(rusm_json *j) { rusm_internal_json_open(j, 0); }
static inline void rusm_json_array_end(rusm_json *j) { rusm_internal_json_close(j, 0); }

/* A string value, len bytes of UTF-8 at text, escaped. */
static inline void rusm_json_string(rusm_json *j, const char *text, size_t len) {
    rusm_internal_json_value(j);
    if (j->error != RUSM_OK) {
        return;
    }
    int32_t n = rusm_json_escape(j->buf + j->len, j->cap - j->len, text, len);
    if (n < 0) {
        j->buf[j->len] = '\0';
        j->error = n;
        return;
    }
    j->len += (size_t)n;
}

/* A string value from a NUL-terminated string. */
static inline void rusm_json_str(rusm_json *j, const char *text) {
    rusm_json_string(j, text, strlen(text));
}

/* The next member's key in the current object (a NUL-terminated string). */
static inline void rusm_json_key(rusm_json *j, const char *key) {
    if (j->error != RUSM_OK) {
        return;
    }
    if (j->depth == 0 || !(j->objects & (1u << (j->depth - 1))) || j->after_key) {
        j->error = RUSM_ERR_INVALID;
        return;
    }
    uint32_t bit = 1u << (j->depth - 1);
    if (j->members & bit) {
        rusm_internal_json_put(j, ",", 1);
    }
    j->members |= bit;
    j->after_key = 1;
    if (j->error != RUSM_OK) {
        return;
    }
    int32_t n = rusm_json_escape(j->buf + j->len, j->cap - j->len, key, strlen(key));
    if (n < 0) {
        j->buf[j->len] = '\0';
        j->error = n;
        return;
    }
    j->len += (size_t)n;
    rusm_internal_json_put(j, ":", 1);
}

/* An integer, true/false, or null value. */
static inline void rusm_json_int(rusm_json *j, int64_t value) {
    char digits[24];
    int n = snprintf(digits, sizeof digits, "%lld", (long long)value);
    rusm_internal_json_value(j);
    rusm_internal_json_put(j, digits, (size_t)n);
}
static inline void rusm_json_bool(rusm_json *j, int value) {
    rusm_internal_json_value(j);
    rusm_internal_json_put(j, value ? "true" : "false", value ? 4 : 5);
}
static inline void rusm_json_null(rusm_json *j) {
    rusm_internal_json_value(j);
    rusm_internal_json_put(j, "null", 4);
}

/* Text already in JSON form (a number with a fraction, a document built
 * elsewhere), written as one value as it is. */
static inline void rusm_json_raw(rusm_json *j, const char *json) {
    rusm_internal_json_value(j);
    rusm_internal_json_put(j, json, strlen(json));
}

/* The document's length (the buffer holds it NUL-terminated), or the first
 * failure: RUSM_ERR_TOOBIG, or RUSM_ERR_INVALID (misuse, or an object or
 * array still open). */
static inline int32_t rusm_json_finish(const rusm_json *j) {
    if (j->error != RUSM_OK) {
        return j->error;
    }
    return j->depth != 0 || j->after_key ? RUSM_ERR_INVALID : (int32_t)j->len;
}

/* ── Message encoding ─────────────────────────────────────────────────── */

/* A small encoding for actor messages (rusm_send, rusm_call, rusm_reply):
 * fields back to back, each a tag byte, a little-endian u32 length, then
 * that many bytes. Tags are the application's own (a field number, or a
 * letter); a reader skips tags it does not know, so a message can grow.
 *
 *     unsigned char msg[64];
 *     rusm_msg m;
 *     rusm_msg_init(&m, msg, sizeof msg);
 *     rusm_msg_put_str(&m, 'o', "add");
 *     rusm_msg_put_i64(&m, 'n', 5);
 *     if (rusm_msg_finish(&m) >= 0) rusm_send(pid, msg, m.len);
 *
 * and on the receiving side rusm_msg_get_i64(payload, size, 'n', &n).
 * Imports nothing. */
#define RUSM_MSG_FIELD_HEADER_BYTES 5

/* A message being written; the first failure sticks (RUSM_ERR_TOOBIG). */
typedef struct rusm_msg {
    unsigned char *buf;
    size_t cap;
    size_t len;
    int32_t error;
} rusm_msg;

/* Start a message in buf (buf_cap bytes). */
static inline void rusm_msg_init(rusm_msg *m, void *buf, size_t buf_cap) {
    m->buf = (unsigned char *)buf;
    m->cap = buf_cap;
    m->len = 0;
    m->error = RUSM_OK;
}

/* Append field tag with len bytes at data. */
static inline void rusm_msg_put(rusm_msg *m, uint8_t tag, const void *data, size_t len) {
    if (m->error != RUSM_OK) {
        return;
    }
    if (len > UINT32_MAX || m->cap - m->len < RUSM_MSG_FIELD_HEADER_BYTES ||
        m->cap - m->len - RUSM_MSG_FIELD_HEADER_BYTES < len) {
        m->error = RUSM_ERR_TOOBIG;
        return;
    }
    unsigned char *at = m->buf + m->len;
    at[0] = tag;
    for (int i = 0; i < 4; i++) {
        at[1 + i] = (unsigned char)((len >> (8 * i)) & 0xFF);
    }
    if (len != 0) {
        memcpy(at + RUSM_MSG_FIELD_HEADER_BYTES, data, len);
    }
    m->len += RUSM_MSG_FIELD_HEADER_BYTES + len;
}

/* Append a NUL-terminated string (without its NUL), or a signed 64-bit
 * integer (8 bytes, little-endian). */
static inline void rusm_msg_put_str(rusm_msg *m, uint8_t tag, const char *text) {
    rusm_msg_put(m, tag, text, strlen(text));
}
static inline void rusm_msg_put_i64(rusm_msg *m, uint8_t tag, int64_t value) {
    unsigned char bytes[8];
    for (int i = 0; i < 8; i++) {
        bytes[i] = (unsigned char)(((uint64_t)value >> (8 * i)) & 0xFF);
    }
    rusm_msg_put(m, tag, bytes, sizeof bytes);
}

/* The message's length, or RUSM_ERR_TOOBIG when a field did not fit. */
static inline int32_t rusm_msg_finish(const rusm_msg *m) {
    return m->error != RUSM_OK ? m->error : (int32_t)m->len;
}

/* Step through the fields of a received message (len bytes at msg).
 * *offset starts at 0. Returns 1 and sets *tag, *data (inside msg) and
 * *data_len for the next field; 0 at the end; RUSM_ERR_INVALID when the
 * bytes left are not a whole field (a truncated or foreign message). */
static inline int rusm_msg_next(const void *msg, size_t len, size_t *offset, uint8_t *tag,
                                const void **data, size_t *data_len) {
    const unsigned char *bytes = (const unsigned char *)msg;
    if (*offset >= len) {
        return 0;
    }
    if (len - *offset < RUSM_MSG_FIELD_HEADER_BYTES) {
        return RUSM_ERR_INVALID;
    }
    const unsigned char *at = bytes + *offset;
    size_t size = (size_t)at[1] | (size_t)at[2] << 8 | (size_t)at[3] << 16 | (size_t)at[4] << 24;
    if (len - *offset - RUSM_MSG_FIELD_HEADER_BYTES < size) {
        return RUSM_ERR_INVALID;
    }
    *tag = at[0];
    *data = at + RUSM_MSG_FIELD_HEADER_BYTES;
    *data_len = size;
    *offset += RUSM_MSG_FIELD_HEADER_BYTES + size;
    return 1;
}

/* The first field tagged tag: its size (and *data inside msg), or
 * RUSM_ERR_NOTFOUND, or RUSM_ERR_INVALID for a malformed message. */
static inline int32_t rusm_msg_get(const void *msg, size_t len, uint8_t tag, const void **data) {
    size_t offset = 0, size = 0;
    uint8_t have = 0;
    const void *at = NULL;
    int step;
    while ((step = rusm_msg_next(msg, len, &offset, &have, &at, &size)) == 1) {
        if (have == tag) {
            *data = at;
            return size > INT32_MAX ? RUSM_ERR_TOOBIG : (int32_t)size;
        }
    }
    return step < 0 ? RUSM_ERR_INVALID : RUSM_ERR_NOTFOUND;
}

/* The field tagged tag as a NUL-terminated string in buf: its length,
 * RUSM_ERR_TOOBIG (buf is then ""), or rusm_msg_get's error. */
static inline int32_t rusm_msg_get_str(const void *msg, size_t len, uint8_t tag, char *buf,
                                       size_t buf_cap) {
    const void *data = NULL;
    int32_t n = rusm_msg_get(msg, len, tag, &data);
    if (buf_cap != 0) {
        buf[0] = '\0';
    }
    if (n < 0) {
        return n;
    }
    if ((size_t)n >= buf_cap) {
        return RUSM_ERR_TOOBIG;
    }
    memcpy(buf, data, (size_t)n);
    buf[n] = '\0';
    return n;
}

/* The field tagged tag as a signed 64-bit integer (written by
 * rusm_msg_put_i64): RUSM_OK, RUSM_ERR_INVALID when it is not 8 bytes, or
 * rusm_msg_get's error. */
static inline int32_t rusm_msg_get_i64(const void *msg, size_t len, uint8_t tag, int64_t *value) {
    const void *data = NULL;
    int32_t n = rusm_msg_get(msg, len, tag, &data);
    if (n < 0) {
        return n;
    }
    if (n != 8) {
        return RUSM_ERR_INVALID;
    }
    const unsigned char *bytes = (const unsigned char *)data;
    uint64_t bits = 0;
    for (int i = 0; i < 8; i++) {
        bits |= (uint64_t)bytes[i] << (8 * i);
    }
    *value = (int64_t)bits;
    return RUSM_OK;
}

#ifdef __cplusplus
}
#endif

#endif /* RUSM_H */
