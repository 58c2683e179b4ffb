/* switch.c - what a hand-off between two processes costs on this machine:
 * a parent and a child ping-pong a word in shared memory, each polling
 * with sched_yield, the child pinned to the parent's CPU (argument 0:
 * every hand-off is a context switch) or to the other (1: a cross-CPU
 * hand-off to a polling process).
 *   gcc -O2 -D_GNU_SOURCE switch.c -o switch && ./switch 0 && ./switch 1 */
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void pin(int cpu) {
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    if (sched_setaffinity(0, sizeof s, &s)) { perror("sched_setaffinity"); exit(1); }
}

int main(int argc, char **argv) {
    int other = argc > 1 ? atoi(argv[1]) : 0;
    const long n = 200000;
    _Atomic long *turn = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (turn == MAP_FAILED) { perror("mmap"); return 1; }
    if (fork() == 0) {
        pin(other);
        for (long i = 0; i < n; i++) {
            while (atomic_load(turn) != 2 * i + 1) sched_yield();
            atomic_store(turn, 2 * i + 2);
        }
        _exit(0);
    }
    pin(0);
    usleep(10000);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) {
        atomic_store(turn, 2 * i + 1);
        while (atomic_load(turn) != 2 * i + 2) sched_yield();
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    wait(0);
    double us = ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / 1e3 / n;
    printf("child on CPU %d: %.3f us per round trip (%.3f per hand-off)\n", other, us, us / 2);
    return 0;
}
