/* A child that never fails: it registers as `steady` and counts the
 * pings it gets (`rusmctl send steady ping`). Under one_for_one its
 * sibling's crashes leave it alone, so its pid and its count carry on;
 * only the whole tree giving up restarts it. */
#include "rusm.h"

RUSM_EXPORT(run) void run(void) {
    rusm_register_str("steady");
    rusm_logf(RUSM_LOG_INFO, "steady up as pid %lld", (long long)rusm_self());
    unsigned long pings = 0;
    char text[64];
    for (;;) {
        rusm_header header;
        int32_t n = rusm_recv(&header, text, sizeof text, RUSM_FOREVER);
        if (n < 0 || header.kind != RUSM_KIND_MESSAGE) continue;
        rusm_logf(RUSM_LOG_INFO, "steady pid %lld: ping #%lu", (long long)rusm_self(), ++pings);
    }
}
