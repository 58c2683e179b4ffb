/* ffheap: the malloc family of a process that preloads libuct_ff.so, once
 * UCP opened the ff memory domain (UCX_FF_HEAP): see
 * ucx-transport/tests/heap.rs. One line per check: "OK <what>" or
 * "FAIL <what>: <why>", then "DONE".
 *
 *   ffheap        large allocations must be shadow regions
 *   ffheap off    they must not (UCX_FF_HEAP=inf)
 */
#include <ucp/api/ucp.h>
#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define MiB (1 << 20)

static int failed;

static void check(int ok, const char *what, const char *why)
{
    printf("%s %s%s%s\n", ok ? "OK" : "FAIL", what, ok ? "" : ": ", ok ? "" : why);
    fflush(stdout);
    failed |= !ok;
}

/* Is p in a mapping of a router region (memfd "ff-region")? */
static int in_region(const void *p)
{
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    int found = 0;
    uintptr_t a = (uintptr_t)p;
    while (f && fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx", &lo, &hi) == 2 && a >= lo && a < hi) {
            found = strstr(line, "ff-region") != NULL;
            break;
        }
    }
    if (f) fclose(f);
    return found;
}

static int all(const unsigned char *p, size_t n, unsigned char v)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != v) return 0;
    return 1;
}

int main(int argc, char **argv)
{
    int want = !(argc > 1 && strcmp(argv[1], "off") == 0);
    ucp_params_t params;
    ucp_context_h ctx;
    memset(&params, 0, sizeof params);
    params.field_mask = UCP_PARAM_FIELD_FEATURES;
    params.features = UCP_FEATURE_TAG | UCP_FEATURE_RMA;
    if (ucp_init(&params, NULL, &ctx) != UCS_OK) {
        printf("FAIL ucp_init\n");
        return 1;
    }

    /* Small allocations are glibc's; large ones regions (or not, off). */
    char *small = malloc(1000);
    check(small && !in_region(small), "small", "a 1000-byte allocation is in a region");
    unsigned char *a = malloc(4 * MiB);
    check(a && in_region(a) == want, "large", want ? "a 4 MiB allocation is not a region" : "a region although UCX_FF_HEAP=inf");
    if (!want) {
        free(a);
        free(small);
        ucp_cleanup(ctx);
        printf("DONE\n");
        return failed;
    }
    check((uintptr_t)a % 4096 == 0, "aligned", "a region allocation is not page aligned");
    check(malloc_usable_size(a) >= 4 * MiB, "usable", "malloc_usable_size below the size asked for");
    check(malloc_usable_size(small) >= 1000, "usable-small", "malloc_usable_size of glibc's pointer");
    memset(a, 0xab, 4 * MiB);

    /* Freed regions are kept and handed out again; calloc zeroes them. */
    free(a);
    unsigned char *z = calloc(4, MiB);
    check(z == a, "reused", "a freed region of the same size was not reused");
    check(z && all(z, 4 * MiB, 0), "calloc-zero", "calloc of a reused region is not zero");

    /* realloc keeps the contents, growing into a new region, shrinking in
     * place while at least half of the room is used, and back to glibc. */
    unsigned char *g = malloc(2 * MiB);
    for (size_t i = 0; i < 2 * MiB; i++) g[i] = (unsigned char)(i * 7);
    unsigned char *g2 = realloc(g, 9 * MiB);
    int same = g2 != NULL;
    for (size_t i = 0; same && i < 2 * MiB; i++) same = g2[i] == (unsigned char)(i * 7);
    check(same && in_region(g2), "realloc-grow", "contents lost, or not a region");
    unsigned char *g3 = realloc(g2, 9 * MiB - 4096);
    check(g3 == g2, "realloc-shrink", "a small shrink moved");
    unsigned char *g4 = realloc(g3, 4096);
    same = g4 != NULL && !in_region(g4);
    for (size_t i = 0; same && i < 4096; i++) same = g4[i] == (unsigned char)(i * 7);
    check(same, "realloc-small", "a shrink to glibc's sizes lost the contents");
    free(g4);

    /* Aligned allocations: up to 2 MiB (UCX's transparent huge pages),
     * regions; beyond, glibc's. */
    void *m = NULL, *m2 = NULL;
    check(posix_memalign(&m, 64, 3 * MiB) == 0 && in_region(m) && (uintptr_t)m % 64 == 0, "memalign", "posix_memalign(64) of 3 MiB");
    check(posix_memalign(&m2, 2 * MiB, 3 * MiB) == 0 && in_region(m2) && (uintptr_t)m2 % (2 * MiB) == 0, "memalign-2m",
          "posix_memalign(2 MiB) of 3 MiB is misaligned or not a region");
    memset(m2, 0x77, 3 * MiB);
    check(malloc_usable_size(m2) >= 3 * MiB, "memalign-2m-usable", "malloc_usable_size of an aligned region below the size asked for");
    unsigned char *m2r = realloc(m2, 3 * MiB - 4096);
    check(m2r == m2 && all(m2r, 3 * MiB - 4096, 0x77), "memalign-2m-realloc", "a shrink of an aligned region moved or lost data");
    free(m2r);
    m2 = NULL;
    check(posix_memalign(&m2, 4 * MiB, 3 * MiB) == 0 && !in_region(m2) && (uintptr_t)m2 % (4 * MiB) == 0, "memalign-big",
          "posix_memalign(4 MiB) misaligned, or a region");
    free(m2);
    void *m3 = NULL;
    check(posix_memalign(&m3, 3, 3 * MiB) == EINVAL && m3 == NULL, "memalign-bad", "an alignment of 3 was not refused with EINVAL");
    free(m);
    void *al = aligned_alloc(4096, 2 * MiB);
    check(al && in_region(al), "aligned_alloc", "aligned_alloc(4096) of 2 MiB is not a region");
    free(al);

    /* fork: the child sees the contents and its writes stay its own. */
    unsigned char *f = malloc(4 * MiB);
    memset(f, 0x5a, 4 * MiB);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        if (!all(f, 4 * MiB, 0x5a)) _exit(3);
        /* volatile: the compiler would drop stores to memory freed next */
        volatile unsigned char *vf = f;
        for (size_t i = 0; i < 4 * MiB; i += 512) vf[i] = 0xc3;
        free(f);
        unsigned char *c = malloc(4 * MiB); /* the child's heap hands out no region */
        if (!c || in_region(c)) _exit(4);
        free(c);
        _exit(0);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    char why[128];
    snprintf(why, sizeof why, "the child %s %d (3: it did not see the parent's data, 4: it got a region)",
             WIFEXITED(st) ? "exited with" : "was killed by signal", WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
    check(WIFEXITED(st) && WEXITSTATUS(st) == 0, "fork-child", why);
    check(all(f, 4 * MiB, 0x5a), "fork-parent", "the child's writes reached the parent");
    free(f);

    /* Many allocations beyond the kept ones: all usable, all freed. */
    unsigned char *many[20];
    for (int i = 0; i < 20; i++) {
        many[i] = malloc(MiB + i * 4096);
        memset(many[i], i, MiB + i * 4096);
    }
    int ok = 1;
    for (int i = 0; i < 20; i++) {
        ok = ok && in_region(many[i]) && all(many[i], MiB + i * 4096, (unsigned char)i);
        free(many[i]);
    }
    check(ok, "many", "20 live regions did not keep their contents");
    free(small);
    ucp_cleanup(ctx);

    /* After the domain closed: glibc again. */
    unsigned char *after = malloc(4 * MiB);
    check(after && !in_region(after), "after-cleanup", "a region after ucp_cleanup");
    free(after);
    printf("DONE\n");
    return failed;
}
