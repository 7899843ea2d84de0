/* A handler component with start-up work: the pre-initialisation tests' guest.
 *
 * Built as a WASI reactor (build_c_guest(..., reactor=True)): libc and the
 * constructor below run in _initialize. GET answers
 *
 *     started=<n> handled=<n> motto=<text>
 *
 * where started counts the constructor's runs in this instance, handled
 * the action's, and motto is static data the constructor rewrites. In a
 * fresh instance, whether its start-up ran at compile time or just now,
 * a request sees started=1 handled=1 motto=ready.
 *
 * Defines:
 *   STARTUP_READS_ENV  the constructor also reads $GREETING (an import
 *                      call: such a start-up cannot be snapshotted) and
 *                      adds greeting=<value> to the answer.
 *   STARTUP_SPIN=N     the constructor first spins N rounds: a start-up
 *                      costly enough that running it per request blows
 *                      a request's CPU budget. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rusm.h"

static int started;
static int handled;
static char motto[16] = "unset";
#ifdef STARTUP_READS_ENV
static char greeting[64] = "none";
#endif

__attribute__((constructor)) static void start_up(void) {
#ifdef STARTUP_SPIN
    /* volatile: the compiler may not fold the loop away. */
    for (volatile unsigned long round = 0; round < (unsigned long)(STARTUP_SPIN); round++) {
    }
#endif
#ifdef STARTUP_READS_ENV
    const char *value = getenv("GREETING");
    if (value != NULL) {
        snprintf(greeting, sizeof greeting, "%s", value);
    }
#endif
    started += 1;
    strcpy(motto, "ready");
}

RUSM_EXPORT(show) int show(void) {
    char body[160];
    handled += 1;
#ifdef STARTUP_READS_ENV
    snprintf(body, sizeof body, "started=%d handled=%d motto=%s greeting=%s\n", started, handled,
             motto, greeting);
#else
    snprintf(body, sizeof body, "started=%d handled=%d motto=%s\n", started, handled, motto);
#endif
    rusm_respond_text(200, body);
    return 0;
}
