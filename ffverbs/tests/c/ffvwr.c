/* ffvwr: the extended verbs of ff0, in one process: the ibv_wr_* interface
 * ("new post send") and the extended completion queue (ibv_create_cq_ex):
 * two RC queue pairs made with ibv_create_qp_ex, connected to each other,
 * and two UD ones. Checks, each with bytes and completions:
 *   - ibv_create_qp_ex refuses operations and flags ff0 does not do
 *     (EOPNOTSUPP) and a missing protection domain (EINVAL);
 *   - one batch of SEND (one element), SEND with immediate (a list of
 *     two), SEND of inline bytes (the buffer overwritten right after the
 *     call), WRITE and WRITE with immediate (an inline list): five send
 *     completions in order with their wr_ids, four receives;
 *   - READ, fetch-and-add and compare-and-swap in one batch;
 *   - a batch with an operation ff0 does not do (SEND with invalidate)
 *     fails whole (EOPNOTSUPP): nothing of it is posted; so does one with
 *     more requests than the send queue takes (ENOMEM); an aborted batch
 *     posts nothing; the next batch works;
 *   - UD: SEND with ibv_wr_set_ud_addr, the source queue pair in the
 *     receive's completion;
 *   - ibv_create_cq_ex refuses timestamps (EOPNOTSUPP) and takes the
 *     standard fields with IGNORE_OVERRUN; an empty one polls ENOENT;
 *     three receives read with ibv_start_poll, ibv_next_poll and the
 *     ibv_wc_read_* calls (opcode, length, immediate, queue pair);
 *   - two threads building batches of four SENDs on one queue pair at
 *     once: each batch arrives whole, in order, once (the batch lock);
 *   - ibv_qp_to_qp_ex of a queue pair ibv_create_qp made.
 * Prints "OK <what>" per check; exits 0 if all hold.
 *
 *   ffvwr */
#define PROG "ffvwr"
#include "ffvtest.h"
#include <pthread.h>

#define SQ 16
#define THREADS 2
#define PER_THREAD 500
#define PER_BATCH 4
#define MSGS (THREADS * PER_THREAD * PER_BATCH)
#define BUF (1 << 20)

static struct ibv_context *ctx;
static struct ibv_pd *pd;
static struct ibv_cq *acq, *bcq;
static struct ibv_mr *amr, *bmr;
static unsigned char *abuf, *bbuf; /* BUF each */
static union ibv_gid gid;

static struct ibv_qp *qp_ex(struct ibv_cq *cq, enum ibv_qp_type type, uint64_t ops, int sq) {
    struct ibv_qp_init_attr_ex a = { .send_cq = cq, .recv_cq = cq, .qp_type = type,
                                     .cap = { .max_send_wr = sq, .max_recv_wr = MSGS, .max_send_sge = 2, .max_recv_sge = 1 },
                                     .comp_mask = IBV_QP_INIT_ATTR_PD | IBV_QP_INIT_ATTR_SEND_OPS_FLAGS, .pd = pd,
                                     .send_ops_flags = ops };
    return ibv_create_qp_ex(ctx, &a);
}

static void post_recv(struct ibv_qp *qp, unsigned char *buf, struct ibv_mr *mr, size_t off, size_t len, uint64_t id) {
    struct ibv_sge s = { (uintptr_t)buf + off, len, mr->lkey };
    struct ibv_recv_wr w = { .wr_id = id, .sg_list = &s, .num_sge = 1 }, *bad;
    if (ibv_post_recv(qp, &w, &bad)) DIE("ibv_post_recv");
}

/* The next completion on cq: `id`, `opcode`, success. */
static struct ibv_wc expect_wc(struct ibv_cq *cq, uint64_t id, enum ibv_wc_opcode opcode, const char *what) {
    struct ibv_wc wc = wait_wc(cq, 10);
    if (wc.status != IBV_WC_SUCCESS) DIE("%s: '%s'", what, ibv_wc_status_str(wc.status));
    if (wc.wr_id != id || wc.opcode != opcode) DIE("%s: completion %" PRIu64 " opcode %d, expected %" PRIu64 " opcode %d", what, wc.wr_id, wc.opcode, id, opcode);
    return wc;
}

/* Thread `arg` posts PER_THREAD batches of PER_BATCH inline SENDs on
 * shared_qpx; message k of batch n carries n, k and n's bytes. */
static struct ibv_qp_ex *shared_qpx;
static void *builder(void *arg) {
    uint32_t t = (uint32_t)(uintptr_t)arg;
    unsigned char msg[PER_BATCH][32];
    for (uint32_t i = 0; i < PER_THREAD; i++) {
        uint32_t n = t * PER_THREAD + i;
        for (uint32_t k = 0; k < PER_BATCH; k++) {
            memcpy(msg[k], &n, 4);
            memcpy(msg[k] + 4, &k, 4);
            fill(msg[k] + 8, 24, n);
        }
        int rc;
        do { /* (ENOMEM: the send queue is full for now; the batch is gone, build it again) */
            ibv_wr_start(shared_qpx);
            shared_qpx->wr_flags = 0;
            for (uint32_t k = 0; k < PER_BATCH; k++) {
                shared_qpx->wr_id = n;
                ibv_wr_send(shared_qpx);
                ibv_wr_set_inline_data(shared_qpx, msg[k], 32);
            }
        } while ((rc = ibv_wr_complete(shared_qpx)) == ENOMEM && (sched_yield(), 1));
        if (rc) DIE("thread %u: ibv_wr_complete: %s", t, strerror(rc));
    }
    return NULL;
}

int main(void) {
    role = "";
    int n;
    struct ibv_device **list = ibv_get_device_list(&n);
    if (!list || n < 1) DIE("no verbs device");
    if (!(ctx = ibv_open_device(list[0]))) DIE("ibv_open_device");
    if (ibv_query_gid(ctx, 1, 0, &gid)) DIE("ibv_query_gid");
    if (!(pd = ibv_alloc_pd(ctx))) DIE("ibv_alloc_pd");
    if (!(acq = ibv_create_cq(ctx, 1024, NULL, NULL, 0)) || !(bcq = ibv_create_cq(ctx, MSGS + 64, NULL, NULL, 0))) DIE("ibv_create_cq");
    if (posix_memalign((void **)&abuf, 4096, BUF) || posix_memalign((void **)&bbuf, 4096, BUF)) DIE("memory");
    memset(abuf, 0, BUF);
    memset(bbuf, 0, BUF);
    int access = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_ATOMIC;
    if (!(amr = ibv_reg_mr(pd, abuf, BUF, access)) || !(bmr = ibv_reg_mr(pd, bbuf, BUF, access))) DIE("ibv_reg_mr");

    /* What ibv_create_qp_ex refuses. */
    uint64_t rc_ops = IBV_QP_EX_WITH_SEND | IBV_QP_EX_WITH_SEND_WITH_IMM | IBV_QP_EX_WITH_RDMA_WRITE | IBV_QP_EX_WITH_RDMA_WRITE_WITH_IMM |
                      IBV_QP_EX_WITH_RDMA_READ | IBV_QP_EX_WITH_ATOMIC_CMP_AND_SWP | IBV_QP_EX_WITH_ATOMIC_FETCH_AND_ADD;
    errno = 0;
    if (qp_ex(acq, IBV_QPT_RC, rc_ops | IBV_QP_EX_WITH_BIND_MW, SQ) || errno != EOPNOTSUPP) DIE("BIND_MW: not EOPNOTSUPP (errno %d)", errno);
    errno = 0;
    if (qp_ex(acq, IBV_QPT_UD, IBV_QP_EX_WITH_SEND | IBV_QP_EX_WITH_RDMA_WRITE, SQ) || errno != EOPNOTSUPP) DIE("WRITE on UD: not EOPNOTSUPP");
    {
        struct ibv_qp_init_attr_ex a = { .send_cq = acq, .recv_cq = acq, .qp_type = IBV_QPT_RC, .cap = { .max_send_wr = 4, .max_recv_wr = 4, .max_send_sge = 1, .max_recv_sge = 1 },
                                         .comp_mask = IBV_QP_INIT_ATTR_PD | IBV_QP_INIT_ATTR_CREATE_FLAGS, .pd = pd, .create_flags = IBV_QP_CREATE_SCATTER_FCS };
        errno = 0;
        if (ibv_create_qp_ex(ctx, &a) || errno != EOPNOTSUPP) DIE("creation flags: not EOPNOTSUPP");
        a.comp_mask = IBV_QP_INIT_ATTR_SEND_OPS_FLAGS;
        a.send_ops_flags = IBV_QP_EX_WITH_SEND;
        errno = 0;
        if (ibv_create_qp_ex(ctx, &a) || errno != EINVAL) DIE("no protection domain: not EINVAL");
    }
    printf("OK ibv_create_qp_ex refuses what ff0 does not do\n");

    struct ibv_qp *a = qp_ex(acq, IBV_QPT_RC, rc_ops, SQ), *b = qp_ex(bcq, IBV_QPT_RC, rc_ops, 512);
    if (!a || !b) DIE("ibv_create_qp_ex RC: %s", strerror(errno));
    connect_rc(a, b->qp_num, gid, access, 0);
    connect_rc(b, a->qp_num, gid, access, 0);
    struct ibv_qp_ex *x = ibv_qp_to_qp_ex(a);
    if (!x) DIE("ibv_qp_to_qp_ex");

    /* One batch: SEND, SEND with immediate (two elements), inline SEND,
     * WRITE, WRITE with immediate (inline list). */
    for (int i = 0; i < 4; i++) post_recv(b, bbuf, bmr, 8192 + i * 8192, 8192, 100 + i);
    fill(abuf, 4096, 1);
    fill(abuf + 4096, 3000, 2);
    fill(abuf + 8192, 1000, 3);
    fill(abuf + 12288, 8192, 4);
    unsigned char stack[64];
    char in1[] = "inline list, ", in2[] = "two pieces";
    struct ibv_data_buf parts[2] = { { in1, strlen(in1) }, { in2, strlen(in2) + 1 } };
    struct ibv_sge two[2] = { { (uintptr_t)abuf + 4096, 3000, amr->lkey }, { (uintptr_t)abuf + 8192, 1000, amr->lkey } };
    /* An aborted batch posts nothing (the completions below start at 1). */
    ibv_wr_start(x);
    x->wr_flags = IBV_SEND_SIGNALED;
    x->wr_id = 99;
    ibv_wr_send(x);
    ibv_wr_set_sge(x, amr->lkey, (uintptr_t)abuf, 4096);
    ibv_wr_abort(x);
    ibv_wr_start(x);
    x->wr_flags = IBV_SEND_SIGNALED;
    x->wr_id = 1;
    ibv_wr_send(x);
    ibv_wr_set_sge(x, amr->lkey, (uintptr_t)abuf, 4096);
    x->wr_id = 2;
    ibv_wr_send_imm(x, htonl(0x1234));
    ibv_wr_set_sge_list(x, 2, two);
    x->wr_id = 3;
    ibv_wr_send(x);
    fill(stack, sizeof stack, 5);
    ibv_wr_set_inline_data(x, stack, sizeof stack);
    memset(stack, 0, sizeof stack); /* the bytes were copied at the call */
    x->wr_id = 4;
    ibv_wr_rdma_write(x, bmr->rkey, (uintptr_t)bbuf + 45056);
    ibv_wr_set_sge(x, amr->lkey, (uintptr_t)abuf + 12288, 8192);
    x->wr_id = 5;
    ibv_wr_rdma_write_imm(x, bmr->rkey, (uintptr_t)bbuf + 60000, htonl(0xabcd));
    ibv_wr_set_inline_data_list(x, 2, parts);
    int rc = ibv_wr_complete(x);
    if (rc) DIE("ibv_wr_complete: %s", strerror(rc));
    expect_wc(acq, 1, IBV_WC_SEND, "SEND");
    expect_wc(acq, 2, IBV_WC_SEND, "SEND with immediate");
    expect_wc(acq, 3, IBV_WC_SEND, "inline SEND");
    expect_wc(acq, 4, IBV_WC_RDMA_WRITE, "WRITE");
    expect_wc(acq, 5, IBV_WC_RDMA_WRITE, "WRITE with immediate");
    struct ibv_wc w = expect_wc(bcq, 100, IBV_WC_RECV, "receive 1");
    if (w.byte_len != 4096 || !check(bbuf + 8192, 4096, 1)) DIE("SEND's bytes");
    w = expect_wc(bcq, 101, IBV_WC_RECV, "receive 2");
    if (w.byte_len != 4000 || !(w.wc_flags & IBV_WC_WITH_IMM) || ntohl(w.imm_data) != 0x1234 || !check(bbuf + 16384, 3000, 2) || !check(bbuf + 16384 + 3000, 1000, 3))
        DIE("SEND with immediate: %u bytes, imm %#x", w.byte_len, ntohl(w.imm_data));
    w = expect_wc(bcq, 102, IBV_WC_RECV, "receive 3");
    if (w.byte_len != 64 || !check(bbuf + 24576, 64, 5)) DIE("inline SEND's bytes (copied at the call?)");
    w = expect_wc(bcq, 103, IBV_WC_RECV_RDMA_WITH_IMM, "receive 4");
    if (ntohl(w.imm_data) != 0xabcd || strcmp((char *)bbuf + 60000, "inline list, two pieces")) DIE("WRITE with immediate: imm %#x, bytes '%s'", ntohl(w.imm_data), bbuf + 60000);
    if (!check(bbuf + 45056, 8192, 4)) DIE("WRITE's bytes");
    printf("OK one batch: SEND, SEND with immediate (2 elements), inline SEND, WRITE, WRITE with immediate (inline list); an aborted one posted nothing\n");

    /* READ and the atomics. */
    fill(bbuf + 4096, 2048, 6);
    uint64_t counter = 40, word = 7;
    memcpy(bbuf, &counter, 8);
    memcpy(bbuf + 8, &word, 8);
    ibv_wr_start(x);
    x->wr_flags = IBV_SEND_SIGNALED;
    x->wr_id = 6;
    ibv_wr_rdma_read(x, bmr->rkey, (uintptr_t)bbuf + 4096);
    ibv_wr_set_sge(x, amr->lkey, (uintptr_t)abuf + 32768, 2048);
    x->wr_id = 7;
    ibv_wr_atomic_fetch_add(x, bmr->rkey, (uintptr_t)bbuf, 2);
    ibv_wr_set_sge(x, amr->lkey, (uintptr_t)abuf + 40960, 8);
    x->wr_id = 8;
    ibv_wr_atomic_cmp_swp(x, bmr->rkey, (uintptr_t)bbuf + 8, 7, 99);
    ibv_wr_set_sge(x, amr->lkey, (uintptr_t)abuf + 40968, 8);
    if ((rc = ibv_wr_complete(x))) DIE("ibv_wr_complete (READ, atomics): %s", strerror(rc));
    expect_wc(acq, 6, IBV_WC_RDMA_READ, "READ");
    expect_wc(acq, 7, IBV_WC_FETCH_ADD, "fetch-and-add");
    expect_wc(acq, 8, IBV_WC_COMP_SWAP, "compare-and-swap");
    uint64_t old_counter, old_word;
    memcpy(&old_counter, abuf + 40960, 8);
    memcpy(&old_word, abuf + 40968, 8);
    memcpy(&counter, bbuf, 8);
    memcpy(&word, bbuf + 8, 8);
    if (!check(abuf + 32768, 2048, 6) || old_counter != 40 || counter != 42 || old_word != 7 || word != 99)
        DIE("READ or atomics: counter %" PRIu64 "->%" PRIu64 ", word %" PRIu64 "->%" PRIu64, old_counter, counter, old_word, word);
    printf("OK READ, fetch-and-add and compare-and-swap in one batch\n");

    /* Batches that fail whole. */
    ibv_wr_start(x);
    x->wr_flags = IBV_SEND_SIGNALED;
    x->wr_id = 9;
    ibv_wr_send(x);
    ibv_wr_set_sge(x, amr->lkey, (uintptr_t)abuf, 16);
    ibv_wr_send_inv(x, 0x77);
    ibv_wr_set_sge(x, amr->lkey, (uintptr_t)abuf, 16);
    if ((rc = ibv_wr_complete(x)) != EOPNOTSUPP) DIE("a batch with SEND with invalidate: %d, not EOPNOTSUPP", rc);
    ibv_wr_start(x);
    for (int i = 0; i < SQ + 1; i++) {
        x->wr_id = 10;
        ibv_wr_send(x);
        ibv_wr_set_sge(x, amr->lkey, (uintptr_t)abuf, 16);
    }
    if ((rc = ibv_wr_complete(x)) != ENOMEM) DIE("%d requests on a send queue of %d: %d, not ENOMEM", SQ + 1, SQ, rc);
    ibv_wr_start(x);
    x->wr_id = 11;
    ibv_wr_send(x);
    ibv_wr_set_inline_data(x, stack, 2000);
    if ((rc = ibv_wr_complete(x)) != EINVAL) DIE("2000 inline bytes: %d, not EINVAL", rc);
    if (ibv_wr_complete(x) != EINVAL) DIE("ibv_wr_complete without ibv_wr_start: not EINVAL");
    quiet(acq, 0.3, "after batches that failed");
    quiet(bcq, 0.3, "after batches that failed");
    post_recv(b, bbuf, bmr, 8192, 64, 104);
    ibv_wr_start(x);
    x->wr_flags = IBV_SEND_SIGNALED;
    x->wr_id = 12;
    ibv_wr_send(x);
    ibv_wr_set_sge(x, amr->lkey, (uintptr_t)abuf, 64);
    if ((rc = ibv_wr_complete(x))) DIE("the batch after: %s", strerror(rc));
    expect_wc(acq, 12, IBV_WC_SEND, "SEND after the failed batches");
    expect_wc(bcq, 104, IBV_WC_RECV, "its receive");
    printf("OK batches fail whole: an operation ff0 does not do (EOPNOTSUPP), more than the send queue (ENOMEM), inline too long (EINVAL); nothing of them posted\n");

    /* UD. */
    struct ibv_qp *ua = qp_ex(acq, IBV_QPT_UD, IBV_QP_EX_WITH_SEND, SQ), *ub = qp_ex(bcq, IBV_QPT_UD, IBV_QP_EX_WITH_SEND, SQ);
    if (!ua || !ub) DIE("ibv_create_qp_ex UD: %s", strerror(errno));
    struct ibv_qp *uds[2] = { ua, ub };
    for (int i = 0; i < 2; i++) {
        struct ibv_qp_attr at = { .qp_state = IBV_QPS_INIT, .pkey_index = 0, .port_num = 1, .qkey = 0x11111111 };
        if (ibv_modify_qp(uds[i], &at, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_QKEY)) DIE("UD INIT");
        at.qp_state = IBV_QPS_RTR;
        if (ibv_modify_qp(uds[i], &at, IBV_QP_STATE)) DIE("UD RTR");
        at.qp_state = IBV_QPS_RTS;
        if (ibv_modify_qp(uds[i], &at, IBV_QP_STATE | IBV_QP_SQ_PSN)) DIE("UD RTS");
    }
    struct ibv_ah_attr aa = { .is_global = 1, .port_num = 1, .grh = { .dgid = gid, .hop_limit = 1 } };
    struct ibv_ah *ah = ibv_create_ah(pd, &aa);
    if (!ah) DIE("ibv_create_ah");
    post_recv(ub, bbuf, bmr, 0, 40 + 1024, 200);
    fill(abuf, 1024, 7);
    struct ibv_qp_ex *ux = ibv_qp_to_qp_ex(ua);
    ibv_wr_start(ux);
    ux->wr_id = 13;
    ux->wr_flags = IBV_SEND_SIGNALED;
    ibv_wr_send(ux);
    ibv_wr_set_ud_addr(ux, ah, ub->qp_num, 0x11111111);
    ibv_wr_set_sge(ux, amr->lkey, (uintptr_t)abuf, 1024);
    if ((rc = ibv_wr_complete(ux))) DIE("UD batch: %s", strerror(rc));
    expect_wc(acq, 13, IBV_WC_SEND, "UD SEND");
    w = expect_wc(bcq, 200, IBV_WC_RECV, "UD receive");
    if (w.byte_len != 40 + 1024 || w.src_qp != ua->qp_num || !check(bbuf + 40, 1024, 7)) DIE("UD datagram: %u bytes from %u", w.byte_len, w.src_qp);
    printf("OK UD: SEND to ibv_wr_set_ud_addr's queue pair, the source in the completion\n");

    /* The extended completion queue: what it refuses, then three
     * receives read with ibv_start_poll/ibv_next_poll and ibv_wc_read_*. */
    {
        struct ibv_cq_init_attr_ex ca = { .cqe = 64, .wc_flags = IBV_WC_STANDARD_FLAGS | IBV_WC_EX_WITH_COMPLETION_TIMESTAMP };
        errno = 0;
        if (ibv_create_cq_ex(ctx, &ca) || errno != EOPNOTSUPP) DIE("ibv_create_cq_ex with timestamps: not EOPNOTSUPP");
        ca.wc_flags = IBV_WC_STANDARD_FLAGS;
        ca.comp_mask = IBV_CQ_INIT_ATTR_MASK_FLAGS;
        ca.flags = IBV_CREATE_CQ_ATTR_IGNORE_OVERRUN | IBV_CREATE_CQ_ATTR_SINGLE_THREADED;
        struct ibv_cq_ex *cx = ibv_create_cq_ex(ctx, &ca);
        if (!cx) DIE("ibv_create_cq_ex: %s", strerror(errno));
        struct ibv_poll_cq_attr pa = { 0 };
        if (ibv_start_poll(cx, &pa) != ENOENT) DIE("an empty extended queue: not ENOENT");
        struct ibv_qp_init_attr fa = { .send_cq = ibv_cq_ex_to_cq(cx), .recv_cq = ibv_cq_ex_to_cq(cx), .qp_type = IBV_QPT_RC,
                                       .cap = { .max_send_wr = 4, .max_recv_wr = 4, .max_send_sge = 1, .max_recv_sge = 1 } };
        struct ibv_qp *e = qp_ex(acq, IBV_QPT_RC, rc_ops, SQ), *f = ibv_create_qp(pd, &fa);
        if (!e || !f) DIE("queue pairs for the extended queue");
        connect_rc(e, f->qp_num, gid, access, 0);
        connect_rc(f, e->qp_num, gid, access, 0);
        for (int i = 0; i < 3; i++) post_recv(f, bbuf, bmr, 8192 + i * 4096, 4096, 300 + i);
        fill(abuf, 100, 8);
        struct ibv_qp_ex *ex = ibv_qp_to_qp_ex(e);
        ibv_wr_start(ex);
        ex->wr_flags = IBV_SEND_SIGNALED;
        ex->wr_id = 31;
        ibv_wr_send(ex);
        ibv_wr_set_sge(ex, amr->lkey, (uintptr_t)abuf, 100);
        ex->wr_id = 32;
        ibv_wr_send_imm(ex, htonl(0x55));
        ibv_wr_set_sge(ex, amr->lkey, (uintptr_t)abuf, 20);
        ex->wr_id = 33;
        ibv_wr_rdma_write_imm(ex, bmr->rkey, (uintptr_t)bbuf + 50000, htonl(0x66));
        ibv_wr_set_sge(ex, amr->lkey, (uintptr_t)abuf, 16);
        if ((rc = ibv_wr_complete(ex))) DIE("ibv_wr_complete: %s", strerror(rc));
        for (uint64_t id = 31; id <= 33; id++) expect_wc(acq, id, id == 33 ? IBV_WC_RDMA_WRITE : IBV_WC_SEND, "send to the extended queue's queue pair");
        struct { uint64_t id; enum ibv_wc_opcode op; uint32_t len, imm; int with_imm; } want[3] = {
            { 300, IBV_WC_RECV, 100, 0, 0 }, { 301, IBV_WC_RECV, 20, 0x55, 1 }, { 302, IBV_WC_RECV_RDMA_WITH_IMM, 16, 0x66, 1 } };
        int got = 0, polling = 0;
        double end = now() + 10;
        while (got < 3) {
            int r = polling ? ibv_next_poll(cx) : ibv_start_poll(cx, &pa);
            if (r == ENOENT) {
                if (polling) ibv_end_poll(cx);
                polling = 0;
                if (now() > end) DIE("extended queue: %d of 3 completions in 10 s", got);
                continue;
            }
            if (r) DIE("ibv_start_poll/ibv_next_poll: %d", r);
            polling = 1;
            if (cx->status != IBV_WC_SUCCESS || cx->wr_id != want[got].id || ibv_wc_read_opcode(cx) != want[got].op ||
                ibv_wc_read_byte_len(cx) != want[got].len || ibv_wc_read_qp_num(cx) != f->qp_num ||
                !!(ibv_wc_read_wc_flags(cx) & IBV_WC_WITH_IMM) != want[got].with_imm ||
                (want[got].with_imm && ntohl(ibv_wc_read_imm_data(cx)) != want[got].imm))
                DIE("extended queue, completion %d: wr %" PRIu64 " status %d opcode %d len %u qp %u flags %#x", got, cx->wr_id, cx->status,
                    ibv_wc_read_opcode(cx), ibv_wc_read_byte_len(cx), ibv_wc_read_qp_num(cx), ibv_wc_read_wc_flags(cx));
            got++;
        }
        ibv_end_poll(cx);
        if (!check(bbuf + 8192, 100, 8) || !check(bbuf + 50000, 16, 8)) DIE("bytes through the extended queue's queue pair");
        if (ibv_poll_cq(ibv_cq_ex_to_cq(cx), 1, &w) != 0) DIE("a completion left on the extended queue");
        ibv_destroy_qp(e);
        ibv_destroy_qp(f);
        if (ibv_destroy_cq(ibv_cq_ex_to_cq(cx))) DIE("ibv_destroy_cq of the extended queue");
    }
    printf("OK ibv_create_cq_ex: timestamps refused; three receives read with ibv_start_poll/ibv_next_poll and ibv_wc_read_*\n");

    /* Two threads, one queue pair, batches at once. */
    struct ibv_qp *c = qp_ex(acq, IBV_QPT_RC, rc_ops, 512), *d = qp_ex(bcq, IBV_QPT_RC, rc_ops, 512);
    if (!c || !d) DIE("ibv_create_qp_ex RC: %s", strerror(errno));
    connect_rc(c, d->qp_num, gid, access, 0);
    connect_rc(d, c->qp_num, gid, access, 0);
    for (int i = 0; i < MSGS; i++) post_recv(d, bbuf, bmr, (size_t)i * 64, 64, i);
    shared_qpx = ibv_qp_to_qp_ex(c);
    pthread_t th[THREADS];
    for (int t = 0; t < THREADS; t++)
        if (pthread_create(&th[t], NULL, builder, (void *)(uintptr_t)t)) DIE("pthread_create");
    /* A batch's messages arrive together, in order; each batch once. */
    static unsigned char whole[THREADS * PER_THREAD];
    uint32_t prev_n = 0, prev_k = PER_BATCH - 1;
    for (int i = 0; i < MSGS; i++) {
        w = wait_wc(bcq, 20);
        if (w.status != IBV_WC_SUCCESS || w.byte_len != 32) DIE("threads: receive %d: '%s', %u bytes", i, ibv_wc_status_str(w.status), w.byte_len);
        uint32_t m, k;
        unsigned char *q = bbuf + w.wr_id * 64;
        memcpy(&m, q, 4);
        memcpy(&k, q + 4, 4);
        if (m >= THREADS * PER_THREAD || k >= PER_BATCH || !check(q + 8, 24, m)) DIE("threads: message %d damaged (batch %u, %u)", i, m, k);
        int next_of_prev = prev_k + 1 < PER_BATCH ? (m == prev_n && k == prev_k + 1) : (k == 0 && !whole[m]);
        if (!next_of_prev) DIE("threads: message %u of batch %u after message %u of batch %u: batches mixed", k, m, prev_k, prev_n);
        whole[m] |= k == PER_BATCH - 1;
        prev_n = m;
        prev_k = k;
    }
    for (int t = 0; t < THREADS; t++) pthread_join(th[t], NULL);
    quiet(bcq, 0.3, "after the threads' messages");
    printf("OK %d threads x %d batches of %d SENDs on one queue pair: each batch whole, in order, once\n", THREADS, PER_THREAD, PER_BATCH);

    /* A queue pair ibv_create_qp made has the interface too. */
    struct ibv_qp_init_attr plain = { .send_cq = acq, .recv_cq = acq, .qp_type = IBV_QPT_RC, .cap = { .max_send_wr = 4, .max_recv_wr = 4, .max_send_sge = 1, .max_recv_sge = 1 } };
    struct ibv_qp *p = ibv_create_qp(pd, &plain);
    if (!p || !ibv_qp_to_qp_ex(p) || !ibv_qp_to_qp_ex(p)->wr_start) DIE("ibv_qp_to_qp_ex of a plain queue pair");
    printf("OK ibv_qp_to_qp_ex of a queue pair ibv_create_qp made\n");
    ibv_destroy_qp(p);
    printf("OK done\n");
    return 0;
}
