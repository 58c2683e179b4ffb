/* UCP atomics under contention, for ucx-transport/tests/ucp_atomics.rs.
 *
 *   ffamo owner LOG               registers words, prints ADDR/RKEY/BASE,
 *                                 does CPU atomics on some of them while it
 *                                 progresses, until both hammers are done
 *   ffamo hammer ID ADDR RKEY BASE ITERS LOG
 *                                 UCP atomics on the owner's words
 *
 * Every operation is logged (LOG: one line per op: "word op value compare
 * returned"); the test checks the logs against a sequential model.
 *
 * Layout (R = the registration's start, 64 bytes into a page; P = R's next
 * page): the registration's first page is partial, so its words stay
 * private to the owner and ff serves them as messages; P is a whole page,
 * shadow memory that peers on the owner's host map and operate on directly.
 *   R+0  A  u64 counter (fetch-add)       P+0   B u64 counter (fetch-add, cswap)
 *   R+8  E  u32 counter (fetch-add,cswap) P+64  C u32 counter (fetch-add)
 *   R+16 GO u64 start barrier             P+128 D u64 bits (xor/or/and, own bits)
 *   R+24 DONE u64 hammers finished        P+192 S u64 swap chain
 *                                         P+256 X u32 bits (xor/or/and, own bits)
 */
#include <ucp/api/ucp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <unistd.h>

#define PAGE 4096
#define OWNER_MAX 50000

static ucp_context_h ctx;
static ucp_worker_h worker;
static FILE *logf_;

static void die(const char *what, ucs_status_t s)
{
    printf("FAIL %s: %s\n", what, ucs_status_string(s));
    fflush(stdout);
    exit(1);
}

static void init(void)
{
    ucp_params_t p;
    ucp_worker_params_t wp;
    ucs_status_t s;
    memset(&p, 0, sizeof(p));
    p.field_mask = UCP_PARAM_FIELD_FEATURES;
    p.features = UCP_FEATURE_AMO32 | UCP_FEATURE_AMO64 | UCP_FEATURE_RMA;
    if ((s = ucp_init(&p, NULL, &ctx)) != UCS_OK) die("ucp_init", s);
    memset(&wp, 0, sizeof(wp));
    wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
    wp.thread_mode = UCS_THREAD_MODE_SINGLE;
    if ((s = ucp_worker_create(ctx, &wp, &worker)) != UCS_OK) die("ucp_worker_create", s);
}

static void print_hex(const char *what, const void *b, size_t n)
{
    size_t i;
    printf("%s ", what);
    for (i = 0; i < n; i++) printf("%02x", ((const unsigned char *)b)[i]);
    printf("\n");
}

static void *from_hex(const char *h, size_t *n)
{
    size_t i, len = strlen(h) / 2;
    unsigned char *b = malloc(len);
    for (i = 0; i < len; i++) sscanf(h + 2 * i, "%2hhx", &b[i]);
    *n = len;
    return b;
}

static void logop(char word, char op, uint64_t value, uint64_t compare, uint64_t ret)
{
    fprintf(logf_, "%c %c %llu %llu %llu\n", word, op, (unsigned long long)value,
            (unsigned long long)compare, (unsigned long long)ret);
}

/* ---- owner ---- */

static int owner(const char *logpath)
{
    void *mem;
    char *R, *P;
    ucp_mem_map_params_t mp;
    ucp_mem_h memh;
    void *rkey_buf;
    size_t rkey_len, alen;
    ucp_address_t *addr;
    uint64_t n = 0;
    ucs_status_t s;

    init();
    if (posix_memalign(&mem, PAGE, 3 * PAGE)) die("posix_memalign", UCS_ERR_NO_MEMORY);
    memset(mem, 0, 3 * PAGE);
    R = (char *)mem + 64;
    P = (char *)mem + PAGE;
    memset(&mp, 0, sizeof(mp));
    mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
    mp.address = R;
    mp.length = 2 * PAGE;
    if ((s = ucp_mem_map(ctx, &mp, &memh)) != UCS_OK) die("ucp_mem_map", s);
    if ((s = ucp_rkey_pack(ctx, memh, &rkey_buf, &rkey_len)) != UCS_OK) die("ucp_rkey_pack", s);
    if ((s = ucp_worker_get_address(worker, &addr, &alen)) != UCS_OK) die("get_address", s);
    logf_ = fopen(logpath, "w");
    if (!logf_) die("open log", UCS_ERR_IO_ERROR);
    print_hex("ADDR", addr, alen);
    print_hex("RKEY", rkey_buf, rkey_len);
    printf("BASE %llx\n", (unsigned long long)(uintptr_t)R);
    fflush(stdout);

    /* Until both hammers say done: progress (serves ff's messages) and
     * CPU atomics on the words the hammers use too. */
    while (__atomic_load_n((uint64_t *)(R + 24), __ATOMIC_SEQ_CST) < 2) {
        ucp_worker_progress(worker);
        if (__atomic_load_n((uint64_t *)(R + 16), __ATOMIC_SEQ_CST) < 2 || n >= OWNER_MAX) {
            continue; /* only while the hammers run */
        }
        logop('A', 'a', 1, 0, __atomic_fetch_add((uint64_t *)R, 1, __ATOMIC_SEQ_CST));
        logop('B', 'a', 1, 0, __atomic_fetch_add((uint64_t *)P, 1, __ATOMIC_SEQ_CST));
        logop('C', 'a', 1, 0, __atomic_fetch_add((uint32_t *)(P + 64), 1, __ATOMIC_SEQ_CST));
        {
            uint64_t bit = 1ull << (16 + n % 8);
            logop('D', 'x', bit, 0, __atomic_fetch_xor((uint64_t *)(P + 128), bit, __ATOMIC_SEQ_CST));
        }
        n++;
    }
    fclose(logf_);
    printf("FINAL A=%llu E=%u B=%llu C=%u D=%llu S=%llu X=%u owner_ops=%llu\n",
           (unsigned long long)*(uint64_t *)R, *(uint32_t *)(R + 8),
           (unsigned long long)*(uint64_t *)P, *(uint32_t *)(P + 64),
           (unsigned long long)*(uint64_t *)(P + 128), (unsigned long long)*(uint64_t *)(P + 192),
           *(uint32_t *)(P + 256), (unsigned long long)n);
    fflush(stdout);
    ucp_rkey_buffer_release(rkey_buf);
    ucp_worker_release_address(worker, addr);
    ucp_mem_unmap(ctx, memh);
    ucp_worker_destroy(worker);
    ucp_cleanup(ctx);
    return 0;
}

/* ---- hammer ---- */

static ucp_ep_h ep;
static ucp_rkey_h rkey;

static void wait_req(void *req, const char *what)
{
    ucs_status_t s;
    if (req == NULL) return;
    if (UCS_PTR_IS_ERR(req)) die(what, UCS_PTR_STATUS(req));
    do {
        ucp_worker_progress(worker);
        s = ucp_request_check_status(req);
    } while (s == UCS_INPROGRESS);
    ucp_request_free(req);
    if (s != UCS_OK) die(what, s);
}

/* One blocking atomic: op on the word at remote address `at` (4 or 8
 * bytes); for cswap `value` is the new value and `compare` the expected
 * one. Returns the word's old value. */
static uint64_t amo(ucp_atomic_op_t op, uint64_t at, int width, uint64_t value, uint64_t compare)
{
    ucp_request_param_t prm;
    uint64_t v64 = value, r64 = compare;
    uint32_t v32 = (uint32_t)value, r32 = (uint32_t)compare;
    memset(&prm, 0, sizeof(prm));
    prm.op_attr_mask = UCP_OP_ATTR_FIELD_DATATYPE | UCP_OP_ATTR_FIELD_REPLY_BUFFER;
    prm.datatype = ucp_dt_make_contig(width);
    if (width == 8) {
        /* cswap: buffer holds the value compared, reply_buffer the new one */
        if (op == UCP_ATOMIC_OP_CSWAP) { v64 = compare; r64 = value; }
        prm.reply_buffer = &r64;
        wait_req(ucp_atomic_op_nbx(ep, op, &v64, 1, at, rkey, &prm), "atomic64");
        return r64;
    }
    if (op == UCP_ATOMIC_OP_CSWAP) { v32 = (uint32_t)compare; r32 = (uint32_t)value; }
    prm.reply_buffer = &r32;
    wait_req(ucp_atomic_op_nbx(ep, op, &v32, 1, at, rkey, &prm), "atomic32");
    return r32;
}

static int hammer(int id, const char *addr_hex, const char *rkey_hex, const char *base_hex, long iters, const char *logpath)
{
    ucp_ep_params_t ep_params;
    ucp_request_param_t prm;
    size_t n;
    void *addr, *rkey_buf;
    uint64_t R = strtoull(base_hex, NULL, 16);
    uint64_t P = (R + PAGE - 1) / PAGE * PAGE;
    uint64_t A = R, E = R + 8, GO = R + 16, DONE = R + 24;
    uint64_t B = P, C = P + 64, D = P + 128, S = P + 192, X = P + 256;
    uint64_t lastE = 0, r;
    long i;
    ucs_status_t s;

    init();
    addr = from_hex(addr_hex, &n);
    rkey_buf = from_hex(rkey_hex, &n);
    memset(&ep_params, 0, sizeof(ep_params));
    ep_params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS;
    ep_params.address = addr;
    if ((s = ucp_ep_create(worker, &ep_params, &ep)) != UCS_OK) die("ucp_ep_create", s);
    if ((s = ucp_ep_rkey_unpack(ep, rkey_buf, &rkey)) != UCS_OK) die("ucp_ep_rkey_unpack", s);
    logf_ = fopen(logpath, "w");
    if (!logf_) die("open log", UCS_ERR_IO_ERROR);

    /* Start together: both hammers check in, then wait for each other. */
    amo(UCP_ATOMIC_OP_ADD, GO, 8, 1, 0);
    while (amo(UCP_ATOMIC_OP_ADD, GO, 8, 0, 0) < 2) {
    }
    printf("STARTED\n");
    fflush(stdout);

    for (i = 0; i < iters; i++) {
        uint64_t mybit = 1ull << (8 * id + i % 8);
        uint64_t b = amo(UCP_ATOMIC_OP_ADD, A, 8, 1, 0);
        logop('A', 'a', 1, 0, b);
        r = amo(UCP_ATOMIC_OP_ADD, B, 8, 1, 0);
        logop('B', 'a', 1, 0, r);
        /* cswap from what we just made it: succeeds only if nobody came between */
        logop('B', 'c', r + 2, r + 1, amo(UCP_ATOMIC_OP_CSWAP, B, 8, r + 2, r + 1));
        logop('C', 'a', 1, 0, amo(UCP_ATOMIC_OP_ADD, C, 4, 1, 0));
        if (i % 2 == 0) {
            r = amo(UCP_ATOMIC_OP_ADD, E, 4, 1, 0);
            logop('E', 'a', 1, 0, r);
            lastE = r + 1;
        } else {
            r = amo(UCP_ATOMIC_OP_CSWAP, E, 4, lastE + 1, lastE);
            logop('E', 'c', lastE + 1, lastE, r);
            lastE = (r == lastE) ? lastE + 1 : r;
        }
        switch (i % 3) {
        case 0: logop('D', 'x', mybit, 0, amo(UCP_ATOMIC_OP_XOR, D, 8, mybit, 0)); break;
        case 1: logop('D', 'o', mybit, 0, amo(UCP_ATOMIC_OP_OR, D, 8, mybit, 0)); break;
        default: logop('D', 'n', ~mybit, 0, amo(UCP_ATOMIC_OP_AND, D, 8, ~mybit, 0)); break;
        }
        switch ((i + id) % 3) {
        case 0: logop('X', 'o', (uint32_t)(1u << (8 * id + i % 5)), 0, amo(UCP_ATOMIC_OP_OR, X, 4, 1u << (8 * id + i % 5), 0)); break;
        case 1: logop('X', 'x', (uint32_t)(1u << (8 * id + i % 7)), 0, amo(UCP_ATOMIC_OP_XOR, X, 4, 1u << (8 * id + i % 7), 0)); break;
        default: logop('X', 'n', (uint32_t)~(1u << (8 * id + i % 3)), 0, amo(UCP_ATOMIC_OP_AND, X, 4, ~(1u << (8 * id + i % 3)), 0)); break;
        }
        {
            uint64_t mine = ((uint64_t)(id + 1) << 32) | (uint64_t)(i + 1);
            logop('S', 's', mine, 0, amo(UCP_ATOMIC_OP_SWAP, S, 8, mine, 0));
        }
    }
    fclose(logf_);
    memset(&prm, 0, sizeof(prm));
    wait_req(ucp_ep_flush_nbx(ep, &prm), "flush");
    amo(UCP_ATOMIC_OP_ADD, DONE, 8, 1, 0);
    printf("DONE iters=%ld\n", iters);
    fflush(stdout);
    ucp_rkey_destroy(rkey);
    ucp_worker_destroy(worker);
    ucp_cleanup(ctx);
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 3 && !strcmp(argv[1], "owner")) return owner(argv[2]);
    if (argc == 8 && !strcmp(argv[1], "hammer"))
        return hammer(atoi(argv[2]), argv[3], argv[4], argv[5], atol(argv[6]), argv[7]);
    fprintf(stderr, "usage: ffamo owner LOG | ffamo hammer ID ADDR RKEY BASE ITERS LOG\n");
    return 2;
}
