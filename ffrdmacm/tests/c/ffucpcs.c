/* A UCP client and server that connect by address (ucp_listener_create,
 * ucp_ep_create with a socket address): UCX's client-server mode, as
 * UCX-Py, Dask and NIXL use it. Over ff0 UCX sets the connection up with
 * its rdma_cm connection manager (our librdmacm.so.1) and moves the data
 * over its verbs transports (our libibverbs.so.1).
 *
 *   ffucpcs server PORT          serves one client, then exits
 *   ffucpcs client ADDR PORT     sends every size, checks the server's
 *                                answers (a checksum each, and the bytes
 *                                of the last message sent back), exits 0
 *
 * Prints the connection's transports (ucp_ep_print_info) on stderr. */
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <ucp/api/ucp.h>

#define TAG_DATA 1
#define TAG_SUM 2
#define TAG_BACK 3
#define MAX_SIZE (4 << 20)

static const size_t sizes[] = {1, 8, 100, 4096, 65536, 300000, 1 << 20, MAX_SIZE};
#define NSIZES (sizeof(sizes) / sizeof(sizes[0]))

static ucp_context_h ctx;
static ucp_worker_h worker;
static ucp_conn_request_h conn_req;
static ucp_listener_h listener;
static int failed;
/* The exchange is over: the peer may close (its error is no failure),
 * and did (`gone`). */
static int finished, gone;

static void die(const char *what, ucs_status_t st) {
    fprintf(stderr, "ffucpcs: %s: %s\n", what, ucs_status_string(st));
    exit(1);
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* Waits for a request (or an immediate result) for at most 60 s. */
static void wait_req(void *req, const char *what) {
    if (UCS_PTR_IS_ERR(req))
        die(what, UCS_PTR_STATUS(req));
    if (req == NULL)
        return;
    double end = now() + 60;
    while (ucp_request_check_status(req) == UCS_INPROGRESS) {
        ucp_worker_progress(worker);
        if (now() > end) {
            fprintf(stderr, "ffucpcs: %s: no completion in 60 s\n", what);
            exit(1);
        }
    }
    ucs_status_t st = ucp_request_check_status(req);
    ucp_request_free(req);
    if (st != UCS_OK)
        die(what, st);
}

static uint64_t fnv(const uint8_t *p, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

static void fill(uint8_t *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(i * 131 + seed * 7 + (i >> 12));
}

static void on_error(void *arg, ucp_ep_h ep, ucs_status_t st) {
    (void)arg; (void)ep;
    if (finished) {
        gone = 1;
        return;
    }
    fprintf(stderr, "ffucpcs: endpoint error: %s\n", ucs_status_string(st));
    failed = 1;
}

static void on_conn(ucp_conn_request_h req, void *arg) {
    (void)arg;
    if (conn_req != NULL) {
        fprintf(stderr, "ffucpcs: a second client, rejected\n");
        ucp_listener_reject(listener, req);
        return;
    }
    conn_req = req;
}

static void send_sync(ucp_ep_h ep, const void *buf, size_t n, ucp_tag_t tag, const char *what) {
    ucp_request_param_t p = {0};
    wait_req(ucp_tag_send_sync_nbx(ep, buf, n, tag, &p), what);
}

/* Receives a message of `tag` into buf (at most n bytes) within 60 s;
 * returns its length. Always through a request (UCX 1.13 does not fill
 * `recv_info` when a receive completes at once), which says the length. */
static size_t recv_tag(void *buf, size_t n, ucp_tag_t tag, const char *what) {
    ucp_tag_recv_info_t info = {0};
    ucp_request_param_t p = {.op_attr_mask = UCP_OP_ATTR_FLAG_NO_IMM_CMPL};
    void *req = ucp_tag_recv_nbx(worker, buf, n, tag, (ucp_tag_t)-1, &p);
    if (UCS_PTR_IS_ERR(req))
        die(what, UCS_PTR_STATUS(req));
    {
        double end = now() + 60;
        ucs_status_t st;
        while ((st = ucp_tag_recv_request_test(req, &info)) == UCS_INPROGRESS) {
            ucp_worker_progress(worker);
            if (now() > end) {
                fprintf(stderr, "ffucpcs: %s: no completion in 60 s\n", what);
                exit(1);
            }
        }
        ucp_request_free(req);
        if (st != UCS_OK)
            die(what, st);
    }
    if (info.length > n) {
        fprintf(stderr, "ffucpcs: %s: %zu bytes into %zu\n", what, info.length, n);
        exit(1);
    }
    return info.length;
}

/* Closes an endpoint: flushing it first, or at once (`force`: the peer
 * may be gone). */
static void close_ep(ucp_ep_h ep, int force) {
    ucp_request_param_t p = {.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS, .flags = force ? UCP_EP_CLOSE_FLAG_FORCE : 0};
    void *req = ucp_ep_close_nbx(ep, &p);
    if (UCS_PTR_IS_PTR(req)) {
        while (ucp_request_check_status(req) == UCS_INPROGRESS)
            ucp_worker_progress(worker);
        ucp_request_free(req);
    }
}

int main(int argc, char **argv) {
    int server = argc == 3 && !strcmp(argv[1], "server");
    if (!server && !(argc == 4 && !strcmp(argv[1], "client"))) {
        fprintf(stderr, "usage: ffucpcs server PORT | ffucpcs client ADDR PORT\n");
        return 2;
    }
    ucp_params_t pp = {.field_mask = UCP_PARAM_FIELD_FEATURES, .features = UCP_FEATURE_TAG};
    ucs_status_t st = ucp_init(&pp, NULL, &ctx);
    if (st != UCS_OK)
        die("ucp_init", st);
    ucp_worker_params_t wp = {.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE, .thread_mode = UCS_THREAD_MODE_SINGLE};
    if ((st = ucp_worker_create(ctx, &wp, &worker)) != UCS_OK)
        die("ucp_worker_create", st);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[server ? 2 : 3]))};
    uint8_t *buf = malloc(MAX_SIZE), *back = malloc(MAX_SIZE);
    ucp_ep_h ep;
    ucp_ep_params_t ep_params = {
        .field_mask = UCP_EP_PARAM_FIELD_ERR_HANDLER | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE,
        .err_mode = UCP_ERR_HANDLING_MODE_PEER,
        .err_handler = {.cb = on_error},
    };
    if (server) {
        sa.sin_addr.s_addr = INADDR_ANY;
        ucp_listener_params_t lp = {
            .field_mask = UCP_LISTENER_PARAM_FIELD_SOCK_ADDR | UCP_LISTENER_PARAM_FIELD_CONN_HANDLER,
            .sockaddr = {.addr = (struct sockaddr *)&sa, .addrlen = sizeof(sa)},
            .conn_handler = {.cb = on_conn},
        };
        if ((st = ucp_listener_create(worker, &lp, &listener)) != UCS_OK)
            die("ucp_listener_create", st);
        printf("listening\n");
        fflush(stdout);
        double end = now() + 60;
        while (conn_req == NULL) {
            ucp_worker_progress(worker);
            if (now() > end) {
                fprintf(stderr, "ffucpcs: no client in 60 s\n");
                return 1;
            }
        }
        ep_params.field_mask |= UCP_EP_PARAM_FIELD_CONN_REQUEST;
        ep_params.conn_request = conn_req;
        if ((st = ucp_ep_create(worker, &ep_params, &ep)) != UCS_OK)
            die("ucp_ep_create (server)", st);
        for (unsigned i = 0; i < NSIZES; i++) {
            size_t n = recv_tag(buf, MAX_SIZE, TAG_DATA, "receive");
            uint64_t sum = fnv(buf, n);
            send_sync(ep, &sum, sizeof(sum), TAG_SUM, "send checksum");
        }
        /* The last message goes back as it came. */
        size_t n = sizes[NSIZES - 1];
        send_sync(ep, buf, n, TAG_BACK, "send back");
        /* The client's last word: it checked everything. */
        uint64_t done;
        recv_tag(&done, sizeof(done), TAG_SUM, "receive the client's end");
        /* Then the client closes first (once it has our answer), so that
         * neither side sees the other go before the exchange is over. */
        finished = 1;
        ucp_request_param_t p = {0};
        wait_req(ucp_tag_send_nbx(ep, &done, sizeof(done), TAG_SUM, &p), "answer the end");
        for (double end = now() + 10; !gone && now() < end;)
            ucp_worker_progress(worker);
        close_ep(ep, 1);
        ucp_listener_destroy(listener);
        printf("served %u messages\n", (unsigned)NSIZES);
    } else {
        if (inet_pton(AF_INET, argv[2], &sa.sin_addr) != 1) {
            fprintf(stderr, "ffucpcs: bad address %s\n", argv[2]);
            return 2;
        }
        ep_params.field_mask |= UCP_EP_PARAM_FIELD_FLAGS | UCP_EP_PARAM_FIELD_SOCK_ADDR;
        ep_params.flags = UCP_EP_PARAMS_FLAGS_CLIENT_SERVER;
        ep_params.sockaddr.addr = (struct sockaddr *)&sa;
        ep_params.sockaddr.addrlen = sizeof(sa);
        if ((st = ucp_ep_create(worker, &ep_params, &ep)) != UCS_OK)
            die("ucp_ep_create (client)", st);
        for (unsigned i = 0; i < NSIZES; i++) {
            size_t n = sizes[i];
            fill(buf, n, i);
            send_sync(ep, buf, n, TAG_DATA, "send");
            uint64_t sum;
            recv_tag(&sum, sizeof(sum), TAG_SUM, "receive checksum");
            if (sum != fnv(buf, n)) {
                fprintf(stderr, "ffucpcs: message %u (%zu bytes) arrived changed\n", i, n);
                return 1;
            }
        }
        size_t n = recv_tag(back, MAX_SIZE, TAG_BACK, "receive back");
        if (n != sizes[NSIZES - 1] || memcmp(back, buf, n)) {
            fprintf(stderr, "ffucpcs: the message sent back differs (%zu bytes)\n", n);
            return 1;
        }
        ucp_ep_print_info(ep, stderr);
        uint64_t done = 1;
        ucp_request_param_t p = {0};
        wait_req(ucp_tag_send_nbx(ep, &done, sizeof(done), TAG_SUM, &p), "send the end");
        recv_tag(&done, sizeof(done), TAG_SUM, "receive the server's answer");
        finished = 1;
        close_ep(ep, 0);
        printf("checked %u messages of 1 B to %d B and %d B back\n", (unsigned)NSIZES, MAX_SIZE, MAX_SIZE);
    }
    ucp_worker_destroy(worker);
    ucp_cleanup(ctx);
    free(buf);
    free(back);
    return failed;
}
