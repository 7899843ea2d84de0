/* The refused part of the capability demo: this module imports
 * rusm.spawn (through rusm_spawn_str), which needs allow-spawn, and its
 * component is `sandboxed`. A worker checks every import against the
 * profile before any guest code runs and refuses the module; its route
 * answers 503 and the log says `capability denied: spawner imports
 * rusm.spawn, which needs allow-spawn`. `rusmd check` says so before the
 * app runs (exit 78). Granting allow-spawn in rusm.toml makes it load. */
#include <stdio.h>

#include "rusm.h"

/* POST /spawner: start a `keeper` process; never reached when refused. */
RUSM_EXPORT(spawn) int spawn(void) {
    char text[64];
    rusm_pid_t pid = rusm_spawn_str("keeper");
    snprintf(text, sizeof text, "spawned keeper: %lld\n", (long long)pid);
    rusm_respond_text(200, text);
    return 0;
}
