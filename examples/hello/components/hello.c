/* The example guest: a wasip1 module built with `make guests` against the
 * C SDK (sdk/c/rusm.h; the reference is docs/abi.md).
 *
 * rusm.toml makes it resident, so rusmd spawns it at boot: `run` logs two
 * lines through the platform logger and returns, and the process exits
 * normal. Logging needs no grant, so the default-deny `sandboxed` profile
 * is enough. The serving actions (home, greet) arrive with the HTTP
 * listeners. */
#include "rusm.h"

RUSM_EXPORT(run) void run(void) {
    rusm_info("hello from a rusm guest");
    rusm_logf(RUSM_LOG_INFO, "I am pid %lld", (long long)rusm_self());
}
