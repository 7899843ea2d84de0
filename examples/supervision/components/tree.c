/* The root of the example's tree: a resident (rusm.toml) that starts a
 * supervisor with rusm_supervise and then only waits. The supervisor is
 * linked to it: when its children crash more than `intensity` times
 * within `period_s`, the supervisor gives up, stops them and exits
 * `shutdown`, which takes this process down too, so the failure
 * escalates to rusmd, which restarts the resident and with it the whole
 * tree, fresh. rusm_supervise needs allow-spawn: the `supervisor`
 * profile grants it. */
#include <stdlib.h>

#include "rusm.h"

/* one_for_one: a crashing child is restarted alone; `steady` keeps its
 * pid and state. Two restarts within ten seconds are tolerated; a third
 * ends the tree. */
static const char SPEC[] =
    "{\"strategy\": \"one_for_one\", \"intensity\": 2, \"period_s\": 10,"
    " \"children\": ["
    "  {\"component\": \"steady\", \"restart\": \"permanent\"},"
    "  {\"component\": \"flaky\", \"restart\": \"permanent\", \"shutdown_ms\": 1000}"
    "]}";

RUSM_EXPORT(run) void run(void) {
    rusm_pid_t supervisor = rusm_supervise_str(SPEC);
    if (supervisor < 0) {
        rusm_logf(RUSM_LOG_ERROR, "tree: supervise failed: %s", rusm_strerror((int)supervisor));
        rusm_exit(1);
    }
    rusm_logf(RUSM_LOG_INFO, "tree up as pid %lld; supervisor pid %lld", (long long)rusm_self(),
              (long long)supervisor);
    char buf[256];
    for (;;) {
        /* No message is expected; one that comes is taken and dropped,
         * a large one through a buffer of its own size. */
        rusm_header header;
        if (rusm_recv(&header, buf, sizeof buf, RUSM_FOREVER) != RUSM_ERR_TOOBIG) continue;
        void *big = malloc((size_t)header.size);
        if (big == NULL) rusm_exit(1);
        rusm_recv(&header, big, (size_t)header.size, 0);
        free(big);
    }
}
