/* ffvud: checks UD queue pairs and address handles (plain libibverbs API)
 * between two processes: `ffvud server PORT` and `ffvud client HOST PORT`.
 * Each has two UD queue pairs; the client sends datagrams to both of the
 * server's through one address handle (the server's GID), the server
 * answers each to the queue pair it came from (src_qp) and checks the
 * GRH (40 bytes: source and destination GID), the bytes, immediate data,
 * and that a wrong Q_Key, a datagram with no receive posted and one over
 * the MTU do not arrive (or are refused). Exits 0 only if every check
 * passed; prints "OK <what>" for each. */
#define PROG "ffvud"
#include "ffvtest.h"

#define QKEY 0x1ee7a330u
#define SLOT 8192

static struct ibv_context *ctx;
static struct ibv_pd *pd;
static struct ibv_cq *scq, *rcq;
static struct ibv_qp *qp[2];
static struct ibv_ah *ah;
static unsigned char *buf;
static struct ibv_mr *mr;
struct peer { union ibv_gid gid; uint32_t qpn[2]; } me, them;

static void recv_on(int q, uint64_t id) {
    struct ibv_sge s = { (uintptr_t)(buf + SLOT * id), SLOT, mr->lkey };
    struct ibv_recv_wr wr = { .wr_id = id, .sg_list = &s, .num_sge = 1 }, *bad;
    if (ibv_post_recv(qp[q], &wr, &bad)) DIE("ibv_post_recv");
}

static int send_to(int q, struct ibv_ah *a, uint32_t qpn, uint32_t qkey, uint64_t id, void *p, uint32_t len, int imm) {
    struct ibv_sge s = { (uintptr_t)p, len, mr->lkey };
    struct ibv_send_wr wr = { .wr_id = id, .sg_list = &s, .num_sge = 1, .opcode = imm ? IBV_WR_SEND_WITH_IMM : IBV_WR_SEND, .send_flags = IBV_SEND_SIGNALED }, *bad;
    wr.imm_data = htonl(id);
    wr.wr.ud.ah = a;
    wr.wr.ud.remote_qpn = qpn;
    wr.wr.ud.remote_qkey = qkey;
    return ibv_post_send(qp[q], &wr, &bad);
}

static void exchange(int server, const char *host, const char *port) {
    sock = tcp_meet(server, host, port);
    swap_bytes(sock, &me, &them, sizeof me);
}

/* A datagram in slot `id`: the GRH names the sender and us, then `len`
 * bytes of pattern `seed`. */
static void check_dgram(struct ibv_wc wc, int q, uint64_t id, uint32_t src_qpn, uint32_t len, uint32_t seed, const char *what) {
    if (wc.status != IBV_WC_SUCCESS || wc.wr_id != id || wc.opcode != IBV_WC_RECV) DIE("%s: wr %" PRIu64 " '%s'", what, wc.wr_id, ibv_wc_status_str(wc.status));
    if (wc.qp_num != qp[q]->qp_num || wc.src_qp != src_qpn || !(wc.wc_flags & IBV_WC_GRH)) DIE("%s: qp_num %x src_qp %x flags %x", what, wc.qp_num, wc.src_qp, wc.wc_flags);
    if (wc.byte_len != 40 + len) DIE("%s: %u bytes, expected 40 + %u", what, wc.byte_len, len);
    const unsigned char *p = buf + SLOT * id;
    if (memcmp(p + 8, them.gid.raw, 16) || memcmp(p + 24, me.gid.raw, 16)) DIE("%s: GRH does not name the sender and us", what);
    if (!check(p + 40, len, seed)) DIE("%s: wrong bytes", what);
}

int main(int argc, char **argv) {
    role = argc > 1 ? argv[1] : "?";
    int server = !strcmp(role, "server");
    if (server ? argc < 3 : argc < 4) DIE("usage: ffvud server PORT | ffvud client HOST PORT");
    int n;
    struct ibv_device **list = ibv_get_device_list(&n);
    if (!list || n < 1 || !(ctx = ibv_open_device(list[0]))) DIE("no verbs device");
    pd = ibv_alloc_pd(ctx);
    buf = aligned_alloc(4096, 64 * SLOT);
    mr = ibv_reg_mr(pd, buf, 64 * SLOT, IBV_ACCESS_LOCAL_WRITE);
    scq = ibv_create_cq(ctx, 256, NULL, NULL, 0);
    rcq = ibv_create_cq(ctx, 256, NULL, NULL, 0);
    if (!pd || !buf || !mr || !scq || !rcq) DIE("setup");
    struct ibv_port_attr port;
    if (ibv_query_port(ctx, 1, &port) || port.active_mtu != IBV_MTU_4096) DIE("port");
    for (int i = 0; i < 2; i++) {
        struct ibv_qp_init_attr ia = { .send_cq = scq, .recv_cq = rcq, .qp_type = IBV_QPT_UD,
                                       .cap = { .max_send_wr = 32, .max_recv_wr = 32, .max_send_sge = 2, .max_recv_sge = 1, .max_inline_data = 64 } };
        qp[i] = ibv_create_qp(pd, &ia);
        if (!qp[i] || qp[i]->qp_type != IBV_QPT_UD) DIE("ibv_create_qp (UD)");
        struct ibv_qp_attr a = { .qp_state = IBV_QPS_INIT, .pkey_index = 0, .port_num = 1, .qkey = QKEY };
        if (ibv_modify_qp(qp[i], &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_QKEY)) DIE("INIT");
        a.qp_state = IBV_QPS_RTR;
        if (ibv_modify_qp(qp[i], &a, IBV_QP_STATE)) DIE("RTR");
        a.qp_state = IBV_QPS_RTS;
        a.sq_psn = 0;
        if (ibv_modify_qp(qp[i], &a, IBV_QP_STATE | IBV_QP_SQ_PSN)) DIE("RTS");
        struct ibv_qp_attr qa; struct ibv_qp_init_attr qi;
        if (ibv_query_qp(qp[i], &qa, IBV_QP_QKEY | IBV_QP_STATE, &qi) || qa.qkey != QKEY || qa.qp_state != IBV_QPS_RTS || qi.qp_type != IBV_QPT_UD) DIE("ibv_query_qp");
        me.qpn[i] = qp[i]->qp_num;
    }
    if (ibv_query_gid(ctx, 1, 0, &me.gid)) DIE("ibv_query_gid");
    /* An address handle needs the GID (a global route). */
    struct ibv_ah_attr bad_attr = { .is_global = 0, .port_num = 1 };
    errno = 0;
    if (ibv_create_ah(pd, &bad_attr) || errno != EINVAL) DIE("an address handle without a GID");
    exchange(server, server ? NULL : argv[2], server ? argv[2] : argv[3]);
    struct ibv_ah_attr aa = { .is_global = 1, .port_num = 1, .grh = { .dgid = them.gid, .hop_limit = 64 } };
    if (!(ah = ibv_create_ah(pd, &aa))) DIE("ibv_create_ah");

    enum { N = 8 };
    if (server) {
        for (int k = 0; k < N; k++) recv_on(k % 2, k);
        meet(1);
        /* Datagram k arrives on queue pair k % 2 from the client's queue
         * pair k / 4; 3000 bytes + k, every third with immediate. */
        for (int k = 0; k < N; k++) {
            struct ibv_wc wc = wait_wc(rcq, 20);
            int q = wc.qp_num == qp[0]->qp_num ? 0 : 1;
            uint64_t id = wc.wr_id;
            if (id >= N || (int)id % 2 != q) DIE("datagram on the wrong queue pair (wr %" PRIu64 ")", id);
            uint32_t seed = wc.byte_len - 40 - 3000; /* datagram k has 3000 + k bytes */
            if (seed >= N) DIE("datagram of %u bytes", wc.byte_len);
            check_dgram(wc, q, id, them.qpn[seed / 4 % 2], 3000 + seed % N, seed, "datagram");
            if ((seed % 3 == 0) != !!(wc.wc_flags & IBV_WC_WITH_IMM) || (seed % 3 == 0 && ntohl(wc.imm_data) != 100 + seed)) DIE("datagram %u: immediate", seed);
            /* The answer goes back to the sender's queue pair (src_qp). */
            unsigned char *p = buf + SLOT * (32 + k);
            fill(p, 100, 200 + seed);
            if (send_to(q, ah, wc.src_qp, QKEY, 100 + seed, p, 100, 1)) DIE("answer");
            if (wait_wc(scq, 20).status != IBV_WC_SUCCESS) DIE("answer send");
        }
        printf("OK %d datagrams to two queue pairs: GRH, src_qp, bytes, immediate\n", N);
        meet(2);
        /* A wrong Q_Key and no receive posted: dropped (nothing arrives);
         * then a receive and the right Q_Key: exactly that one. */
        recv_on(0, 20);
        meet(3);
        quiet(rcq, 0.3, "a datagram with the wrong Q_Key");
        meet(4);
        struct ibv_wc wc = wait_wc(rcq, 20);
        check_dgram(wc, 0, 20, them.qpn[0], 64, 77, "after the drops");
        quiet(rcq, 0.1, "a dropped datagram");
        printf("OK wrong Q_Key and no receive: dropped\n");
        meet(5);
    } else {
        meet(1);
        for (int k = 0; k < N; k++) recv_on(k / 4, 10 + k);
        for (int k = 0; k < N; k++) fill(buf + SLOT * (32 + k), 3000 + k, k);
        for (int k = 0; k < N; k++) {
            if (send_to(k / 4, ah, them.qpn[k % 2], QKEY, 100 + k, buf + SLOT * (32 + k), 3000 + k, k % 3 == 0)) DIE("ibv_post_send (UD)");
            if (wait_wc(scq, 20).status != IBV_WC_SUCCESS) DIE("UD send");
        }
        for (int k = 0; k < N; k++) {
            struct ibv_wc wc = wait_wc(rcq, 20);
            if (wc.status || wc.wr_id < 10 || wc.wr_id >= 10 + N || wc.byte_len != 140) DIE("answer: wr %" PRIu64 " '%s' %u bytes", wc.wr_id, ibv_wc_status_str(wc.status), wc.byte_len);
            int q = wc.wr_id >= 14;
            uint32_t seed = ntohl(wc.imm_data) - 100;
            if (!(wc.wc_flags & IBV_WC_WITH_IMM) || seed >= N || seed / 4 != (uint32_t)q || wc.qp_num != qp[q]->qp_num || !check(buf + SLOT * wc.wr_id + 40, 100, 200 + seed)) DIE("answer %u on the wrong queue pair or wrong bytes", seed);
        }
        printf("OK answers came back to the sending queue pair\n");
        /* Over the MTU: refused when posted. */
        if (send_to(0, ah, them.qpn[0], QKEY, 90, buf, 4097, 0) != EINVAL) DIE("a 4097-byte datagram was accepted");
        meet(2);
        meet(3);
        fill(buf, 64, 77);
        if (send_to(0, ah, them.qpn[0], QKEY ^ 1, 91, buf, 64, 0)) DIE("post");
        if (send_to(0, ah, them.qpn[1], QKEY, 92, buf, 64, 0)) DIE("post"); /* no receive there */
        for (int i = 0; i < 2; i++) if (wait_wc(scq, 20).status) DIE("a UD send failed (drops complete as sent)");
        meet(4);
        if (send_to(0, ah, them.qpn[0], QKEY, 93, buf, 64, 0) || wait_wc(scq, 20).status) DIE("send");
        meet(5);
        printf("OK over the MTU refused; dropped datagrams complete at the sender\n");
    }
    if (ibv_destroy_ah(ah)) DIE("ibv_destroy_ah");
    for (int i = 0; i < 2; i++) if (ibv_destroy_qp(qp[i])) DIE("ibv_destroy_qp");
    if (ibv_destroy_cq(scq) || ibv_destroy_cq(rcq) || ibv_dereg_mr(mr) || ibv_dealloc_pd(pd) || ibv_close_device(ctx)) DIE("teardown");
    ibv_free_device_list(list);
    printf("OK done\n");
    return 0;
}
