/* UCP programs for ucx-transport/tests/ucp_events.rs: peer failure under
 * UCP_ERR_HANDLING_MODE_PEER, and a worker asleep in ucp_worker_wait (or in
 * epoll on ucp_worker_get_efd after ucp_worker_arm) woken by messages.
 * Addresses travel as hex lines on stdin/stdout ("ADDR <hex>").
 *
 *   ffucp peer                 echo: tag 1 in, value+1 back on tag 2
 *   ffucp survivor             eps to two peers; one is SIGKILLed
 *   ffucp waitrecv wait|efd    sleeps until a sender's messages arrive
 *   ffucp send wait|efd        sends them when told GO
 */
#include <ucp/api/ucp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <unistd.h>
#include <time.h>
#include <sys/epoll.h>
#include <sys/resource.h>

#define BIG (1 << 20)

static ucp_context_h ctx;
static ucp_worker_h worker;
static int use_efd = 0, epfd = -1;
static long waits = 0;

static void die(const char *what, ucs_status_t s)
{
    printf("FAIL %s: %s\n", what, ucs_status_string(s));
    fflush(stdout);
    exit(1);
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static double cpu(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6;
}

static void init(int wakeup)
{
    ucp_params_t p;
    ucp_worker_params_t wp;
    ucs_status_t s;
    memset(&p, 0, sizeof(p));
    p.field_mask = UCP_PARAM_FIELD_FEATURES;
    p.features = UCP_FEATURE_TAG | (wakeup ? UCP_FEATURE_WAKEUP : 0);
    if ((s = ucp_init(&p, NULL, &ctx)) != UCS_OK) die("ucp_init", s);
    memset(&wp, 0, sizeof(wp));
    wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
    wp.thread_mode = UCS_THREAD_MODE_SINGLE;
    if ((s = ucp_worker_create(ctx, &wp, &worker)) != UCS_OK) die("ucp_worker_create", s);
    if (wakeup && use_efd) {
        int fd;
        struct epoll_event ev = {.events = EPOLLIN};
        if ((s = ucp_worker_get_efd(worker, &fd)) != UCS_OK) die("ucp_worker_get_efd", s);
        epfd = epoll_create1(0);
        ev.data.fd = fd;
        epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
    }
}

static void print_addr(void)
{
    ucp_address_t *a;
    size_t n, i;
    ucs_status_t s = ucp_worker_get_address(worker, &a, &n);
    if (s != UCS_OK) die("get_address", s);
    printf("ADDR ");
    for (i = 0; i < n; i++) printf("%02x", ((unsigned char *)a)[i]);
    printf("\n");
    fflush(stdout);
    ucp_worker_release_address(worker, a);
}

/* Reads a line "<word> <hex>" from stdin; returns the decoded bytes. */
static unsigned char *read_hex(const char *word, size_t *len)
{
    static char line[65536];
    size_t i, n;
    unsigned char *b;
    if (!fgets(line, sizeof(line), stdin)) { printf("FAIL stdin closed\n"); exit(1); }
    if (strncmp(line, word, strlen(word))) { printf("FAIL expected %s, got %s", word, line); exit(1); }
    char *h = line + strlen(word) + 1;
    n = strcspn(h, "\r\n") / 2;
    b = malloc(n);
    for (i = 0; i < n; i++) sscanf(h + 2 * i, "%2hhx", &b[i]);
    *len = n;
    return b;
}

static void expect_line(const char *word)
{
    char line[256];
    if (!fgets(line, sizeof(line), stdin) || strncmp(line, word, strlen(word))) {
        printf("FAIL expected %s\n", word);
        exit(1);
    }
}

struct err { int fired; ucs_status_t status; double at; };
static struct err errs[2];

static void on_err(void *arg, ucp_ep_h ep, ucs_status_t status)
{
    struct err *e = arg;
    e->fired++;
    e->status = status;
    e->at = now();
}

static ucp_ep_h connect_to(const char *word, int peer_mode, struct err *e)
{
    size_t n;
    unsigned char *a = read_hex(word, &n);
    ucp_ep_params_t ep;
    ucp_ep_h h;
    ucs_status_t s;
    memset(&ep, 0, sizeof(ep));
    ep.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS;
    ep.address = (ucp_address_t *)a;
    if (peer_mode) {
        ep.field_mask |= UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE | UCP_EP_PARAM_FIELD_ERR_HANDLER;
        ep.err_mode = UCP_ERR_HANDLING_MODE_PEER;
        ep.err_handler.cb = on_err;
        ep.err_handler.arg = e;
    }
    if ((s = ucp_ep_create(worker, &ep, &h)) != UCS_OK) die("ucp_ep_create", s);
    free(a);
    return h;
}

/* Progress, sleeping when idle (wakeup mode) or spinning. */
static void step(int sleep_ok)
{
    ucs_status_t s;
    if (ucp_worker_progress(worker) || !sleep_ok) return;
    if (use_efd) {
        struct epoll_event ev;
        s = ucp_worker_arm(worker);
        if (s == UCS_ERR_BUSY) return;
        if (s != UCS_OK) die("ucp_worker_arm", s);
        waits++;
        epoll_wait(epfd, &ev, 1, -1);
    } else {
        waits++;
        if ((s = ucp_worker_wait(worker)) != UCS_OK) die("ucp_worker_wait", s);
    }
}

static ucs_status_t wait_req(void *r, int sleep_ok, double timeout)
{
    double t0 = now();
    ucs_status_t s;
    if (r == NULL) return UCS_OK;
    if (UCS_PTR_IS_ERR(r)) return UCS_PTR_STATUS(r);
    while ((s = ucp_request_check_status(r)) == UCS_INPROGRESS) {
        step(sleep_ok);
        if (now() - t0 > timeout) return UCS_ERR_TIMED_OUT;
    }
    ucp_request_free(r);
    return s;
}

static void *send_nb(ucp_ep_h ep, void *buf, size_t len, ucp_tag_t tag)
{
    ucp_request_param_t p;
    memset(&p, 0, sizeof(p));
    return ucp_tag_send_nbx(ep, buf, len, tag, &p);
}

static void *recv_nb(void *buf, size_t len, ucp_tag_t tag)
{
    ucp_request_param_t p;
    memset(&p, 0, sizeof(p));
    return ucp_tag_recv_nbx(worker, buf, len, tag, (ucp_tag_t)-1, &p);
}

static int peer(void)
{
    ucp_ep_h back;
    init(0);
    print_addr();
    back = connect_to("PEER", 1, &errs[0]);
    for (;;) {
        uint64_t v = 0, r;
        ucs_status_t s = wait_req(recv_nb(&v, 8, 1), 0, 1e9);
        if (s != UCS_OK) die("peer recv", s);
        if (v == 0) break;
        r = v + 1;
        if ((s = wait_req(send_nb(back, &r, 8, 2), 0, 30)) != UCS_OK) die("peer send", s);
    }
    return 0;
}

static ucs_status_t ping(ucp_ep_h ep, uint64_t v, double timeout)
{
    uint64_t got = 0;
    ucs_status_t s;
    void *rr = recv_nb(&got, 8, 2);
    if ((s = wait_req(send_nb(ep, &v, 8, 1), 0, timeout)) != UCS_OK) return s;
    if ((s = wait_req(rr, 0, timeout)) != UCS_OK) return s;
    return got == v + 1 ? UCS_OK : UCS_ERR_IO_ERROR;
}

static int survivor(void)
{
    ucp_ep_h ep[2];
    ucs_status_t s;
    void *big;
    char *buf = malloc(BIG);
    int i;
    double t0;
    init(0);
    print_addr();
    ep[0] = connect_to("PEER", 1, &errs[0]);
    ep[1] = connect_to("PEER", 1, &errs[1]);
    for (i = 0; i < 2; i++)
        if ((s = ping(ep[i], 100 + i, 20)) != UCS_OK) die("first ping", s);
    /* Outstanding when the peer dies: a rendezvous send it never receives. */
    memset(buf, 7, BIG);
    big = send_nb(ep[0], buf, BIG, 9);
    printf("PINGED outstanding=%d\n", big != NULL && !UCS_PTR_IS_ERR(big));
    fflush(stdout);
    expect_line("KILLED");
    t0 = now();
    while (!errs[0].fired && now() - t0 < 10) ucp_worker_progress(worker);
    printf("ERRCB fired=%d status=%s ms=%.0f other=%d\n", errs[0].fired,
           errs[0].fired ? ucs_status_string(errs[0].status) : "-",
           errs[0].fired ? (errs[0].at - t0) * 1e3 : -1.0, errs[1].fired);
    s = wait_req(big, 0, 10);
    printf("OUTSTANDING %s\n", ucs_status_string(s));
    fflush(stdout);
    for (i = 0; i < 100; i++)
        if ((s = ping(ep[1], 1000 + i, 10)) != UCS_OK) die("ping after the failure", s);
    printf("SURVIVED pings=%d errcb_other=%d errcb_dead=%d\n", i, errs[1].fired, errs[0].fired);
    fflush(stdout);
    {
        uint64_t zero = 0;
        wait_req(send_nb(ep[1], &zero, 8, 1), 0, 10);
    }
    return 0;
}

static int waitrecv(void)
{
    uint64_t small = 0;
    char *buf = calloc(1, BIG);
    void *rs, *rb;
    double c0, t0;
    ucs_status_t s;
    long i, bad = 0;
    init(1);
    print_addr();
    rs = recv_nb(&small, 8, 6);
    rb = recv_nb(buf, BIG, 5);
    c0 = cpu();
    t0 = now();
    printf("WAITING\n");
    fflush(stdout);
    if ((s = wait_req(rs, 1, 30)) != UCS_OK) die("small recv", s);
    printf("GOT small=%llu ms=%.0f cpu_ms=%.1f waits=%ld\n", (unsigned long long)small,
           (now() - t0) * 1e3, (cpu() - c0) * 1e3, waits);
    fflush(stdout);
    if ((s = wait_req(rb, 1, 30)) != UCS_OK) die("big recv", s);
    for (i = 0; i < BIG; i++) bad += buf[i] != (char)(i * 7 + 3);
    printf("GOT big bad=%ld waits=%ld\n", bad, waits);
    fflush(stdout);
    /* Stay until the sender is done (it needs our progress for rendezvous). */
    expect_line("BYE");
    return 0;
}

static int sender(void)
{
    uint64_t v = 42;
    char *buf = malloc(BIG);
    ucp_ep_h ep;
    ucs_status_t s;
    long i;
    void *rs, *rb;
    init(1);
    ep = connect_to("PEER", 0, NULL);
    for (i = 0; i < BIG; i++) buf[i] = (char)(i * 7 + 3);
    expect_line("GO");
    rs = send_nb(ep, &v, 8, 6);
    rb = send_nb(ep, buf, BIG, 5);
    if ((s = wait_req(rs, 1, 30)) != UCS_OK) die("small send", s);
    if ((s = wait_req(rb, 1, 30)) != UCS_OK) die("big send", s);
    printf("SENT waits=%ld\n", waits);
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    alarm(60);
    if (argc > 2 && !strcmp(argv[2], "efd")) use_efd = 1;
    if (argc > 1 && !strcmp(argv[1], "peer")) return peer();
    if (argc > 1 && !strcmp(argv[1], "survivor")) return survivor();
    if (argc > 1 && !strcmp(argv[1], "waitrecv")) return waitrecv();
    if (argc > 1 && !strcmp(argv[1], "send")) return sender();
    fprintf(stderr, "usage: ffucp peer|survivor|waitrecv [wait|efd]|send [wait|efd]\n");
    return 2;
}
