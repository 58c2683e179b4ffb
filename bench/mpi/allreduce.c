/* allreduce: time MPI_Allreduce of a gradient-sized float vector.
 *
 *   allreduce [COUNT [ITERS [WARMUP]]]
 *
 * COUNT floats (default 7,400,000 = 29.6 MB, a ResNet-ish gradient) summed
 * over all ranks, WARMUP (default 3) untimed then ITERS (default 20) timed
 * allreduces back to back, as a training loop issues them. Every rank's
 * input depends on the rank, the index and the pass, so a stale or partial
 * result cannot pass: the warm-up results and the last timed result are
 * checked element by element (sums of small integers are exact in float).
 *
 * Rank 0 prints one line
 *   RESULT ranks=N count=C bytes=B iters=I ms_mean=... ms_median=... ms_min=...
 *          ms_max=... cpu_s=... cpu_ms_per_op=... wall_s=...
 * where ms_* are per allreduce (each iteration's time is the slowest rank's,
 * MPI_Wtime around the call), and cpu_s the CPU seconds the whole machine
 * spent busy over the timed loop (every process and the kernel, from
 * /proc/stat, which no namespace hides: both emulated hosts and their
 * routers included). Exits non-zero (MPI_Abort) if a result is wrong. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static float value(int rank, long i, int pass) {
    return (float)((rank + 1) * ((i + 7 * pass) % 1000));
}

static void fill(float *b, long n, int rank, int pass) {
    for (long i = 0; i < n; i++) b[i] = value(rank, i, pass);
}

/* Sum over ranks r of (r + 1) * k = k * n(n+1)/2, exact below 2^24. */
static long check(const float *b, long n, int ranks, int pass) {
    float f = (float)ranks * (float)(ranks + 1) / 2.0f;
    for (long i = 0; i < n; i++) {
        float want = f * (float)((i + 7 * pass) % 1000);
        if (b[i] != want) {
            fprintf(stderr, "ALLREDUCE FAIL pass %d: element %ld is %g, want %g\n", pass, i, b[i], want);
            return i + 1;
        }
    }
    return 0;
}

/* Busy CPU seconds of the whole machine: user nice system irq softirq steal. */
static double busy_cpu_secs(void) {
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return -1;
    unsigned long long v[8] = {0};
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5],
                   &v[6], &v[7]);
    fclose(f);
    if (n < 8) return -1;
    return (double)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / (double)sysconf(_SC_CLK_TCK);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    int rank, n;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &n);
    long count = argc > 1 ? atol(argv[1]) : 7400000;
    int iters = argc > 2 ? atoi(argv[2]) : 20;
    int warmup = argc > 3 ? atoi(argv[3]) : 3;
    if (count <= 0 || iters <= 0 || warmup < 0 || n * (n + 1) / 2 * 999 >= (1 << 24)) {
        if (rank == 0) fprintf(stderr, "usage: allreduce [COUNT [ITERS [WARMUP]]] (COUNT, ITERS > 0)\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    float *in = malloc(sizeof(float) * count), *out = malloc(sizeof(float) * count);
    double *t = malloc(sizeof(double) * iters), *tmax = malloc(sizeof(double) * iters);
    if (!in || !out || !t || !tmax) MPI_Abort(MPI_COMM_WORLD, 2);
    long bad = 0;

    for (int w = 0; w < warmup && !bad; w++) {
        fill(in, count, rank, w);
        memset(out, 0xff, sizeof(float) * count);
        MPI_Allreduce(in, out, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        bad = check(out, count, n, w);
    }

    int pass = warmup;
    fill(in, count, rank, pass);
    memset(out, 0xff, sizeof(float) * count);
    MPI_Barrier(MPI_COMM_WORLD);
    double cpu0 = busy_cpu_secs(), w0 = MPI_Wtime();
    for (int i = 0; i < iters; i++) {
        double a = MPI_Wtime();
        MPI_Allreduce(in, out, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        t[i] = MPI_Wtime() - a;
    }
    MPI_Barrier(MPI_COMM_WORLD);
    double wall = MPI_Wtime() - w0, cpu1 = busy_cpu_secs();
    if (!bad) bad = check(out, count, n, pass);

    long anybad = 0;
    MPI_Allreduce(&bad, &anybad, 1, MPI_LONG, MPI_MAX, MPI_COMM_WORLD);
    if (anybad) {
        if (rank == 0) fprintf(stderr, "ALLREDUCE FAIL: wrong result\n");
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    MPI_Reduce(t, tmax, iters, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
    if (rank == 0) {
        double sum = 0;
        for (int i = 0; i < iters; i++) sum += tmax[i];
        qsort(tmax, iters, sizeof(double), cmp_double);
        double med = iters % 2 ? tmax[iters / 2] : (tmax[iters / 2 - 1] + tmax[iters / 2]) / 2;
        double cpu = (cpu0 >= 0 && cpu1 >= 0) ? cpu1 - cpu0 : -1;
        printf("RESULT ranks=%d count=%ld bytes=%ld iters=%d ms_mean=%.3f ms_median=%.3f ms_min=%.3f ms_max=%.3f "
               "cpu_s=%.3f cpu_ms_per_op=%.3f wall_s=%.3f\n",
               n, count, count * (long)sizeof(float), iters, sum / iters * 1e3, med * 1e3, tmax[0] * 1e3,
               tmax[iters - 1] * 1e3, cpu, cpu / iters * 1e3, wall);
        fflush(stdout);
    }
    free(in); free(out); free(t); free(tmax);
    MPI_Finalize();
    return 0;
}
