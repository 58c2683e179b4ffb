/* ffvtest.h: what the verbs test programs (ffvcheck.c, ffvsrq.c, ffvud.c, ffvorder.c, ffvevents.c, ffvports.c, ffvwr.c, ...)
 * share. A program defines PROG (its name, for messages) before including
 * it, and sets `role` ("server" or "client"); `sock` is its TCP connection
 * to the other process, once made. */
#include <arpa/inet.h>
#include <errno.h>
#include <infiniband/verbs.h>
#include <inttypes.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define DIE(...) do { fprintf(stderr, PROG " %s: ", role); fprintf(stderr, __VA_ARGS__); fprintf(stderr, "\n"); exit(1); } while (0)
#define UNUSED __attribute__((unused))

static const char *role;
static int sock UNUSED = -1;

static UNUSED double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

/* The bytes a message of `seed` carries. */
static UNUSED unsigned char pat(uint32_t seed, size_t i) { return (unsigned char)((i * 2654435761u) >> 13 ^ seed * 31 ^ i); }
static UNUSED void fill(unsigned char *p, size_t n, uint32_t seed) { for (size_t i = 0; i < n; i++) p[i] = pat(seed, i); }
static UNUSED int check(const unsigned char *p, size_t n, uint32_t seed) {
    for (size_t i = 0; i < n; i++) if (p[i] != pat(seed, i)) { fprintf(stderr, "byte %zu: %u != %u\n", i, p[i], pat(seed, i)); return 0; }
    return 1;
}

/* Both processes meet: one byte each way on the TCP connection. */
static UNUSED void meet(unsigned char step) {
    unsigned char got;
    if (write(sock, &step, 1) != 1 || read(sock, &got, 1) != 1 || got != step) DIE("meeting %u failed", step);
}

/* One completion from `cq` within `secs` (polling). */
#define wait_wc(cq, secs) wait_wc_(cq, secs, __LINE__)
static UNUSED struct ibv_wc wait_wc_(struct ibv_cq *cq, double secs, int line) {
    struct ibv_wc wc;
    double end = now() + secs;
    for (;;) {
        int n = ibv_poll_cq(cq, 1, &wc);
        if (n < 0) DIE("ibv_poll_cq failed");
        if (n == 1) return wc;
        if (now() > end) DIE("no completion within %.0f s (line %d)", secs, line);
    }
}

/* No completion on `cq` for `secs` (polling all the while). */
static UNUSED void quiet(struct ibv_cq *cq, double secs, const char *what) {
    struct ibv_wc wc;
    double end = now() + secs;
    while (now() < end) {
        int n = ibv_poll_cq(cq, 1, &wc);
        if (n != 0) DIE("%s: unexpected completion %d (wr %" PRIu64 ", '%s')", what, n, n > 0 ? wc.wr_id : 0, n > 0 ? ibv_wc_status_str(wc.status) : "poll failed");
    }
}

/* The TCP connection to the other process: the server listens on `port`
 * (and prints LISTENING), the client connects to host:port, trying for
 * 20 s. */
static UNUSED int tcp_meet(int server, const char *host, const char *port) {
    struct addrinfo hints = { .ai_family = AF_INET, .ai_socktype = SOCK_STREAM, .ai_flags = server ? AI_PASSIVE : 0 }, *ai;
    if (getaddrinfo(server ? NULL : host, port, &hints, &ai)) DIE("getaddrinfo");
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    if (server) {
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) || listen(fd, 1)) DIE("bind/listen");
        printf("LISTENING\n");
        fflush(stdout);
        int c = accept(fd, NULL, NULL);
        close(fd);
        fd = c;
    } else {
        double end = now() + 20;
        while (connect(fd, ai->ai_addr, ai->ai_addrlen)) {
            if (now() > end) DIE("cannot connect to %s:%s", host, port);
            close(fd);
            fd = socket(AF_INET, SOCK_STREAM, 0);
            usleep(50000);
        }
    }
    freeaddrinfo(ai);
    return fd;
}

/* Sends our `n` bytes and reads the peer's `n` over `fd`. */
static UNUSED void swap_bytes(int fd, const void *mine, void *theirs, size_t n) {
    if (write(fd, mine, n) != (ssize_t)n) DIE("write address");
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, (char *)theirs + got, n - got);
        if (r <= 0) DIE("no peer address");
        got += r;
    }
}

/* Takes an RC queue pair (UC with `uc`: no READ or atomic attributes)
 * through INIT, RTR and RTS to the peer's queue pair `dest_qpn` on the
 * device with GID `dgid`, as perftest does (MTU 4096, timeout 14,
 * retry_cnt and rnr_retry 7). */
static UNUSED void connect_rc(struct ibv_qp *qp, uint32_t dest_qpn, union ibv_gid dgid, int access, int uc) {
    struct ibv_qp_attr a = { .qp_state = IBV_QPS_INIT, .pkey_index = 0, .port_num = 1, .qp_access_flags = access };
    if (ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS)) DIE("INIT");
    memset(&a, 0, sizeof a);
    a.qp_state = IBV_QPS_RTR;
    a.path_mtu = IBV_MTU_4096;
    a.dest_qp_num = dest_qpn;
    a.rq_psn = 0;
    a.max_dest_rd_atomic = 1;
    a.min_rnr_timer = 12;
    a.ah_attr.is_global = 1;
    a.ah_attr.grh.dgid = dgid;
    a.ah_attr.grh.hop_limit = 1;
    a.ah_attr.port_num = 1;
    int rc_only = uc ? 0 : IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER;
    if (ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN | rc_only)) DIE("RTR");
    memset(&a, 0, sizeof a);
    a.qp_state = IBV_QPS_RTS;
    a.timeout = 14;
    a.retry_cnt = 7;
    a.rnr_retry = 7;
    a.sq_psn = 0;
    a.max_rd_atomic = 1;
    rc_only = uc ? 0 : IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_MAX_QP_RD_ATOMIC;
    if (ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_SQ_PSN | rc_only)) DIE("RTS");
}
