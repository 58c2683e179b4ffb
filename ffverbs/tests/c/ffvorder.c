/* ffvorder: completion order on an RC queue pair (plain libibverbs API)
 * between two processes: `ffvorder server PORT [uc]` and `ffvorder client
 * HOST PORT [uc]` (uc: UC queue pairs, and the client checks that a READ
 * on one is refused with EINVAL). Each has one queue pair whose sends and receives complete on one
 * completion queue. They ping-pong ROUNDS times: the client sends a ping,
 * the server answers each with a pong. With a NIC the ACK of a SEND comes
 * before the peer's reply, so on either side the completion of a SEND
 * comes before the receive of the message that answers it; applications
 * that share a queue or a completion channel between sends and receives
 * count on that (perftest's `ib_send_lat -e` takes the first event after
 * its send as the send's). The client leaves the library alone for a while
 * after each ping, so that the ACK and the pong are both there when it
 * looks. Then the client destroys its queue pair: the server's receive
 * left posted must stay so for a second (a NIC's queue pair does not learn
 * that its peer went; programs that end together, like rdma-core's
 * ibv_rc_pingpong, count on no error from it), and be flushed within 10 s
 * (a receiver never hangs on a dead peer); on RC, a send posted then fails
 * with "transport retry counter exceeded", not within 0.2 s (the queue
 * pair's retries take 0.54 s), and the receive is flushed after it. Exits 0 only if every
 * completion came in order with the right bytes; prints "OK <what>". */
#define PROG "ffvorder"
#include "ffvtest.h"

#define ROUNDS 200
#define SLOT 64

static struct ibv_qp *qp;
static int uc;
static struct ibv_cq *cq;
static struct ibv_mr *mr;
static unsigned char *buf;
struct peer { union ibv_gid gid; uint32_t qpn; } me, them;

static void post_recv(uint64_t id) {
    struct ibv_sge s = { (uintptr_t)buf, SLOT, mr->lkey };
    struct ibv_recv_wr wr = { .wr_id = id, .sg_list = &s, .num_sge = 1 }, *bad;
    if (ibv_post_recv(qp, &wr, &bad)) DIE("ibv_post_recv");
}

static void post_send(uint64_t id, uint32_t round) {
    unsigned char *p = buf + SLOT;
    memcpy(p, &round, 4);
    fill(p + 4, SLOT - 4, round);
    struct ibv_sge s = { (uintptr_t)p, SLOT, mr->lkey };
    struct ibv_send_wr wr = { .wr_id = id, .sg_list = &s, .num_sge = 1, .opcode = IBV_WR_SEND, .send_flags = IBV_SEND_SIGNALED }, *bad;
    int rc = ibv_post_send(qp, &wr, &bad);
    if (rc) DIE("ibv_post_send: %s", strerror(rc));
}

/* The next completion must be `id` with `opcode`; a receive must carry
 * round `round`'s bytes. */
static void next(uint64_t id, enum ibv_wc_opcode opcode, uint32_t round, const char *what) {
    struct ibv_wc wc = wait_wc(cq, 20);
    if (wc.status != IBV_WC_SUCCESS) DIE("round %u, %s: '%s'", round, what, ibv_wc_status_str(wc.status));
    if (wc.wr_id != id || wc.opcode != opcode)
        DIE("round %u: completion %" PRIu64 " (opcode %d) came first, expected %s (%" PRIu64 ", opcode %d)", round, wc.wr_id, wc.opcode, what, id, opcode);
    uint32_t r;
    memcpy(&r, buf, 4);
    if (opcode == IBV_WC_RECV && (wc.byte_len != SLOT || r != round || !check(buf + 4, SLOT - 4, round))) DIE("round %u: wrong message", round);
}

static void connect_qp(void) {
    connect_rc(qp, them.qpn, them.gid, IBV_ACCESS_LOCAL_WRITE, uc);
}

int main(int argc, char **argv) {
    role = argc > 1 ? argv[1] : "?";
    int server = !strcmp(role, "server");
    if (server ? argc < 3 : argc < 4) DIE("usage: ffvorder server PORT [uc] | ffvorder client HOST PORT [uc]");
    uc = argc > (server ? 3 : 4) && !strcmp(argv[argc - 1], "uc");
    int n;
    struct ibv_device **list = ibv_get_device_list(&n);
    if (!list || n < 1) DIE("no verbs device");
    struct ibv_context *ctx = ibv_open_device(list[0]);
    if (!ctx) DIE("ibv_open_device");
    struct ibv_pd *pd = ibv_alloc_pd(ctx);
    buf = aligned_alloc(4096, 4096);
    if (!pd || !buf) DIE("alloc");
    mr = ibv_reg_mr(pd, buf, 4096, IBV_ACCESS_LOCAL_WRITE);
    cq = ibv_create_cq(ctx, 64, NULL, NULL, 0);
    if (!mr || !cq) DIE("mr/cq");
    struct ibv_qp_init_attr ia = { .send_cq = cq, .recv_cq = cq, .qp_type = uc ? IBV_QPT_UC : IBV_QPT_RC,
                                   .cap = { .max_send_wr = 16, .max_recv_wr = 16, .max_send_sge = 1, .max_recv_sge = 1 } };
    qp = ibv_create_qp(pd, &ia);
    if (!qp) DIE("ibv_create_qp");
    if (ibv_query_gid(ctx, 1, 0, &me.gid)) DIE("ibv_query_gid");
    me.qpn = qp->qp_num;
    sock = tcp_meet(server, server ? NULL : argv[2], server ? argv[2] : argv[3]);
    swap_bytes(sock, &me, &them, sizeof me);
    connect_qp();
    post_recv(0);
    meet(1);
    for (uint32_t r = 0; r < ROUNDS; r++) {
        if (server) {
            next(r, IBV_WC_RECV, r, "the ping");
            post_recv(r + 1);
            post_send(1000 + r, r);
            next(1000 + r, IBV_WC_SEND, r, "the pong's send");
        } else {
            post_send(1000 + r, r);
            /* No verb calls for 0.5 ms: the answer and the pong land. */
            double until = now() + 0.0005;
            while (now() < until) {
            }
            next(1000 + r, IBV_WC_SEND, r, "the ping's send");
            next(r, IBV_WC_RECV, r, "the pong");
            post_recv(r + 1);
        }
    }
    /* Before the last meeting: after it the peer closes its queue pair,
     * which puts ours in the error state. */
    struct ibv_qp_attr qa;
    struct ibv_qp_init_attr qi;
    if (ibv_query_qp(qp, &qa, IBV_QP_STATE, &qi) || qi.qp_type != ia.qp_type || qa.qp_state != IBV_QPS_RTS) DIE("ibv_query_qp: type %d, state %d", qi.qp_type, qa.qp_state);
    if (uc && !server) {
        struct ibv_sge s = { (uintptr_t)buf, 8, mr->lkey };
        struct ibv_send_wr wr = { .wr_id = 7, .sg_list = &s, .num_sge = 1, .opcode = IBV_WR_RDMA_READ, .send_flags = IBV_SEND_SIGNALED }, *bad = NULL;
        wr.wr.rdma.remote_addr = 4096;
        wr.wr.rdma.rkey = 1;
        int rc = ibv_post_send(qp, &wr, &bad);
        if (rc != EINVAL || bad != &wr) DIE("a READ on a UC queue pair: %d (%s), expected EINVAL", rc, strerror(rc));
        printf("OK a READ on a UC queue pair is refused (EINVAL)\n");
    }
    meet(2);
    printf("OK %d rounds%s, every send completed before its answer was received\n", ROUNDS, uc ? " on UC" : "");
    if (server) {
        quiet(cq, 1.0, "the peer's queue pair went away");
        if (!uc) {
            /* A send now goes unanswered: as a NIC's, it fails once the
             * retries ran out (timeout 14, retry_cnt 7: about 0.54 s),
             * not at once, and takes the queue pair to the error state. */
            post_send(5000, 0);
            quiet(cq, 0.2, "a send to a peer that went");
            struct ibv_wc wc = wait_wc(cq, 10);
            if (wc.status != IBV_WC_RETRY_EXC_ERR || wc.wr_id != 5000) DIE("a send to a peer that went: completion %" PRIu64 " '%s'", wc.wr_id, ibv_wc_status_str(wc.status));
            printf("OK a send to a peer that went failed after the retries: '%s'\n", ibv_wc_status_str(wc.status));
        }
        struct ibv_wc wc = wait_wc(cq, 10);
        if (wc.status != IBV_WC_WR_FLUSH_ERR || wc.wr_id != ROUNDS) DIE("after the peer went: completion %" PRIu64 " '%s'", wc.wr_id, ibv_wc_status_str(wc.status));
        printf("OK the peer went: our receive stayed posted for 1 s, then was flushed\n");
        meet(3);
    } else {
        if (ibv_destroy_qp(qp)) DIE("destroy qp");
        qp = NULL;
        meet(3);
    }
    if ((qp && ibv_destroy_qp(qp)) || ibv_dereg_mr(mr) || ibv_destroy_cq(cq) || ibv_dealloc_pd(pd) || ibv_close_device(ctx)) DIE("destroy");
    ibv_free_device_list(list);
    return 0;
}
