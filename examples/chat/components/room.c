/* The chat room: a resident process (rusm.toml), registered as `room`.
 * Members (components/member.c, one per WebSocket) send it "join" with
 * their name and "say" with a line; it relays "NAME: line" to every
 * member, and "* NAME joined" / "* NAME left". It monitors each member,
 * so a member that exits for any reason (its client closed, a crash, its
 * worker died) is dropped with one RUSM_KIND_DOWN message; nothing
 * depends on a member saying goodbye.
 *
 * If the room itself restarts, its members are forgotten: their
 * connections stay open but hear nothing until they reconnect. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rusm.h"

/* Members held at once; one more is told the room is full and not
 * joined, so a flood of connections cannot grow every relay without
 * bound. */
#define MAX_MEMBERS 100
#define MAX_NAME 32
#define MAX_LINE 1024

static struct {
    rusm_pid_t pid;
    rusm_ref_t monitor;
    char name[MAX_NAME + 1];
} members[MAX_MEMBERS];
static int count;

static unsigned char msg[MAX_LINE + 64];
static char text[MAX_LINE + 1];
static char out[MAX_NAME + MAX_LINE + 16];

static void relay(const char *line, size_t len) {
    for (int i = 0; i < count; i++) {
        rusm_send(members[i].pid, line, len);
    }
}

static void join(rusm_pid_t pid, const char *name) {
    if (count == MAX_MEMBERS) {
        rusm_send_str(pid, "* the room is full");
        return;
    }
    members[count].pid = pid;
    members[count].monitor = rusm_monitor(pid);
    snprintf(members[count].name, sizeof members[count].name, "%s", name);
    count++;
    int len = snprintf(out, sizeof out, "* %s joined", name);
    relay(out, (size_t)len);
}

static void drop(rusm_ref_t monitor) {
    for (int i = 0; i < count; i++) {
        if (members[i].monitor != monitor) continue;
        int len = snprintf(out, sizeof out, "* %s left", members[i].name);
        members[i] = members[--count];
        relay(out, (size_t)len);
        return;
    }
}

static const char *name_of(rusm_pid_t pid) {
    for (int i = 0; i < count; i++) {
        if (members[i].pid == pid) return members[i].name;
    }
    return NULL;
}

RUSM_EXPORT(run) void run(void) {
    char op[8], name[MAX_NAME + 1];
    rusm_info("the room is open");
    for (;;) {
        rusm_header header;
        int32_t n = rusm_recv(&header, msg, sizeof msg, RUSM_FOREVER);
        if (n == RUSM_ERR_TOOBIG) {
            /* Not a member's message: take it out of the mailbox and drop it. */
            void *big = malloc((size_t)header.size);
            if (big == NULL) rusm_exit(1);
            rusm_recv(&header, big, (size_t)header.size, 0);
            free(big);
            continue;
        }
        if (n < 0) continue;
        if (header.kind == RUSM_KIND_DOWN) {
            drop(header.ref);
            continue;
        }
        if (header.kind != RUSM_KIND_MESSAGE ||
            rusm_msg_get_str(msg, (size_t)n, 'o', op, sizeof op) < 0) {
            continue;
        }
        const char *speaker = name_of(header.from);
        if (strcmp(op, "join") == 0 && speaker == NULL &&
            rusm_msg_get_str(msg, (size_t)n, 'k', name, sizeof name) > 0) {
            join(header.from, name);
        } else if (strcmp(op, "say") == 0 && speaker != NULL &&
                   rusm_msg_get_str(msg, (size_t)n, 't', text, sizeof text) >= 0) {
            int len = snprintf(out, sizeof out, "%s: %s", speaker, text);
            relay(out, (size_t)len);
        }
    }
}
