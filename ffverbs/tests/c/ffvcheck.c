/* ffvcheck: a verbs program (plain libibverbs API) that checks the bytes
 * SEND, WRITE and READ move and the error completions, between two
 * processes: `ffvcheck server PORT` and `ffvcheck client HOST PORT`. They
 * exchange their addresses (GID, QP numbers, keys and addresses) over TCP,
 * as perftest does. Exits 0 only if every check passed; prints
 * "OK <what>" for each. */
#define PROG "ffvcheck"
#include "ffvtest.h"
#include <pthread.h>
#include <sys/mman.h>

#define BUF (4u << 20)
/* QPs 0-2 share scq/rcq; QP 3 (the message stream) has CQs of its own. */
#define NQP 4

static struct ibv_context *ctx;
static struct ibv_pd *pd;
static struct ibv_cq *scq, *rcq, *scq3, *rcq3;
static struct ibv_comp_channel *chan;
static struct ibv_qp *qp[NQP];
static unsigned char *buf, *ro;
static struct ibv_mr *mr, *romr;

struct peer { union ibv_gid gid; uint32_t qpn[NQP], rkey, rokey; uint64_t addr, roaddr; } me, them;

static uint32_t fnv(const unsigned char *p, size_t n) { uint32_t h = 2166136261u; for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 16777619u; return h; }

static void expect(struct ibv_wc wc, enum ibv_wc_status st, uint64_t id, const char *what) {
    if (wc.status != st || wc.wr_id != id)
        DIE("%s: completion %" PRIu64 " with '%s', expected %" PRIu64 " with '%s'", what, wc.wr_id, ibv_wc_status_str(wc.status), id, ibv_wc_status_str(st));
}

static void post_recv(int q, uint64_t id, void *p, uint32_t len) {
    struct ibv_sge s = { (uintptr_t)p, len, mr->lkey };
    struct ibv_recv_wr wr = { .wr_id = id, .sg_list = &s, .num_sge = 1 }, *bad;
    if (ibv_post_recv(qp[q], &wr, &bad)) DIE("ibv_post_recv");
}

static void post(int q, uint64_t id, enum ibv_wr_opcode op, struct ibv_sge *s, int ns, uint64_t raddr, uint32_t rkey, uint32_t imm, int flags) {
    struct ibv_send_wr wr = { .wr_id = id, .sg_list = s, .num_sge = ns, .opcode = op, .send_flags = IBV_SEND_SIGNALED | flags }, *bad;
    wr.wr.rdma.remote_addr = raddr;
    wr.wr.rdma.rkey = rkey;
    wr.imm_data = htonl(imm);
    int rc = ibv_post_send(qp[q], &wr, &bad);
    if (rc) DIE("ibv_post_send: %s", strerror(rc));
}

/* Sends our address line and reads the peer's over a TCP connection. */
static void exchange(int server, const char *host, const char *port) {
    int fd = tcp_meet(server, host, port);
    char l[512], g[64];
    int n = snprintf(l, sizeof l, "ADDR ");
    for (int i = 0; i < 16; i++) n += snprintf(l + n, sizeof l - n, "%02x", me.gid.raw[i]);
    for (int i = 0; i < NQP; i++) n += snprintf(l + n, sizeof l - n, " %x", me.qpn[i]);
    n += snprintf(l + n, sizeof l - n, " %x %" PRIx64 " %x %" PRIx64 "\n", me.rkey, me.addr, me.rokey, me.roaddr);
    if (write(fd, l, n) != n) DIE("write address");
    FILE *f = fdopen(fd, "r");
    if (!f || !fgets(l, sizeof l, f)) DIE("no peer address");
    if (sscanf(l, "ADDR %32s %x %x %x %x %x %" SCNx64 " %x %" SCNx64, g, &them.qpn[0], &them.qpn[1], &them.qpn[2], &them.qpn[3], &them.rkey, &them.addr, &them.rokey, &them.roaddr) != 9)
        DIE("bad peer address line: %s", l);
    for (int i = 0; i < 16; i++) sscanf(g + 2 * i, "%2hhx", &them.gid.raw[i]);
    fclose(f);
}

static void connect_qp(int i) {
    connect_rc(qp[i], them.qpn[i], them.gid, IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_ATOMIC | IBV_ACCESS_LOCAL_WRITE, 0);
}

/* Both sides meet here: a SEND each way on QP 0 (the bytes name the step). */
static void sync_step(uint32_t step) {
    unsigned char *r = buf + BUF - 64, *s = buf + BUF - 128;
    post_recv(0, 900 + step, r, 8);
    memcpy(s, &step, 4);
    struct ibv_sge sg = { (uintptr_t)s, 4, mr->lkey };
    post(0, 800 + step, IBV_WR_SEND, &sg, 1, 0, 0, 0, IBV_SEND_INLINE);
    expect(wait_wc(scq, 20), IBV_WC_SUCCESS, 800 + step, "sync send");
    struct ibv_wc wc = wait_wc(rcq, 20);
    expect(wc, IBV_WC_SUCCESS, 900 + step, "sync recv");
    if (wc.byte_len != 4 || memcmp(r, &step, 4)) DIE("sync %u: wrong bytes", step);
}

/* The bytes of stream message `seq`: its length, and byte i. */
static uint32_t msg_len(uint32_t seq) { return 8 + seq % 25; }
static unsigned char msg_byte(uint32_t seq, uint32_t i) { return i < 4 ? (unsigned char)(seq >> (8 * i)) : pat(seq, i); }

/* Polls `cq` for `n` completions, which must be wr_id first, first+step,
 * ... (in order) and successful; returns them in `wcs` (NULL: dropped). */
static void wait_in_order(struct ibv_cq *cq, int n, uint64_t first, uint64_t step, struct ibv_wc *wcs, const char *what) {
    struct ibv_wc wc[32];
    double end = now() + 60;
    for (int got = 0; got < n;) {
        int k = ibv_poll_cq(cq, n - got < 32 ? n - got : 32, wc);
        if (k < 0) DIE("ibv_poll_cq");
        for (int j = 0; j < k; j++, got++) {
            expect(wc[j], IBV_WC_SUCCESS, first + step * got, what);
            if (wcs) wcs[got] = wc[j];
        }
        if (k == 0 && now() > end) DIE("%s: %d of %d completions within 60 s", what, got, n);
    }
}

/* Checks receive completion `wc` of stream message `seq` in `slot`. */
static void check_msg(struct ibv_wc *wc, uint32_t seq, const unsigned char *slot) {
    uint32_t len = msg_len(seq);
    if (wc->byte_len != len) DIE("stream message %u: %u bytes, expected %u", seq, wc->byte_len, len);
    for (uint32_t i = 0; i < len; i++)
        if (slot[i] != msg_byte(seq, i)) DIE("stream message %u: byte %u is %u, expected %u (out of order or corrupt)", seq, i, slot[i], msg_byte(seq, i));
    int imm = seq % 7 == 0;
    if (imm != !!(wc->wc_flags & IBV_WC_WITH_IMM) || (imm && ntohl(wc->imm_data) != seq)) DIE("stream message %u: immediate wrong", seq);
}

/* Small SENDs on QP 3, the way perftest's ib_send_bw streams them.
 * Late receives: the client posts 32 SENDs while the server has no
 * receive posted; none may complete (a SEND completes only once the
 * receiver took it) until the server posts its receives, and then every
 * message arrives, in order, with its bytes. The stream: STREAM_N SENDs
 * of 8-32 bytes (some inline, some in two elements, every 7th with
 * immediate), up to 128 outstanding, every 16th signalled; the server
 * keeps 128 receives posted and checks each message's number, length
 * and bytes in order; the client checks it gets exactly the signalled
 * completions, in order. */
#define STREAM_N 100000
#define SLOTS 256
static void stream(int server) {
    unsigned char *slots = buf + (3 << 20) + (512 << 10);
    sync_step(11);
    if (!server) {
        for (uint32_t seq = 0; seq < 32; seq++) {
            unsigned char *p = slots + 64 * seq;
            for (uint32_t i = 0; i < msg_len(seq); i++) p[i] = msg_byte(seq, i);
            struct ibv_sge s = { (uintptr_t)p, msg_len(seq), mr->lkey };
            struct ibv_send_wr wr = { .wr_id = seq, .sg_list = &s, .num_sge = 1, .opcode = seq % 7 ? IBV_WR_SEND : IBV_WR_SEND_WITH_IMM,
                                      .send_flags = (seq % 4 == 3 ? IBV_SEND_SIGNALED : 0) | (seq % 2 ? IBV_SEND_INLINE : 0) }, *bad;
            wr.imm_data = htonl(seq);
            if (ibv_post_send(qp[3], &wr, &bad)) DIE("post_send (late receives)");
        }
        struct ibv_wc wc;
        double end = now() + 0.3;
        while (now() < end) {
            int k = ibv_poll_cq(scq3, 1, &wc);
            if (k != 0) DIE("a SEND completed (%d, '%s') while the receiver had no receive posted", (int)wc.wr_id, k > 0 ? ibv_wc_status_str(wc.status) : "poll failed");
        }
        sync_step(12);
        wait_in_order(scq3, 8, 3, 4, NULL, "late-receive send");
        printf("OK no send completion before the receive, then 8 of 8\n");
    } else {
        sync_step(12);
        /* One receive at a time: each frees the next held message. */
        for (uint32_t seq = 0; seq < 32; seq++) {
            post_recv(3, seq, slots + 64 * seq, 64);
        }
        struct ibv_wc wcs[32];
        wait_in_order(rcq3, 32, 0, 1, wcs, "late receive");
        for (uint32_t seq = 0; seq < 32; seq++) check_msg(&wcs[seq], seq, slots + 64 * seq);
        printf("OK late receives: 32 messages in order\n");
    }
    sync_step(13);
    if (!server) {
        uint32_t posted = 0, done = 0;
        while (done < STREAM_N) {
            while (posted < STREAM_N && posted - done < 128) {
                uint32_t seq = posted, len = msg_len(seq);
                unsigned char *p = slots + 64 * (seq % SLOTS);
                for (uint32_t i = 0; i < len; i++) p[i] = msg_byte(seq, i);
                struct ibv_sge s[2] = { { (uintptr_t)p, 5, mr->lkey }, { (uintptr_t)(p + 5), len - 5, mr->lkey } };
                int two = seq % 5 == 1, last = seq == STREAM_N - 1;
                if (!two) s[0].length = len;
                struct ibv_send_wr wr = { .wr_id = seq, .sg_list = s, .num_sge = two ? 2 : 1, .opcode = seq % 7 ? IBV_WR_SEND : IBV_WR_SEND_WITH_IMM,
                                          .send_flags = (seq % 16 == 15 || last ? IBV_SEND_SIGNALED : 0) | (seq % 3 == 0 ? IBV_SEND_INLINE : 0) }, *bad;
                wr.imm_data = htonl(seq);
                int rc = ibv_post_send(qp[3], &wr, &bad);
                if (rc) DIE("post_send (stream): %s", strerror(rc));
                posted++;
            }
            struct ibv_wc wc[16];
            int k = ibv_poll_cq(scq3, 16, wc);
            if (k < 0) DIE("ibv_poll_cq");
            for (int j = 0; j < k; j++) {
                /* done is a multiple of 16: the next signalled one. */
                uint32_t want = (done | 15) < STREAM_N - 1 ? (done | 15) : STREAM_N - 1;
                expect(wc[j], IBV_WC_SUCCESS, want, "stream send");
                done = want + 1;
            }
        }
        printf("OK stream: %u sends, every 16th signalled, completions in order\n", STREAM_N);
    } else {
        uint32_t got = 0, posted = 0;
        while (posted < 128) { post_recv(3, posted, slots + 64 * (posted % SLOTS), 64); posted++; }
        struct ibv_wc wc[16];
        double end = now() + 120;
        while (got < STREAM_N) {
            int k = ibv_poll_cq(rcq3, 16, wc);
            if (k < 0) DIE("ibv_poll_cq");
            if (k == 0 && now() > end) DIE("stream: %u of %u messages", got, STREAM_N);
            for (int j = 0; j < k; j++, got++) {
                expect(wc[j], IBV_WC_SUCCESS, got, "stream receive");
                check_msg(&wc[j], got, slots + 64 * (got % SLOTS));
                if (posted < STREAM_N) { post_recv(3, posted, slots + 64 * (posted % SLOTS), 64); posted++; }
            }
        }
        printf("OK stream: %u messages in order, bytes checked\n", STREAM_N);
    }
}

/* A registration cache merges overlapping registrations into one (UCX's
 * does), so a buffer's registration may overlap an older one in part, and
 * the older one goes while READs into the buffer are in flight: the pages
 * that move back at its deregistration are the buffer's too. Every byte of
 * the READs must land. The client reads 2 MiB of the bytes the server
 * filled (seed 200, at its buf + 11), a page per READ, 16 at a time, while
 * another thread deregisters the older registration: READs land all the
 * while its pages move. */
static void *dereg_thread(void *mr) { return (void *)(intptr_t)ibv_dereg_mr(mr); }

static void merged_registrations(void) {
    size_t mb = 1 << 20, len = 2 * mb, part = 4096, batch = 16;
    unsigned char *z = mmap(NULL, 6 * mb, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (z == MAP_FAILED) DIE("mmap");
    int rounds = 10;
    for (int round = 0; round < rounds; round++) {
        unsigned char *dst = z + 2 * mb;
        memset(z, 0, 6 * mb);
        struct ibv_mr *older = ibv_reg_mr(pd, z, 4 * mb, IBV_ACCESS_LOCAL_WRITE);
        struct ibv_mr *own = ibv_reg_mr(pd, dst, 4 * mb, IBV_ACCESS_LOCAL_WRITE);
        if (!older || !own) DIE("ibv_reg_mr");
        pthread_t t;
        if (pthread_create(&t, NULL, dereg_thread, older)) DIE("pthread_create");
        for (size_t at = 0; at < len; at += batch * part) {
            for (size_t i = 0; i < batch; i++) {
                struct ibv_sge s = { (uintptr_t)(dst + at + i * part), (uint32_t)part, own->lkey };
                post(0, 100 + i, IBV_WR_RDMA_READ, &s, 1, them.addr + 11 + at + i * part, them.rkey, 0, 0);
            }
            for (size_t i = 0; i < batch; i++) expect(wait_wc(scq, 20), IBV_WC_SUCCESS, 100 + i, "read beside a deregistration");
        }
        void *rc;
        if (pthread_join(t, &rc) || rc) DIE("ibv_dereg_mr");
        for (size_t i = 0; i < len; i++)
            if (dst[i] != pat(200, i)) DIE("READ beside a deregistration, round %d: byte %zu of %zu is %u, want %u", round, i, len, dst[i], pat(200, i));
        if (ibv_dereg_mr(own)) DIE("ibv_dereg_mr");
    }
    munmap(z, 6 * mb);
    printf("OK %d times %zu READs of %zu bytes beside a deregistration that moves their pages\n", rounds, len / part, part);
}

int main(int argc, char **argv) {
    role = argc > 1 ? argv[1] : "?";
    int server = !strcmp(role, "server");
    int n;
    struct ibv_device **list = ibv_get_device_list(&n);
    if (!list || n < 1) DIE("no verbs device");
    if (strcmp(ibv_get_device_name(list[0]), "ff0")) DIE("first device is %s, not ff0", ibv_get_device_name(list[0]));
    ctx = ibv_open_device(list[0]);
    if (!ctx) DIE("ibv_open_device");
    struct ibv_port_attr port;
    if (ibv_query_port(ctx, 1, &port) || port.state != IBV_PORT_ACTIVE) DIE("port");
    pd = ibv_alloc_pd(ctx);
    buf = aligned_alloc(4096, BUF);
    ro = aligned_alloc(4096, 1 << 16);
    if (!pd || !buf || !ro) DIE("alloc");
    memset(buf, 0, BUF);
    fill(ro, 1 << 16, 77);
    mr = ibv_reg_mr(pd, buf, BUF, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_ATOMIC);
    romr = ibv_reg_mr(pd, ro, 1 << 16, IBV_ACCESS_REMOTE_READ);
    chan = ibv_create_comp_channel(ctx);
    scq = ibv_create_cq(ctx, 256, NULL, NULL, 0);
    rcq = ibv_create_cq(ctx, 256, NULL, chan, 0);
    if (!mr || !romr || !chan || !scq || !rcq) DIE("mr/cq");
    scq3 = ibv_create_cq(ctx, 1024, NULL, NULL, 0);
    rcq3 = ibv_create_cq(ctx, 1024, NULL, NULL, 0);
    if (!scq3 || !rcq3) DIE("cq");
    for (int i = 0; i < NQP; i++) {
        struct ibv_qp_init_attr ia = { .send_cq = i == 3 ? scq3 : scq, .recv_cq = i == 3 ? rcq3 : rcq, .qp_type = IBV_QPT_RC,
                                       .cap = { .max_send_wr = i == 3 ? 256 : 64, .max_recv_wr = i == 3 ? 256 : 64, .max_send_sge = 4, .max_recv_sge = 4, .max_inline_data = 64 } };
        qp[i] = ibv_create_qp(pd, &ia);
        if (!qp[i]) DIE("ibv_create_qp");
        me.qpn[i] = qp[i]->qp_num;
    }
    if (ibv_query_gid(ctx, 1, 0, &me.gid)) DIE("ibv_query_gid");
    me.rkey = mr->rkey; me.addr = (uintptr_t)buf; me.rokey = romr->rkey; me.roaddr = (uintptr_t)ro;
    if (server ? argc < 3 : argc < 4) DIE("usage: ffvcheck server PORT | ffvcheck client HOST PORT");
    exchange(server, server ? NULL : argv[2], server ? argv[2] : argv[3]);
    for (int i = 0; i < NQP; i++) connect_qp(i);
    if (getenv("FFVCHECK_WAIT")) {
        /* Connected (one exchange), then only a SEND the server never
         * takes (it posts no receive): the harness kills a router
         * meanwhile; the SEND must fail, not hang. */
        sync_step(1);
        printf("CONNECTED\n");
        fflush(stdout);
        if (server) {
            sleep(120);
            return 0;
        }
        struct ibv_sge s = { (uintptr_t)buf, 8, mr->lkey };
        double t0 = now();
        post(0, 90, IBV_WR_SEND, &s, 1, 0, 0, 0, 0);
        struct ibv_wc wc = wait_wc(scq, 60);
        if (wc.wr_id != 90 || wc.status == IBV_WC_SUCCESS) DIE("SEND across a dead router: %s", ibv_wc_status_str(wc.status));
        printf("OK router death: '%s' after %.2f s\n", ibv_wc_status_str(wc.status), now() - t0);
        return 0;
    }

    /* SEND: inline, small, 256 KiB + 3 (its data in a message of its own),
     * into two scatter elements, with immediate; the server checks. */
    size_t sizes[] = { 60, 4096, (256 << 10) + 3, 100000 };
    if (server) {
        for (int i = 0; i < 4; i++) {
            if (i == 0) {
                /* The first receive through the completion channel. */
                if (ibv_req_notify_cq(rcq, 0)) DIE("ibv_req_notify_cq");
            }
            sync_step(i);
            if (i == 0) {
                struct ibv_cq *ev; void *evctx;
                if (ibv_get_cq_event(chan, &ev, &evctx) || ev != rcq) DIE("ibv_get_cq_event");
                ibv_ack_cq_events(ev, 1);
                printf("OK completion channel event\n");
            }
            if (i == 3) {
                struct ibv_sge s[2] = { { (uintptr_t)(buf + (1 << 20)), 40000, mr->lkey }, { (uintptr_t)(buf + (2 << 20)), 70000, mr->lkey } };
                struct ibv_recv_wr wr = { .wr_id = 10 + i, .sg_list = s, .num_sge = 2 }, *bad;
                if (ibv_post_recv(qp[0], &wr, &bad)) DIE("post_recv");
            } else {
                post_recv(0, 10 + i, buf + (1 << 20), 1 << 20);
            }
            struct ibv_wc wc = wait_wc(rcq, 20);
            expect(wc, IBV_WC_SUCCESS, 10 + i, "recv");
            if (wc.byte_len != sizes[i]) DIE("recv %d: %u bytes, expected %zu", i, wc.byte_len, sizes[i]);
            if (i == 2 && (!(wc.wc_flags & IBV_WC_WITH_IMM) || ntohl(wc.imm_data) != 0xabcdef)) DIE("no immediate");
            int ok;
            if (i == 3) {
                unsigned char *tmp = malloc(sizes[i]);
                memcpy(tmp, buf + (1 << 20), 40000);
                memcpy(tmp + 40000, buf + (2 << 20), 60000);
                ok = check(tmp, sizes[i], i);
                free(tmp);
            } else {
                ok = check(buf + (1 << 20), sizes[i], i);
            }
            if (!ok) DIE("SEND %d: wrong bytes", i);
            printf("OK send %zu bytes fnv %08x\n", sizes[i], fnv(buf + (1 << 20), sizes[i] < 40000 ? sizes[i] : 40000));
        }
    } else {
        unsigned char *src = buf + (3 << 20);
        for (int i = 0; i < 4; i++) {
            fill(src, sizes[i], i);
            sync_step(i);
            struct ibv_sge s = { (uintptr_t)src, (uint32_t)sizes[i], mr->lkey };
            post(0, 20 + i, i == 2 ? IBV_WR_SEND_WITH_IMM : IBV_WR_SEND, &s, 1, 0, 0, 0xabcdef, i == 0 ? IBV_SEND_INLINE : 0);
            expect(wait_wc(scq, 20), IBV_WC_SUCCESS, 20 + i, "send");
        }
    }
    stream(server);
    sync_step(10);

    /* WRITE: the client writes 1 MiB + 13 (twice: the first by message,
     * the second straight into the mapped registration), then 5 bytes with
     * immediate; the server checks. READ: the client reads 2 MiB + 7 the
     * server filled, into two elements, and the read-only registration. */
    size_t wlen = (1 << 20) + 13;
    if (!server) {
        for (int round = 0; round < 2; round++) {
            fill(buf, wlen, 100 + round);
            struct ibv_sge s = { (uintptr_t)buf, (uint32_t)wlen, mr->lkey };
            post(0, 30 + round, IBV_WR_RDMA_WRITE, &s, 1, them.addr + 5, them.rkey, 0, 0);
            expect(wait_wc(scq, 20), IBV_WC_SUCCESS, 30 + round, "write");
            sync_step(20 + round);
            sync_step(40 + round); /* the server checked */
        }
        fill(buf, 5, 7);
        struct ibv_sge s = { (uintptr_t)buf, 5, mr->lkey };
        post(0, 33, IBV_WR_RDMA_WRITE_WITH_IMM, &s, 1, them.addr + (3 << 20), them.rkey, 0x1234, 0);
        expect(wait_wc(scq, 20), IBV_WC_SUCCESS, 33, "write with immediate");
        sync_step(22);
        size_t rlen = (2 << 20) + 7;
        memset(buf, 0, rlen);
        struct ibv_sge rs[2] = { { (uintptr_t)buf, 1 << 20, mr->lkey }, { (uintptr_t)(buf + (1 << 20)), (1 << 20) + 7, mr->lkey } };
        post(0, 34, IBV_WR_RDMA_READ, rs, 2, them.addr + 11, them.rkey, 0, 0);
        expect(wait_wc(scq, 20), IBV_WC_SUCCESS, 34, "read");
        if (!check(buf, rlen, 200)) DIE("READ: wrong bytes");
        printf("OK read %zu bytes fnv %08x\n", rlen, fnv(buf, rlen));
        struct ibv_sge ros = { (uintptr_t)(buf + (3 << 20)), 1 << 16, mr->lkey };
        post(0, 35, IBV_WR_RDMA_READ, &ros, 1, them.roaddr, them.rokey, 0, 0);
        expect(wait_wc(scq, 20), IBV_WC_SUCCESS, 35, "read of read-only memory");
        if (!check(buf + (3 << 20), 1 << 16, 77)) DIE("READ of read-only: wrong bytes");
        printf("OK read-only read\n");
        /* Atomics on the server's word (1000): they return the old value. */
        uint64_t word = them.addr + (3 << 20) + 8192, expect_old[4] = { 1000, 1005, 1012, 42 };
        for (int i = 0; i < 4; i++) {
            volatile uint64_t *res = (volatile uint64_t *)(buf + (3 << 20) + 128 * 1024 + 64 * i);
            *res = 0;
            struct ibv_sge as = { (uintptr_t)res, 8, mr->lkey };
            struct ibv_send_wr wr = { .wr_id = 70 + i, .sg_list = &as, .num_sge = 1, .send_flags = IBV_SEND_SIGNALED }, *bad;
            wr.opcode = i < 2 ? IBV_WR_ATOMIC_FETCH_AND_ADD : IBV_WR_ATOMIC_CMP_AND_SWP;
            wr.wr.atomic.remote_addr = word;
            wr.wr.atomic.rkey = them.rkey;
            wr.wr.atomic.compare_add = i == 0 ? 5 : i == 1 ? 7 : i == 2 ? 1012 : 1;
            wr.wr.atomic.swap = i == 2 ? 42 : 99;
            if (ibv_post_send(qp[0], &wr, &bad)) DIE("post atomic");
            struct ibv_wc wc = wait_wc(scq, 20);
            expect(wc, IBV_WC_SUCCESS, 70 + i, "atomic");
            if (wc.opcode != (i < 2 ? IBV_WC_FETCH_ADD : IBV_WC_COMP_SWAP)) DIE("atomic %d: opcode %d", i, wc.opcode);
            if (*res != expect_old[i]) DIE("atomic %d: old value %" PRIu64 ", expected %" PRIu64, i, *res, expect_old[i]);
        }
        uint64_t *after = (uint64_t *)(buf + (3 << 20) + 256 * 1024);
        struct ibv_sge rsg = { (uintptr_t)after, 8, mr->lkey };
        post(0, 75, IBV_WR_RDMA_READ, &rsg, 1, word, them.rkey, 0, 0);
        expect(wait_wc(scq, 20), IBV_WC_SUCCESS, 75, "read after atomics");
        if (*after != 42) DIE("word after atomics: %" PRIu64, *after);
        printf("OK atomics\n");
        merged_registrations();
        sync_step(23);
    } else {
        for (int round = 0; round < 2; round++) {
            sync_step(20 + round);
            if (!check(buf + 5, wlen, 100 + round)) DIE("WRITE %d: wrong bytes", round);
            printf("OK write %zu bytes fnv %08x\n", wlen, fnv(buf + 5, wlen));
            sync_step(40 + round);
        }
        post_recv(0, 40, buf + (3 << 20) + 64, 64);
        struct ibv_wc wc = wait_wc(rcq, 20);
        expect(wc, IBV_WC_SUCCESS, 40, "write-with-immediate receive");
        if (wc.opcode != IBV_WC_RECV_RDMA_WITH_IMM || ntohl(wc.imm_data) != 0x1234 || wc.byte_len != 5) DIE("write with immediate: wrong completion");
        if (!check(buf + (3 << 20), 5, 7)) DIE("write with immediate: wrong bytes");
        printf("OK write with immediate\n");
        fill(buf + 11, (2 << 20) + 7, 200);
        *(volatile uint64_t *)(buf + (3 << 20) + 8192) = 1000;
        sync_step(22);
        sync_step(23);
        if (*(volatile uint64_t *)(buf + (3 << 20) + 8192) != 42) DIE("server: word after atomics");
    }

    /* Errors: a WRITE into the read-only registration and one with a key
     * that does not exist fail with a remote access error, the QP goes to
     * the error state, and work posted after is flushed. */
    if (!server) {
        struct ibv_sge s = { (uintptr_t)buf, 8, mr->lkey };
        post(1, 50, IBV_WR_RDMA_WRITE, &s, 1, them.roaddr, them.rokey, 0, 0);
        post(1, 51, IBV_WR_RDMA_WRITE, &s, 1, them.addr, them.rkey, 0, 0);
        expect(wait_wc(scq, 20), IBV_WC_REM_ACCESS_ERR, 50, "write to read-only memory");
        expect(wait_wc(scq, 20), IBV_WC_WR_FLUSH_ERR, 51, "flushed write");
        post(1, 52, IBV_WR_RDMA_WRITE, &s, 1, them.addr, them.rkey, 0, 0);
        expect(wait_wc(scq, 20), IBV_WC_WR_FLUSH_ERR, 52, "write posted on a QP in error");
        struct ibv_qp_attr qa; struct ibv_qp_init_attr qi;
        if (ibv_query_qp(qp[1], &qa, IBV_QP_STATE, &qi) || qa.qp_state != IBV_QPS_ERR) DIE("QP not in the error state");
        printf("OK remote access error, flush\n");
        post(2, 53, IBV_WR_RDMA_READ, &s, 1, them.addr + BUF - 4, them.rkey, 0, 0);
        expect(wait_wc(scq, 20), IBV_WC_REM_ACCESS_ERR, 53, "read past the registration");
        printf("OK out of range\n");
        sync_step(30);
        /* The server exits now: a SEND waiting for its receive fails. */
        fill(buf, 8, 1);
        if (ibv_req_notify_cq(scq, 0)) DIE("ibv_req_notify_cq on a CQ without a channel"); /* accepted, as by NICs */
        double t0 = now();
        post(0, 60, IBV_WR_SEND, &s, 1, 0, 0, 0, 0);
        struct ibv_wc wc = wait_wc(scq, 15);
        if (wc.wr_id != 60 || wc.status == IBV_WC_SUCCESS) DIE("SEND to a dead peer: %s", ibv_wc_status_str(wc.status));
        printf("OK dead peer: '%s' after %.2f s\n", ibv_wc_status_str(wc.status), now() - t0);
    } else {
        sync_step(30);
        printf("OK exiting\n");
        fflush(stdout);
        _exit(0);
    }
    for (int i = 0; i < NQP; i++) if (ibv_destroy_qp(qp[i])) DIE("ibv_destroy_qp");
    if (ibv_destroy_cq(scq) || ibv_destroy_cq(rcq) || ibv_destroy_cq(scq3) || ibv_destroy_cq(rcq3) || ibv_destroy_comp_channel(chan)) DIE("destroy cq");
    if (ibv_dereg_mr(mr) || ibv_dereg_mr(romr) || ibv_dealloc_pd(pd) || ibv_close_device(ctx)) DIE("teardown");
    ibv_free_device_list(list);
    printf("OK done\n");
    return 0;
}
