/* ffvsrq: checks shared receive queues (plain libibverbs API) between two
 * processes: `ffvsrq server PORT` and `ffvsrq client HOST PORT`.
 *
 * The server has one SRQ and two RC queue pairs A and B created with it,
 * each with a receive CQ of its own; the client has a queue pair connected
 * to each. The server first checks the SRQ's verbs on their own (limits,
 * errors, EBUSY); then, with the client: SENDs on A and B take the SRQ's
 * receives in the order posted, whichever queue pair they arrive on, and
 * complete on that queue pair's receive CQ with its number; SENDs that
 * find the SRQ empty wait (no send completion) until receives are posted;
 * a WRITE with immediate takes a receive; a large SEND scatters into two
 * elements; the limit event fires once; a queue pair in the error state
 * leaves the SRQ's receives to the other. Exits 0 only if every check
 * passed; prints "OK <what>" for each. The processes meet over the TCP
 * connection they exchanged their addresses on. */
#define PROG "ffvsrq"
#include "ffvtest.h"
#include <fcntl.h>
#include <poll.h>

#define BUF (1u << 20)
#define SLOT 256

static struct ibv_context *ctx;
static struct ibv_pd *pd;
static struct ibv_cq *scq, *rcq[2];
static struct ibv_srq *srq;
static struct ibv_qp *qp[2];
static unsigned char *buf;
static struct ibv_mr *mr;

struct peer { union ibv_gid gid; uint32_t qpn[2], rkey; uint64_t addr; } me, them;

static int srq_recv(uint64_t id, void *p, uint32_t len, uint32_t lkey) {
    struct ibv_sge s = { (uintptr_t)p, len, lkey };
    struct ibv_recv_wr wr = { .wr_id = id, .sg_list = &s, .num_sge = 1 }, *bad = NULL;
    return ibv_post_srq_recv(srq, &wr, &bad);
}

static void send_on(int q, uint64_t id, void *p, uint32_t len, enum ibv_wr_opcode op, uint32_t imm) {
    struct ibv_sge s = { (uintptr_t)p, len, mr->lkey };
    struct ibv_send_wr wr = { .wr_id = id, .sg_list = &s, .num_sge = 1, .opcode = op, .send_flags = IBV_SEND_SIGNALED }, *bad;
    wr.imm_data = htonl(imm);
    wr.wr.rdma.remote_addr = them.addr + BUF / 2;
    wr.wr.rdma.rkey = them.rkey;
    int rc = ibv_post_send(qp[q], &wr, &bad);
    if (rc) DIE("ibv_post_send: %s", strerror(rc));
}

static void exchange(int server, const char *host, const char *port) {
    sock = tcp_meet(server, host, port);
    swap_bytes(sock, &me, &them, sizeof me);
}

static void connect_qp(int i) {
    connect_rc(qp[i], them.qpn[i], them.gid, IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_ATOMIC | IBV_ACCESS_LOCAL_WRITE, 0);
}

static struct ibv_srq *make_srq(uint32_t max_wr, uint32_t max_sge, uint32_t limit) {
    struct ibv_srq_init_attr a = { .srq_context = NULL, .attr = { .max_wr = max_wr, .max_sge = max_sge, .srq_limit = limit } };
    return ibv_create_srq(pd, &a);
}

static struct ibv_qp *make_qp(struct ibv_cq *rc, struct ibv_srq *s) {
    struct ibv_qp_init_attr ia = { .send_cq = scq, .recv_cq = rc, .srq = s, .qp_type = IBV_QPT_RC,
                                   .cap = { .max_send_wr = 64, .max_recv_wr = 64, .max_send_sge = 2, .max_recv_sge = 2 } };
    return ibv_create_qp(pd, &ia);
}

/* The SRQ's verbs on their own: sizes written back and enforced, bad
 * input refused with an errno, EBUSY while a queue pair uses it. */
static void local_checks(void) {
    struct ibv_device_attr da;
    if (ibv_query_device(ctx, &da)) DIE("ibv_query_device");
    if (da.max_srq < 1 || da.max_srq_wr < 16 || da.max_srq_sge < 2) DIE("device SRQ limits %d/%d/%d", da.max_srq, da.max_srq_wr, da.max_srq_sge);
    struct { uint32_t wr, sge, limit; } bad[] = { { 0, 1, 0 }, { (uint32_t)da.max_srq_wr + 1, 1, 0 }, { 8, (uint32_t)da.max_srq_sge + 1, 0 }, { 8, 1, 9 } };
    for (unsigned i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        errno = 0;
        if (make_srq(bad[i].wr, bad[i].sge, bad[i].limit) || errno != EINVAL) DIE("SRQ %u/%u/%u: not refused with EINVAL (errno %d)", bad[i].wr, bad[i].sge, bad[i].limit, errno);
    }
    struct ibv_srq_init_attr ia = { .attr = { .max_wr = 8, .max_sge = 2 } };
    struct ibv_srq *s = ibv_create_srq(pd, &ia);
    if (!s || ia.attr.max_wr < 8 || ia.attr.max_sge < 2) DIE("ibv_create_srq");
    struct ibv_srq_attr sa;
    if (ibv_query_srq(s, &sa) || sa.max_wr != ia.attr.max_wr || sa.max_sge != ia.attr.max_sge || sa.srq_limit != 0) DIE("ibv_query_srq");
    uint32_t cap = sa.max_wr;
    /* max_wr receives, then ENOMEM; a list stops at the first refused. */
    struct ibv_srq *keep = srq;
    srq = s;
    for (uint32_t i = 0; i + 1 < cap; i++)
        if (srq_recv(i, buf + 64 * i, 64, mr->lkey)) DIE("post_srq_recv %u of %u", i, cap);
    struct ibv_sge sg[3] = { { (uintptr_t)buf, 16, mr->lkey }, { (uintptr_t)buf + 16, 16, mr->lkey }, { (uintptr_t)buf + 32, 16, mr->lkey } };
    struct ibv_recv_wr w2 = { .wr_id = 101, .sg_list = sg, .num_sge = 1 }, w1 = { .wr_id = 100, .sg_list = sg, .num_sge = 1, .next = &w2 }, *badwr = NULL;
    if (ibv_post_srq_recv(s, &w1, &badwr) != ENOMEM || badwr != &w2) DIE("a full SRQ took a receive (or refused the wrong one)");
    if (srq_recv(102, buf, 64, mr->lkey) != ENOMEM) DIE("a full SRQ took a receive");
    /* Too many elements, an unknown key: EINVAL, nothing queued. */
    struct ibv_recv_wr w3 = { .wr_id = 103, .sg_list = sg, .num_sge = 3 };
    if (ibv_modify_srq(s, &(struct ibv_srq_attr){ .max_wr = cap + 4 }, IBV_SRQ_MAX_WR)) DIE("growing the SRQ");
    if (ibv_post_srq_recv(s, &w3, &badwr) != EINVAL || badwr != &w3) DIE("3 elements on a 2-element SRQ");
    if (srq_recv(104, buf, 64, mr->lkey ^ 0x5a5a5a) != EINVAL) DIE("unknown key accepted");
    /* max_wr can shrink to what is queued, not below; the limit not above max_wr. */
    if (ibv_modify_srq(s, &(struct ibv_srq_attr){ .max_wr = cap - 1 }, IBV_SRQ_MAX_WR) != EINVAL) DIE("shrunk below the queued receives");
    if (ibv_modify_srq(s, &(struct ibv_srq_attr){ .srq_limit = cap + 5 }, IBV_SRQ_LIMIT) != EINVAL) DIE("limit above max_wr");
    if (ibv_modify_srq(s, &(struct ibv_srq_attr){ .max_wr = cap }, 0x80) != EINVAL) DIE("unknown attribute mask");
    if (ibv_query_srq(s, &sa) || sa.max_wr != cap + 4) DIE("query after modify: max_wr %u", sa.max_wr);
    srq = keep;
    /* A queue pair with the SRQ: no receive queue of its own, query names
     * the SRQ, and the SRQ cannot go while it is there. */
    struct ibv_qp *q = make_qp(rcq[0], s);
    if (!q) DIE("ibv_create_qp with an SRQ");
    struct ibv_qp_attr qa;
    struct ibv_qp_init_attr qi;
    if (ibv_query_qp(q, &qa, IBV_QP_CAP, &qi) || qi.srq != s) DIE("ibv_query_qp: srq");
    struct ibv_qp_attr init = { .qp_state = IBV_QPS_INIT, .port_num = 1 };
    if (ibv_modify_qp(q, &init, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS)) DIE("INIT");
    struct ibv_recv_wr w4 = { .wr_id = 105, .sg_list = sg, .num_sge = 1 };
    if (ibv_post_recv(q, &w4, &badwr) == 0) DIE("ibv_post_recv on a queue pair with an SRQ succeeded");
    if (ibv_destroy_srq(s) != EBUSY) DIE("destroying an SRQ in use: not EBUSY");
    if (ibv_destroy_qp(q) || ibv_destroy_srq(s)) DIE("destroying the queue pair, then the SRQ");
}

/* A queue pair connected to itself (RTR with its own GID and number, as
 * UCX does for an endpoint to its own worker): a SEND lands in its own
 * receive (completion with its number, src_qp itself), a WRITE, a READ and
 * a fetch-and-add act on its own registration; back to RESET and again. */
static void loopback_checks(void) {
    struct ibv_cq *cq = ibv_create_cq(ctx, 64, NULL, NULL, 0);
    struct ibv_qp_init_attr ia = { .send_cq = cq, .recv_cq = cq, .qp_type = IBV_QPT_RC,
                                   .cap = { .max_send_wr = 16, .max_recv_wr = 16, .max_send_sge = 1, .max_recv_sge = 1 } };
    struct ibv_qp *q = cq ? ibv_create_qp(pd, &ia) : NULL;
    if (!q) DIE("loopback: create");
    unsigned char *lb = buf + BUF / 2 + BUF / 4;
    for (int round = 0; round < 2; round++) {
        struct ibv_qp *keep[2] = { qp[0], qp[1] };
        qp[0] = q;
        them.qpn[0] = q->qp_num;
        if (ibv_query_gid(ctx, 1, 0, &them.gid)) DIE("gid");
        them.rkey = mr->rkey;
        them.addr = (uintptr_t)buf;
        connect_qp(0);
        struct ibv_sge rs = { (uintptr_t)lb, 256, mr->lkey };
        struct ibv_recv_wr rw = { .wr_id = 600 + round, .sg_list = &rs, .num_sge = 1 }, *bad;
        if (ibv_post_recv(q, &rw, &bad)) DIE("loopback: post_recv");
        fill(lb + 1024, 200, 60 + round);
        send_on(0, 610, lb + 1024, 200, IBV_WR_SEND, 0);
        struct ibv_wc w[2];
        for (int i = 0; i < 2; i++) w[i] = wait_wc(cq, 20);
        if (w[0].wr_id == 610) { struct ibv_wc t = w[0]; w[0] = w[1]; w[1] = t; }
        if (w[0].status || w[0].wr_id != 600u + round || w[0].opcode != IBV_WC_RECV || w[0].qp_num != q->qp_num || w[0].src_qp != q->qp_num || w[0].byte_len != 200 || !check(lb, 200, 60 + round))
            DIE("loopback SEND: wr %" PRIu64 " '%s' qp %x src %x", w[0].wr_id, ibv_wc_status_str(w[0].status), w[0].qp_num, w[0].src_qp);
        if (w[1].status || w[1].wr_id != 610) DIE("loopback SEND completion");
        /* WRITE to buf + BUF/2 (send_on's target), then READ it back. */
        fill(lb + 2048, 3000, 70 + round);
        send_on(0, 611, lb + 2048, 3000, IBV_WR_RDMA_WRITE, 0);
        if (wait_wc(cq, 20).status || !check(buf + BUF / 2, 3000, 70 + round)) DIE("loopback WRITE");
        struct ibv_sge gs = { (uintptr_t)(lb + 8192), 3000, mr->lkey };
        struct ibv_send_wr gw = { .wr_id = 612, .sg_list = &gs, .num_sge = 1, .opcode = IBV_WR_RDMA_READ, .send_flags = IBV_SEND_SIGNALED }, *sbad;
        gw.wr.rdma.remote_addr = (uintptr_t)(buf + BUF / 2);
        gw.wr.rdma.rkey = mr->rkey;
        if (ibv_post_send(q, &gw, &sbad)) DIE("loopback READ post");
        struct ibv_wc rw2 = wait_wc(cq, 20);
        if (rw2.status || rw2.wr_id != 612 || !check(lb + 8192, 3000, 70 + round)) DIE("loopback READ: wr %" PRIu64 " %s", rw2.wr_id, ibv_wc_status_str(rw2.status));
        volatile uint64_t *word = (volatile uint64_t *)(lb + 16384), *old = word + 8;
        *word = 40;
        struct ibv_sge as = { (uintptr_t)old, 8, mr->lkey };
        struct ibv_send_wr aw = { .wr_id = 613, .sg_list = &as, .num_sge = 1, .opcode = IBV_WR_ATOMIC_FETCH_AND_ADD, .send_flags = IBV_SEND_SIGNALED };
        aw.wr.atomic.remote_addr = (uintptr_t)word;
        aw.wr.atomic.rkey = mr->rkey;
        aw.wr.atomic.compare_add = 2;
        if (ibv_post_send(q, &aw, &sbad) || wait_wc(cq, 20).status || *old != 40 || *word != 42) DIE("loopback fetch-and-add");
        struct ibv_qp_attr ra = { .qp_state = IBV_QPS_RESET };
        if (ibv_modify_qp(q, &ra, IBV_QP_STATE)) DIE("loopback: RESET");
        qp[0] = keep[0];
        qp[1] = keep[1];
    }
    if (ibv_destroy_qp(q) || ibv_destroy_cq(cq)) DIE("loopback: destroy");
}

int main(int argc, char **argv) {
    role = argc > 1 ? argv[1] : "?";
    int server = !strcmp(role, "server");
    if (server ? argc < 3 : argc < 4) DIE("usage: ffvsrq server PORT | ffvsrq client HOST PORT");
    int n;
    struct ibv_device **list = ibv_get_device_list(&n);
    if (!list || n < 1) DIE("no verbs device");
    ctx = ibv_open_device(list[0]);
    if (!ctx) DIE("ibv_open_device");
    pd = ibv_alloc_pd(ctx);
    buf = aligned_alloc(4096, BUF);
    if (!pd || !buf) DIE("alloc");
    memset(buf, 0, BUF);
    mr = ibv_reg_mr(pd, buf, BUF, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_ATOMIC);
    scq = ibv_create_cq(ctx, 256, NULL, NULL, 0);
    rcq[0] = ibv_create_cq(ctx, 256, NULL, NULL, 0);
    rcq[1] = ibv_create_cq(ctx, 256, NULL, NULL, 0);
    if (!mr || !scq || !rcq[0] || !rcq[1]) DIE("mr/cq");
    if (server) {
        local_checks();
        loopback_checks();
        srq = make_srq(64, 2, 0);
        if (!srq) DIE("ibv_create_srq");
    }
    for (int i = 0; i < 2; i++) {
        qp[i] = make_qp(rcq[i], srq);
        if (!qp[i]) DIE("ibv_create_qp");
        me.qpn[i] = qp[i]->qp_num;
    }
    if (ibv_query_gid(ctx, 1, 0, &me.gid)) DIE("ibv_query_gid");
    me.rkey = mr->rkey;
    me.addr = (uintptr_t)buf;
    exchange(server, server ? NULL : argv[2], server ? argv[2] : argv[3]);
    if (server) printf("OK SRQ limits, errors, EBUSY\nOK a queue pair connected to itself\n"); /* after LISTENING: the harness reads that first */
    for (int i = 0; i < 2; i++) connect_qp(i);
    meet(1);

    /* 1. Order: the server posts receives 0..15; the client sends message
     * k on queue pair k*7%3%2 (A A B A B B ...), one at a time; message k
     * takes receive k whichever queue pair it came on, and completes on
     * that queue pair's receive CQ with its number. */
    enum { N1 = 16 };
    int on[N1];
    for (int k = 0; k < N1; k++) on[k] = k * 7 % 3 % 2;
    if (server) {
        for (int k = 0; k < N1; k++) if (srq_recv(k, buf + SLOT * k, SLOT, mr->lkey)) DIE("post_srq_recv");
        meet(2);
        int seen[2] = { 0, 0 };
        for (int k = 0; k < N1; k++) {
            int q = on[k];
            struct ibv_wc wc = wait_wc(rcq[q], 20);
            if (wc.status != IBV_WC_SUCCESS || wc.opcode != IBV_WC_RECV) DIE("message %d: '%s'", k, ibv_wc_status_str(wc.status));
            if (wc.wr_id != (uint64_t)k) DIE("message %d took receive %" PRIu64 " (not in the order posted)", k, wc.wr_id);
            if (wc.qp_num != qp[q]->qp_num || wc.src_qp != them.qpn[q]) DIE("message %d: qp_num %x src_qp %x, expected %x %x", k, wc.qp_num, wc.src_qp, qp[q]->qp_num, them.qpn[q]);
            if (wc.byte_len != 40u + k || !check(buf + SLOT * k, 40 + k, k)) DIE("message %d: wrong bytes", k);
            seen[q]++;
        }
        quiet(rcq[0], 0.1, "order");
        quiet(rcq[1], 0.1, "order");
        printf("OK two queue pairs share the SRQ: %d + %d messages, receives taken in order\n", seen[0], seen[1]);
    } else {
        meet(2);
        for (int k = 0; k < N1; k++) {
            unsigned char *p = buf + SLOT * k;
            fill(p, 40 + k, k);
            send_on(on[k], 1000 + k, p, 40 + k, IBV_WR_SEND, 0);
            struct ibv_wc wc = wait_wc(scq, 20);
            if (wc.status != IBV_WC_SUCCESS || wc.wr_id != 1000u + k) DIE("send %d: '%s'", k, ibv_wc_status_str(wc.status));
        }
    }
    meet(3);

    /* 2. An empty SRQ: SENDs on both queue pairs wait (no completion at
     * the sender) until the server posts receives; then all arrive. */
    if (server) {
        meet(4);
        meet(41); /* the client saw no completion meanwhile */
        quiet(rcq[0], 0.05, "empty SRQ");
        quiet(rcq[1], 0.05, "empty SRQ");
        for (int k = 0; k < 6; k++) if (srq_recv(200 + k, buf + SLOT * (32 + k), SLOT, mr->lkey)) DIE("post_srq_recv");
        int got[6] = { 0 };
        for (int i = 0; i < 6; i++) {
            struct ibv_wc wc;
            double end = now() + 20;
            int q = 0;
            for (;;) {
                if (ibv_poll_cq(rcq[q], 1, &wc) == 1) break;
                q ^= 1;
                if (now() > end) DIE("empty SRQ: %d of 6 messages", i);
            }
            if (wc.status != IBV_WC_SUCCESS || wc.wr_id < 200 || wc.wr_id > 205 || wc.qp_num != qp[q]->qp_num) DIE("empty SRQ: completion %" PRIu64 " '%s'", wc.wr_id, ibv_wc_status_str(wc.status));
            unsigned char *p = buf + SLOT * (32 + wc.wr_id - 200);
            uint32_t seed = p[0];
            if (seed < 50 || seed > 55 || got[seed - 50] || wc.byte_len != 64 || !check(p + 1, 63, seed)) DIE("empty SRQ: wrong bytes in receive %" PRIu64, wc.wr_id);
            if ((int)(seed - 50) % 2 != q) DIE("empty SRQ: message %u on the wrong queue pair", seed);
            got[seed - 50] = 1;
        }
        printf("OK empty SRQ: SENDs on both queue pairs waited, then 6 of 6\n");
    } else {
        for (int k = 0; k < 6; k++) {
            unsigned char *p = buf + SLOT * (32 + k);
            fill(p + 1, 63, 50 + k);
            p[0] = 50 + k;
            send_on(k % 2, 2000 + k, p, 64, IBV_WR_SEND, 0);
        }
        meet(4);
        quiet(scq, 0.3, "SENDs to an empty SRQ");
        meet(41);
        for (int i = 0; i < 6; i++) {
            struct ibv_wc wc = wait_wc(scq, 20);
            if (wc.status != IBV_WC_SUCCESS || wc.wr_id < 2000 || wc.wr_id > 2005) DIE("empty SRQ send: '%s'", ibv_wc_status_str(wc.status));
        }
    }
    meet(5);

    /* 3. A WRITE with immediate takes a receive (its bytes go where it
     * writes); a 100,000-byte SEND scatters into a two-element receive. */
    size_t big = 100000;
    if (server) {
        struct ibv_sge s2[2] = { { (uintptr_t)(buf + BUF / 4), 30000, mr->lkey }, { (uintptr_t)(buf + BUF / 4 + 65536), 80000, mr->lkey } };
        struct ibv_recv_wr w = { .wr_id = 301, .sg_list = s2, .num_sge = 2 }, *badwr;
        if (srq_recv(300, buf + SLOT * 40, SLOT, mr->lkey) || ibv_post_srq_recv(srq, &w, &badwr)) DIE("post_srq_recv");
        meet(6);
        struct ibv_wc wc = wait_wc(rcq[1], 20);
        if (wc.status || wc.wr_id != 300 || wc.opcode != IBV_WC_RECV_RDMA_WITH_IMM || ntohl(wc.imm_data) != 0xfeed || wc.byte_len != 5000 || wc.qp_num != qp[1]->qp_num)
            DIE("write with immediate: wr %" PRIu64 " '%s' opcode %d", wc.wr_id, ibv_wc_status_str(wc.status), wc.opcode);
        if (!check(buf + BUF / 2, 5000, 77)) DIE("write with immediate: wrong bytes");
        wc = wait_wc(rcq[0], 20);
        if (wc.status || wc.wr_id != 301 || wc.byte_len != big) DIE("big send: wr %" PRIu64 " '%s' %u bytes", wc.wr_id, ibv_wc_status_str(wc.status), wc.byte_len);
        unsigned char *tmp = malloc(big);
        memcpy(tmp, buf + BUF / 4, 30000);
        memcpy(tmp + 30000, buf + BUF / 4 + 65536, big - 30000);
        if (!check(tmp, big, 78)) DIE("big send: wrong bytes");
        free(tmp);
        printf("OK write with immediate and a 100000-byte send through the SRQ\n");
    } else {
        meet(6);
        fill(buf, 5000, 77);
        send_on(1, 3000, buf, 5000, IBV_WR_RDMA_WRITE_WITH_IMM, 0xfeed);
        if (wait_wc(scq, 20).status) DIE("write with immediate");
        fill(buf + BUF / 4, big, 78);
        send_on(0, 3001, buf + BUF / 4, big, IBV_WR_SEND, 0);
        if (wait_wc(scq, 20).status) DIE("big send");
    }
    meet(7);

    /* 4. The limit: 6 receives posted, armed at 4; two SENDs leave 4 (no
     * event), the third leaves 3: IBV_EVENT_SRQ_LIMIT_REACHED, once, and
     * the limit reads 0 (disarmed). */
    if (server) {
        for (int k = 0; k < 6; k++) if (srq_recv(400 + k, buf + SLOT * (48 + k), SLOT, mr->lkey)) DIE("post_srq_recv");
        if (ibv_modify_srq(srq, &(struct ibv_srq_attr){ .srq_limit = 4 }, IBV_SRQ_LIMIT)) DIE("arming the limit");
        fcntl(ctx->async_fd, F_SETFL, fcntl(ctx->async_fd, F_GETFL) | O_NONBLOCK);
        struct ibv_async_event ev;
        meet(8);
        for (int k = 0; k < 2; k++) if (wait_wc(rcq[0], 20).wr_id != 400u + k) DIE("limit: wrong receive");
        if (ibv_get_async_event(ctx, &ev) == 0) DIE("limit event with 4 receives left");
        meet(9);
        if (wait_wc(rcq[0], 20).wr_id != 402) DIE("limit: wrong receive");
        struct pollfd pf = { ctx->async_fd, POLLIN, 0 };
        if (poll(&pf, 1, 5000) != 1) DIE("async_fd not readable after the limit");
        if (ibv_get_async_event(ctx, &ev) || ev.event_type != IBV_EVENT_SRQ_LIMIT_REACHED || ev.element.srq != srq) DIE("no SRQ limit event");
        ibv_ack_async_event(&ev);
        struct ibv_srq_attr sa;
        if (ibv_query_srq(srq, &sa) || sa.srq_limit != 0) DIE("limit still armed: %u", sa.srq_limit);
        meet(10);
        if (wait_wc(rcq[0], 20).wr_id != 403) DIE("limit: wrong receive");
        if (ibv_get_async_event(ctx, &ev) == 0) DIE("a second limit event");
        printf("OK SRQ limit event\n");
    } else {
        meet(8);
        for (int k = 0; k < 2; k++) { send_on(0, 4000 + k, buf, 8, IBV_WR_SEND, 0); if (wait_wc(scq, 20).status) DIE("send"); }
        meet(9);
        send_on(0, 4002, buf, 8, IBV_WR_SEND, 0);
        if (wait_wc(scq, 20).status) DIE("send");
        meet(10);
        send_on(0, 4003, buf, 8, IBV_WR_SEND, 0);
        if (wait_wc(scq, 20).status) DIE("send");
    }
    meet(11);

    /* 5. Queue pair A goes to the error state: the SRQ's receives stay (B
     * takes the two left, 404 and 405, in order); nothing is flushed. */
    if (server) {
        struct ibv_qp_attr a = { .qp_state = IBV_QPS_ERR };
        if (ibv_modify_qp(qp[0], &a, IBV_QP_STATE)) DIE("to ERR");
        quiet(rcq[0], 0.1, "a failed queue pair flushed the SRQ");
        meet(12);
        for (int k = 0; k < 2; k++) {
            struct ibv_wc wc = wait_wc(rcq[1], 20);
            if (wc.status || wc.wr_id != 404u + k || wc.qp_num != qp[1]->qp_num) DIE("after A failed: wr %" PRIu64 " '%s'", wc.wr_id, ibv_wc_status_str(wc.status));
        }
        quiet(rcq[0], 0.1, "flush");
        if (ibv_destroy_srq(srq) != EBUSY) DIE("destroying the SRQ under two queue pairs: not EBUSY");
        printf("OK a failed queue pair leaves the SRQ to the other\n");
    } else {
        meet(12);
        for (int k = 0; k < 2; k++) { send_on(1, 5000 + k, buf, 8, IBV_WR_SEND, 0); if (wait_wc(scq, 20).status) DIE("send on B"); }
    }
    meet(13);
    for (int i = 0; i < 2; i++) if (ibv_destroy_qp(qp[i])) DIE("ibv_destroy_qp");
    if (server && ibv_destroy_srq(srq)) DIE("ibv_destroy_srq");
    if (ibv_destroy_cq(scq) || ibv_destroy_cq(rcq[0]) || ibv_destroy_cq(rcq[1]) || ibv_dereg_mr(mr) || ibv_dealloc_pd(pd) || ibv_close_device(ctx)) DIE("teardown");
    ibv_free_device_list(list);
    printf("OK done\n");
    return 0;
}
