/* ffmpi: MPI data-exchange check for the ff UCX transport.
 *
 * Every rank exchanges messages of 1 B .. 64 MiB (powers of two and odd
 * sizes in between) with its partner (rank ^ 1), blocking and non-blocking,
 * then between buffers freed and allocated again for each message, verifies
 * every byte, then checks an MPI_Allreduce of 1 Mi doubles and an
 * MPI_Barrier. Prints "FFMPI OK rank R/N host H ..." per rank and exits 0,
 * or prints what differed and calls MPI_Abort at once (its partner may be
 * waiting in the next exchange, which this rank would never make: going
 * on to the collectives would hang the job). */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static unsigned char pattern(int from, size_t size, size_t i, int round) {
    return (unsigned char)(i * 131u + size * 7u + (unsigned)from * 29u + (unsigned)round * 17u + 1u);
}

static void fill(unsigned char *b, int from, size_t size, int round) {
    for (size_t i = 0; i < size; i++) b[i] = pattern(from, size, i, round);
}

static void fail(void) {
    fflush(stdout);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
}

static void check(const unsigned char *b, int from, size_t size, int round, const char *what, int rank) {
    for (size_t i = 0; i < size; i++) {
        if (b[i] != pattern(from, size, i, round)) {
            fprintf(stderr, "FFMPI FAIL rank %d: %s of %zu bytes from %d: byte %zu is %u, want %u\n",
                    rank, what, size, from, i, b[i], pattern(from, size, i, round));
            fail();
        }
    }
}

int main(int argc, char **argv) {
    int rank, n;
    char host[256] = "";
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &n);
    gethostname(host, sizeof host - 1);
    size_t max = (size_t)64 << 20;
    if (argc > 1) max = strtoull(argv[1], NULL, 0);
    int peer = rank ^ 1, msgs = 0;
    unsigned char *sbuf = malloc(max), *rbuf = malloc(max);
    if (!sbuf || !rbuf) MPI_Abort(MPI_COMM_WORLD, 2);
    size_t total = 0;
    if (peer < n) {
        for (size_t size = 1; size <= max; size = size < 4096 ? size * 2 : size * 4) {
            size_t sizes[2] = {size, size + 13 <= max ? size + 13 : size};
            for (int k = 0; k < 2; k++) {
                size_t s = sizes[k];
                int round = (int)(s % 97);
                /* Blocking, both directions at once. */
                fill(sbuf, rank, s, round);
                memset(rbuf, 0, s);
                MPI_Sendrecv(sbuf, (int)s, MPI_BYTE, peer, 1, rbuf, (int)s, MPI_BYTE, peer, 1,
                             MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                check(rbuf, peer, s, round, "sendrecv", rank);
                /* Non-blocking, receive posted first on one side only. */
                fill(sbuf, rank, s, round + 1);
                memset(rbuf, 0, s);
                MPI_Request rq[2];
                if (rank & 1) {
                    MPI_Irecv(rbuf, (int)s, MPI_BYTE, peer, 2, MPI_COMM_WORLD, &rq[0]);
                    MPI_Isend(sbuf, (int)s, MPI_BYTE, peer, 2, MPI_COMM_WORLD, &rq[1]);
                } else {
                    MPI_Isend(sbuf, (int)s, MPI_BYTE, peer, 2, MPI_COMM_WORLD, &rq[1]);
                    MPI_Irecv(rbuf, (int)s, MPI_BYTE, peer, 2, MPI_COMM_WORLD, &rq[0]);
                }
                MPI_Waitall(2, rq, MPI_STATUSES_IGNORE);
                check(rbuf, peer, s, round + 1, "isend/irecv", rank);
                msgs += 2;
                total += 2 * s;
            }
        }
    }
    /* Buffers freed and allocated again between messages, at an odd offset
     * (1 to 5 MiB and odd sizes: with the ff transport's heap these are
     * shadow regions it keeps and hands out again, and UCX's registration
     * cache must follow). */
    for (int r = 0; r < 12 && peer < n; r++) {
        size_t s = ((size_t)(1 + r % 5) << 20) + 4096 * (size_t)r + 3;
        unsigned char *a = malloc(s + 1), *b = malloc(s + 1);
        if (!a || !b) MPI_Abort(MPI_COMM_WORLD, 2);
        fill(a + 1, rank, s, r + 50);
        memset(b, 0, s + 1);
        MPI_Sendrecv(a + 1, (int)s, MPI_BYTE, peer, 3, b + 1, (int)s, MPI_BYTE, peer, 3, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        check(b + 1, peer, s, r + 50, "sendrecv between fresh buffers", rank);
        free(a);
        free(b);
        msgs += 1;
        total += s;
    }
    /* Allreduce: sum of (rank + 1) * (i % 1000) over ranks. */
    int count = 1 << 20;
    double *in = malloc(sizeof(double) * count), *out = malloc(sizeof(double) * count);
    for (int i = 0; i < count; i++) in[i] = (double)(rank + 1) * (double)(i % 1000);
    MPI_Allreduce(in, out, count, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    double f = (double)n * (n + 1) / 2.0;
    for (int i = 0; i < count; i++) {
        if (out[i] != f * (double)(i % 1000)) {
            fprintf(stderr, "FFMPI FAIL rank %d: allreduce[%d] = %f, want %f\n", rank, i, out[i], f * (i % 1000));
            fail();
        }
    }
    MPI_Barrier(MPI_COMM_WORLD);
    printf("FFMPI OK rank %d/%d host %s messages %d bytes %zu max %zu allreduce %d doubles\n",
           rank, n, host, msgs, total, max, count);
    fflush(stdout);
    free(sbuf); free(rbuf); free(in); free(out);
    MPI_Finalize();
    return 0;
}
