/* ffvevents: completion events (ibv_get_cq_event on blocking channels)
 * from two threads at once, and a WRITE that lands while the target only
 * waits for events. `ffvevents server PORT` and `ffvevents client HOST
 * PORT`. Each process has two RC queue pairs, each with a completion
 * queue of its own on a completion channel of its own. The server runs
 * two threads: thread i takes queue pair i's completions only through
 * events (arm, poll, block in ibv_get_cq_event), so both block at once.
 * The client (one thread, polling) first WRITEs a pattern into the
 * server's buffer while both server threads block (a WRITE completes no
 * work request at the target: the device must place it with no verb call
 * of the application's), then sends ROUNDS pings on each queue pair in
 * turn; thread i answers each of its pings with a pong. Thread 0 checks
 * the written pattern when its first ping arrives (the WRITE went on the
 * same queue pair before it). Every message's bytes are checked; a wait
 * longer than 20 s, or the whole run past 60 s, fails. Exits 0 only if
 * all of it held; prints "OK <what>". */
#define PROG "ffvevents"
#include "ffvtest.h"
#include <pthread.h>

#define ROUNDS 300
#define SLOT 64
#define WOFF 4096
#define WLEN 4096

static struct ibv_context *ctx;
static struct ibv_comp_channel *ch[2];
static struct ibv_cq *cq[2];
static struct ibv_qp *qp[2];
static struct ibv_mr *mr;
static unsigned char *buf;
struct peer { union ibv_gid gid; uint32_t qpn[2]; uint64_t addr; uint32_t rkey; } me, them;

static unsigned char *rx(int i) { return buf + i * SLOT; }
static unsigned char *tx(int i) { return buf + (2 + i) * SLOT; }
/* Message `r` on queue pair `i`: a ping, or (pong) its answer. */
static uint32_t seed(int i, uint32_t r, int pong) { return r * 4 + i * 2 + pong + 1; }

static void post_recv(int i, uint64_t id) {
    struct ibv_sge s = { (uintptr_t)rx(i), SLOT, mr->lkey };
    struct ibv_recv_wr wr = { .wr_id = id, .sg_list = &s, .num_sge = 1 }, *bad;
    if (ibv_post_recv(qp[i], &wr, &bad)) DIE("ibv_post_recv");
}

static void post_send(int i, uint64_t id, uint32_t sd) {
    fill(tx(i), SLOT, sd);
    struct ibv_sge s = { (uintptr_t)tx(i), SLOT, mr->lkey };
    struct ibv_send_wr wr = { .wr_id = id, .sg_list = &s, .num_sge = 1, .opcode = IBV_WR_SEND, .send_flags = IBV_SEND_SIGNALED }, *bad;
    int rc = ibv_post_send(qp[i], &wr, &bad);
    if (rc) DIE("ibv_post_send: %s", strerror(rc));
}

/* The next completion of queue `i`, taken through its channel's events. */
static struct ibv_wc event_wc(int i) {
    struct ibv_wc wc;
    for (;;) {
        int n = ibv_poll_cq(cq[i], 1, &wc);
        if (n < 0) DIE("ibv_poll_cq");
        if (n == 1) return wc;
        if (ibv_req_notify_cq(cq[i], 0)) DIE("ibv_req_notify_cq");
        /* A completion that came before the queue was armed posts no event. */
        n = ibv_poll_cq(cq[i], 1, &wc);
        if (n < 0) DIE("ibv_poll_cq");
        if (n == 1) return wc;
        struct ibv_cq *ev;
        void *evctx;
        if (ibv_get_cq_event(ch[i], &ev, &evctx)) DIE("ibv_get_cq_event: %s", strerror(errno));
        if (ev != cq[i]) DIE("an event of queue %p on channel %d (queue %p)", (void *)ev, i, (void *)cq[i]);
        ibv_ack_cq_events(ev, 1);
    }
}

static void expect(struct ibv_wc wc, uint64_t id, enum ibv_wc_opcode op, int i, uint32_t r, const char *what) {
    if (wc.status != IBV_WC_SUCCESS) DIE("queue pair %d, round %u, %s: '%s'", i, r, what, ibv_wc_status_str(wc.status));
    if (wc.wr_id != id || wc.opcode != op) DIE("queue pair %d, round %u: completion %" PRIu64 " (opcode %d), expected %s", i, r, wc.wr_id, wc.opcode, what);
}

static void *serve(void *arg) {
    int i = (int)(intptr_t)arg;
    for (uint32_t r = 0; r < ROUNDS; r++) {
        struct ibv_wc wc = event_wc(i);
        expect(wc, r, IBV_WC_RECV, i, r, "the ping");
        if (wc.byte_len != SLOT || !check(rx(i), SLOT, seed(i, r, 0))) DIE("queue pair %d, round %u: wrong ping", i, r);
        if (i == 0 && r == 0 && !check(buf + WOFF, WLEN, 77)) DIE("the client's WRITE is not in our buffer when the ping after it came");
        post_recv(i, r + 1);
        post_send(i, 1000 + r, seed(i, r, 1));
        expect(event_wc(i), 1000 + r, IBV_WC_SEND, i, r, "the pong's send");
    }
    return NULL;
}

int main(int argc, char **argv) {
    role = argc > 1 ? argv[1] : "?";
    int server = !strcmp(role, "server");
    if (server ? argc < 3 : argc < 4) DIE("usage: ffvevents server PORT | ffvevents client HOST PORT");
    alarm(60);
    int n;
    struct ibv_device **list = ibv_get_device_list(&n);
    if (!list || n < 1) DIE("no verbs device");
    ctx = ibv_open_device(list[0]);
    if (!ctx) DIE("ibv_open_device");
    struct ibv_pd *pd = ibv_alloc_pd(ctx);
    buf = aligned_alloc(4096, WOFF + WLEN);
    if (!pd || !buf) DIE("alloc");
    memset(buf, 0, WOFF + WLEN);
    mr = ibv_reg_mr(pd, buf, WOFF + WLEN, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
    if (!mr) DIE("ibv_reg_mr");
    for (int i = 0; i < 2; i++) {
        ch[i] = ibv_create_comp_channel(ctx);
        cq[i] = ch[i] ? ibv_create_cq(ctx, 64, NULL, ch[i], 0) : NULL;
        if (!cq[i]) DIE("channel/cq");
        struct ibv_qp_init_attr ia = { .send_cq = cq[i], .recv_cq = cq[i], .qp_type = IBV_QPT_RC,
                                       .cap = { .max_send_wr = 16, .max_recv_wr = 16, .max_send_sge = 1, .max_recv_sge = 1 } };
        qp[i] = ibv_create_qp(pd, &ia);
        if (!qp[i]) DIE("ibv_create_qp");
        me.qpn[i] = qp[i]->qp_num;
    }
    if (ibv_query_gid(ctx, 1, 0, &me.gid)) DIE("ibv_query_gid");
    me.addr = (uintptr_t)buf + WOFF;
    me.rkey = mr->rkey;
    sock = tcp_meet(server, server ? NULL : argv[2], server ? argv[2] : argv[3]);
    swap_bytes(sock, &me, &them, sizeof me);
    for (int i = 0; i < 2; i++) {
        connect_rc(qp[i], them.qpn[i], them.gid, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE, 0);
        post_recv(i, 0);
    }
    if (server) {
        pthread_t t[2];
        for (int i = 0; i < 2; i++)
            if (pthread_create(&t[i], NULL, serve, (void *)(intptr_t)i)) DIE("pthread_create");
        meet(1);
        for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
    } else {
        meet(1);
        /* Both server threads block in ibv_get_cq_event by now. */
        usleep(200000);
        fill(buf + WOFF, WLEN, 77);
        struct ibv_sge s = { (uintptr_t)buf + WOFF, WLEN, mr->lkey };
        struct ibv_send_wr wr = { .wr_id = 5, .sg_list = &s, .num_sge = 1, .opcode = IBV_WR_RDMA_WRITE, .send_flags = IBV_SEND_SIGNALED }, *bad;
        wr.wr.rdma.remote_addr = them.addr;
        wr.wr.rdma.rkey = them.rkey;
        if (ibv_post_send(qp[0], &wr, &bad)) DIE("ibv_post_send WRITE");
        expect(wait_wc(cq[0], 20), 5, IBV_WC_RDMA_WRITE, 0, 0, "the WRITE");
        for (uint32_t r = 0; r < ROUNDS; r++) {
            for (int i = 0; i < 2; i++) post_send(i, 1000 + r, seed(i, r, 0));
            for (int i = 0; i < 2; i++) {
                expect(wait_wc(cq[i], 20), 1000 + r, IBV_WC_SEND, i, r, "the ping's send");
                struct ibv_wc wc = wait_wc(cq[i], 20);
                expect(wc, r, IBV_WC_RECV, i, r, "the pong");
                if (wc.byte_len != SLOT || !check(rx(i), SLOT, seed(i, r, 1))) DIE("queue pair %d, round %u: wrong pong", i, r);
                post_recv(i, r + 1);
            }
        }
    }
    meet(2);
    printf("OK %d rounds on two queue pairs, the server's two threads in ibv_get_cq_event at once%s\n", ROUNDS,
           server ? "; the WRITE landed while they waited" : "");
    for (int i = 0; i < 2; i++)
        if (ibv_destroy_qp(qp[i]) || ibv_destroy_cq(cq[i]) || ibv_destroy_comp_channel(ch[i])) DIE("destroy");
    if (ibv_dereg_mr(mr) || ibv_dealloc_pd(pd) || ibv_close_device(ctx)) DIE("destroy");
    ibv_free_device_list(list);
    return 0;
}
