/* A child that crashes on demand: it registers as `flaky` (so `rusmctl
 * send flaky crash` finds whichever pid is current) and exits `crashed`
 * when told "crash". Its supervisor restarts it with a new pid and fresh
 * memory; each start logs a line. */
#include <string.h>

#include "rusm.h"

RUSM_EXPORT(run) void run(void) {
    rusm_register_str("flaky");
    rusm_logf(RUSM_LOG_INFO, "flaky up as pid %lld", (long long)rusm_self());
    char text[64];
    for (;;) {
        rusm_header header;
        int32_t n = rusm_recv(&header, text, sizeof text - 1, RUSM_FOREVER);
        if (n < 0 || header.kind != RUSM_KIND_MESSAGE) continue;
        text[n] = '\0';
        if (strcmp(text, "crash") == 0) {
            rusm_warn("flaky: crashing as asked");
            rusm_exit(1); /* exit reason crashed: the supervisor restarts it */
        }
    }
}
