/* ffvports: two contexts of ff0 in one process, as UCX has (its own, and
 * the one its rdma_cm transport gets from librdmacm): both report the same
 * GID, as contexts of one port do on a NIC, and queue pairs of one connect
 * to queue pairs of the other with it. Checks, between an RC queue pair in
 * each context: SENDs both ways and an RDMA WRITE, bytes checked; between
 * a UD queue pair in each: datagrams both ways, with the sender's queue
 * pair number and GID in the completion and GRH. A child made by fork
 * opens ff0 with a port of its own, and the parent's work on after it.
 * Exits 0 if all hold.
 *
 *   ffvports */
#define PROG "ffvports"
#include "ffvtest.h"
#include <sys/wait.h>

#define N 65536

struct side {
    struct ibv_context *ctx;
    struct ibv_pd *pd;
    struct ibv_cq *cq;
    struct ibv_qp *rc, *ud;
    struct ibv_mr *mr;
    unsigned char *buf;
    union ibv_gid gid;
};

static void open_side(struct side *s, struct ibv_device *dev) {
    if (!(s->ctx = ibv_open_device(dev))) DIE("ibv_open_device");
    if (ibv_query_gid(s->ctx, 1, 0, &s->gid)) DIE("ibv_query_gid");
    if (!(s->pd = ibv_alloc_pd(s->ctx))) DIE("ibv_alloc_pd");
    if (!(s->cq = ibv_create_cq(s->ctx, 64, NULL, NULL, 0))) DIE("ibv_create_cq");
    if (posix_memalign((void **)&s->buf, 4096, 2 * N + 40)) DIE("memory");
    memset(s->buf, 0, 2 * N + 40);
    int access = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ;
    if (!(s->mr = ibv_reg_mr(s->pd, s->buf, 2 * N + 40, access))) DIE("ibv_reg_mr");
    struct ibv_qp_init_attr rc = { .send_cq = s->cq, .recv_cq = s->cq, .qp_type = IBV_QPT_RC,
                                   .cap = { .max_send_wr = 16, .max_recv_wr = 16, .max_send_sge = 1, .max_recv_sge = 1 } };
    if (!(s->rc = ibv_create_qp(s->pd, &rc))) DIE("ibv_create_qp RC");
    struct ibv_qp_init_attr ud = rc;
    ud.qp_type = IBV_QPT_UD;
    if (!(s->ud = ibv_create_qp(s->pd, &ud))) DIE("ibv_create_qp UD");
    struct ibv_qp_attr a = { .qp_state = IBV_QPS_INIT, .pkey_index = 0, .port_num = 1, .qkey = 0x11111111 };
    if (ibv_modify_qp(s->ud, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_QKEY)) DIE("UD INIT");
    a.qp_state = IBV_QPS_RTR;
    if (ibv_modify_qp(s->ud, &a, IBV_QP_STATE)) DIE("UD RTR");
    a.qp_state = IBV_QPS_RTS;
    a.sq_psn = 0;
    if (ibv_modify_qp(s->ud, &a, IBV_QP_STATE | IBV_QP_SQ_PSN)) DIE("UD RTS");
}

static void post_recv(struct side *s, struct ibv_qp *qp, size_t off, size_t len, uint64_t id) {
    struct ibv_sge sge = { .addr = (uintptr_t)s->buf + off, .length = len, .lkey = s->mr->lkey };
    struct ibv_recv_wr wr = { .wr_id = id, .sg_list = &sge, .num_sge = 1 }, *bad;
    if (ibv_post_recv(qp, &wr, &bad)) DIE("ibv_post_recv");
}

/* Waits for one completion on each of the two queues (either order). */
static void both(struct side *x, struct side *y, struct ibv_wc *wx, struct ibv_wc *wy) {
    int gx = 0, gy = 0;
    double end = now() + 20;
    while (!gx || !gy) {
        if (!gx && ibv_poll_cq(x->cq, 1, wx) == 1) gx = 1;
        if (!gy && ibv_poll_cq(y->cq, 1, wy) == 1) gy = 1;
        if (now() > end) DIE("no completion within 20 s (%d, %d)", gx, gy);
    }
}

int main(void) {
    role = "process";
    int n;
    struct ibv_device **list = ibv_get_device_list(&n);
    if (!list || n < 1) DIE("no device");
    struct side s[2] = {0};
    open_side(&s[0], list[0]);
    open_side(&s[1], list[0]);
    if (s[0].ctx == s[1].ctx) DIE("one context for two opens");
    if (memcmp(&s[0].gid, &s[1].gid, sizeof s[0].gid)) DIE("the two contexts report different GIDs");
    if (s[0].rc->qp_num == s[1].rc->qp_num || s[0].ud->qp_num == s[1].ud->qp_num) DIE("queue pair numbers repeat across contexts");
    int access = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ;
    connect_rc(s[0].rc, s[1].rc->qp_num, s[1].gid, access, 0);
    connect_rc(s[1].rc, s[0].rc->qp_num, s[0].gid, access, 0);

    /* RC: a SEND each way. */
    for (int i = 0; i < 2; i++) {
        struct side *me = &s[i], *peer = &s[1 - i];
        fill(me->buf, N, 10 + i);
        post_recv(peer, peer->rc, N, N, 100 + i);
        struct ibv_sge sge = { .addr = (uintptr_t)me->buf, .length = N, .lkey = me->mr->lkey };
        struct ibv_send_wr wr = { .wr_id = 200 + i, .sg_list = &sge, .num_sge = 1, .opcode = IBV_WR_SEND, .send_flags = IBV_SEND_SIGNALED }, *bad;
        if (ibv_post_send(me->rc, &wr, &bad)) DIE("ibv_post_send SEND");
        struct ibv_wc ws, wr_;
        both(me, peer, &ws, &wr_);
        if (ws.status || wr_.status) DIE("SEND %d: %s / %s", i, ibv_wc_status_str(ws.status), ibv_wc_status_str(wr_.status));
        if (wr_.byte_len != N || wr_.qp_num != peer->rc->qp_num) DIE("SEND %d: %u bytes on queue pair %u", i, wr_.byte_len, wr_.qp_num);
        if (!check(peer->buf + N, N, 10 + i)) DIE("SEND %d: bytes differ", i);
    }
    /* RC: an RDMA WRITE from the first context into the second's memory. */
    fill(s[0].buf, N, 30);
    memset(s[1].buf, 0, N);
    {
        struct ibv_sge sge = { .addr = (uintptr_t)s[0].buf, .length = N, .lkey = s[0].mr->lkey };
        struct ibv_send_wr wr = { .wr_id = 300, .sg_list = &sge, .num_sge = 1, .opcode = IBV_WR_RDMA_WRITE, .send_flags = IBV_SEND_SIGNALED,
                                  .wr.rdma = { .remote_addr = (uintptr_t)s[1].buf, .rkey = s[1].mr->rkey } }, *bad;
        if (ibv_post_send(s[0].rc, &wr, &bad)) DIE("ibv_post_send WRITE");
        struct ibv_wc wc = wait_wc(s[0].cq, 20);
        if (wc.status) DIE("WRITE: %s", ibv_wc_status_str(wc.status));
        if (!check(s[1].buf, N, 30)) DIE("WRITE: bytes differ");
    }
    /* UD: a datagram each way, through an address handle on the GID. */
    for (int i = 0; i < 2; i++) {
        struct side *me = &s[i], *peer = &s[1 - i];
        memset(peer->buf + N, 0, 40 + 1000);
        post_recv(peer, peer->ud, N, 40 + 1000, 400 + i);
        struct ibv_ah_attr aa = { .is_global = 1, .port_num = 1, .grh = { .dgid = peer->gid, .hop_limit = 1 } };
        struct ibv_ah *ah = ibv_create_ah(me->pd, &aa);
        if (!ah) DIE("ibv_create_ah");
        fill(me->buf, 1000, 40 + i);
        struct ibv_sge sge = { .addr = (uintptr_t)me->buf, .length = 1000, .lkey = me->mr->lkey };
        struct ibv_send_wr wr = { .wr_id = 500 + i, .sg_list = &sge, .num_sge = 1, .opcode = IBV_WR_SEND, .send_flags = IBV_SEND_SIGNALED,
                                  .wr.ud = { .ah = ah, .remote_qpn = peer->ud->qp_num, .remote_qkey = 0x11111111 } }, *bad;
        if (ibv_post_send(me->ud, &wr, &bad)) DIE("ibv_post_send UD");
        struct ibv_wc ws, wr_;
        both(me, peer, &ws, &wr_);
        if (ws.status || wr_.status) DIE("datagram %d: %s / %s", i, ibv_wc_status_str(ws.status), ibv_wc_status_str(wr_.status));
        if (wr_.byte_len != 40 + 1000 || wr_.src_qp != me->ud->qp_num) DIE("datagram %d: %u bytes from queue pair %u", i, wr_.byte_len, wr_.src_qp);
        if (memcmp(peer->buf + N + 8, &me->gid, 16)) DIE("datagram %d: the GRH's source GID is not the port's", i);
        if (!check(peer->buf + N + 40, 1000, 40 + i)) DIE("datagram %d: bytes differ", i);
        ibv_destroy_ah(ah);
    }
    /* A child made by fork opens ff0 for itself: a port (GID) of its own,
     * not the parent's attachment; the parent's contexts work on after. */
    pid_t child = fork();
    if (child < 0) DIE("fork");
    if (child == 0) {
        struct side c = {0};
        open_side(&c, list[0]);
        if (!memcmp(&c.gid, &s[0].gid, sizeof c.gid)) { fprintf(stderr, PROG ": the child got the parent's port\n"); _exit(1); }
        _exit(0);
    }
    int status;
    if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status)) DIE("the child failed");
    fill(s[0].buf, N, 50);
    post_recv(&s[1], s[1].rc, N, N, 600);
    {
        struct ibv_sge sge = { .addr = (uintptr_t)s[0].buf, .length = N, .lkey = s[0].mr->lkey };
        struct ibv_send_wr wr = { .wr_id = 700, .sg_list = &sge, .num_sge = 1, .opcode = IBV_WR_SEND, .send_flags = IBV_SEND_SIGNALED }, *bad;
        if (ibv_post_send(s[0].rc, &wr, &bad)) DIE("ibv_post_send after fork");
        struct ibv_wc ws, wr_;
        both(&s[0], &s[1], &ws, &wr_);
        if (ws.status || wr_.status || !check(s[1].buf + N, N, 50)) DIE("SEND after the child: %s / %s", ibv_wc_status_str(ws.status), ibv_wc_status_str(wr_.status));
    }
    for (int i = 0; i < 2; i++) {
        if (ibv_destroy_qp(s[i].rc) || ibv_destroy_qp(s[i].ud) || ibv_dereg_mr(s[i].mr) || ibv_destroy_cq(s[i].cq) || ibv_dealloc_pd(s[i].pd) || ibv_close_device(s[i].ctx))
            DIE("tearing down context %d", i);
        free(s[i].buf);
    }
    ibv_free_device_list(list);
    printf("two contexts, one GID: SENDs, a WRITE and datagrams between them checked; a forked child's port its own\n");
    return 0;
}
