/* One chat member: the ws listener spawns a process of this component
 * per WebSocket connection. It joins the resident `room` with the name
 * from the upgrade request's query (?name=NAME), then forwards each text
 * frame from its client to the room and each line the room relays to its
 * client. Messages use the SDK's encoding (rusm_msg): 'o' the operation
 * ("join" or "say"), 'k' the name, 't' the text. When the client closes,
 * run returns; the room monitors its members and says who left.
 *
 * Its own close codes are in the application range (4000-4999): 4008 a
 * bad name, 4009 a line too long, 4011 no room to join. */
#include "rusm.h"

/* The longest name and line; a client cannot make the room relay more. */
#define MAX_NAME 32
#define MAX_LINE 1024

static char line[MAX_LINE + 64];
static unsigned char msg[MAX_LINE + 64];

/* Send the room one operation with one field; RUSM_OK or an error. */
static int32_t tell_room(const char *op, uint8_t tag, const char *text, size_t len) {
    rusm_msg m;
    rusm_msg_init(&m, msg, sizeof msg);
    rusm_msg_put_str(&m, 'o', op);
    rusm_msg_put(&m, tag, text, len);
    int32_t n = rusm_msg_finish(&m);
    return n < 0 ? n : rusm_send_name("room", msg, (size_t)n);
}

RUSM_EXPORT(run) void run(void) {
    char name[MAX_NAME + 1];
    int32_t found = rusm_query_param("name", name, sizeof name);
    if (found == RUSM_ERR_NOTFOUND || found == 0) {
        strcpy(name, "anonymous");
    } else if (found < 0) {
        rusm_ws_close_str(4008, "a name is 1 to 32 bytes");
        return;
    }
    rusm_set_label_str(name);
    if (tell_room("join", 'k', name, strlen(name)) < 0) {
        rusm_ws_close_str(4011, "the room is not available");
        return;
    }
    for (;;) {
        rusm_header header;
        int32_t n = rusm_recv(&header, line, sizeof line, RUSM_FOREVER);
        if (n == RUSM_ERR_TOOBIG) {
            rusm_ws_close_str(4009, "a line is at most 1024 bytes");
            return;
        }
        if (n < 0) continue;
        if (header.kind == RUSM_KIND_CLOSED) return;
        if (header.kind == RUSM_KIND_FRAME && header.reason == RUSM_WS_TEXT) {
            if (n > MAX_LINE) {
                rusm_ws_close_str(4009, "a line is at most 1024 bytes");
                return;
            }
            tell_room("say", 't', line, (size_t)n);
        } else if (header.kind == RUSM_KIND_MESSAGE) {
            if (rusm_ws_send(RUSM_WS_TEXT, line, (size_t)n) == RUSM_ERR_CLOSED) return;
        }
    }
}
