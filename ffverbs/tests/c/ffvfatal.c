/* ffvfatal: what a verbs program sees when its router goes away and comes
 * back.
 *
 *   ffvfatal strs    prints ibv_event_type_str of every event type and
 *                    ibv_port_state_str of every port state (and of one
 *                    past the last), one a line, to compare two
 *                    libraries' answers
 *   ffvfatal watch   opens ff0 with a protection domain, a completion
 *                    queue and an RC queue pair, prints "OPEN <port
 *                    state>", then takes asynchronous events (blocking in
 *                    ibv_get_async_event), printing "EVENT <type> <name>"
 *                    and acking each, until IBV_EVENT_DEVICE_FATAL; then
 *                    "PORT <state>". Then it waits for a line on stdin (the
 *                    router is back) and, with the first context still
 *                    open, opens ff0 again, makes a protection domain and
 *                    a queue pair in it and prints "REOPENED <port state>".
 *                    Exits 0 if all of that worked; gives up after 60 s. */
#define PROG "ffvfatal"
#include "ffvtest.h"

static const char *port_state(struct ibv_context *c) {
    struct ibv_port_attr a;
    if (ibv_query_port(c, 1, &a)) DIE("ibv_query_port");
    return ibv_port_state_str(a.state);
}

static struct ibv_qp *rc_qp(struct ibv_context *c) {
    struct ibv_pd *pd = ibv_alloc_pd(c);
    if (!pd) DIE("ibv_alloc_pd");
    struct ibv_cq *cq = ibv_create_cq(c, 16, NULL, NULL, 0);
    if (!cq) DIE("ibv_create_cq");
    struct ibv_qp_init_attr a = { .send_cq = cq, .recv_cq = cq, .qp_type = IBV_QPT_RC,
                                  .cap = { .max_send_wr = 4, .max_recv_wr = 4, .max_send_sge = 1, .max_recv_sge = 1 } };
    struct ibv_qp *qp = ibv_create_qp(pd, &a);
    if (!qp) DIE("ibv_create_qp");
    return qp;
}

static struct ibv_context *open_ff0(void) {
    int n;
    struct ibv_device **list = ibv_get_device_list(&n);
    if (!list || n < 1) DIE("no RDMA device");
    if (strcmp(ibv_get_device_name(list[0]), "ff0")) DIE("first device is %s, not ff0", ibv_get_device_name(list[0]));
    struct ibv_context *c = ibv_open_device(list[0]);
    if (!c) DIE("ibv_open_device: %s", strerror(errno));
    ibv_free_device_list(list);
    return c;
}

int main(int argc, char **argv) {
    role = argc > 1 ? argv[1] : "?";
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!strcmp(role, "strs")) {
        for (int e = 0; e <= IBV_EVENT_WQ_FATAL + 1; e++) printf("event %d: %s\n", e, ibv_event_type_str(e));
        for (int s = 0; s <= IBV_PORT_ACTIVE_DEFER + 1; s++) printf("port state %d: %s\n", s, ibv_port_state_str(s));
        return 0;
    }
    if (strcmp(role, "watch")) DIE("usage: ffvfatal strs|watch");
    alarm(60);
    struct ibv_context *c = open_ff0();
    rc_qp(c);
    printf("OPEN %s\n", port_state(c));
    for (;;) {
        struct ibv_async_event ev;
        if (ibv_get_async_event(c, &ev)) DIE("ibv_get_async_event: %s", strerror(errno));
        printf("EVENT %d %s\n", ev.event_type, ibv_event_type_str(ev.event_type));
        if (ev.event_type == IBV_EVENT_PORT_ERR && ev.element.port_num != 1) DIE("port error on port %d", ev.element.port_num);
        enum ibv_event_type t = ev.event_type;
        ibv_ack_async_event(&ev);
        if (t == IBV_EVENT_DEVICE_FATAL) break;
    }
    printf("PORT %s\n", port_state(c));
    char line[16];
    if (!fgets(line, sizeof line, stdin)) DIE("stdin ended");
    struct ibv_context *again = open_ff0();
    rc_qp(again);
    printf("REOPENED %s\n", port_state(again));
    return 0;
}
