/* C reference for the agent's `memory` bandwidth (docs/accuracy.md, "Memory bandwidth against
 * C STREAM"). STREAM-equivalent (McCalpin's stream.c, single-threaded, no OpenMP):
 *
 *   - three static double arrays of STREAM_ARRAY_SIZE elements (default 8 Mi = 64 MiB each,
 *     the agent's default array_mib = 64), initialised a = 1, b = 2, c = 0 in one loop before
 *     any timing, as STREAM does (this first touch faults every page in, interleaved; the agent
 *     does the same; the values are read at run time so that gcc cannot drop the stores to the
 *     already-zero c, as it does in stream.c, which would leave c's pages to the first Copy);
 *   - per repetition, STREAM's four kernels in STREAM's order: Copy c = a, Scale b = q*c,
 *     Add c = a + b, Triad a = b + q*c, each timed on its own with CLOCK_MONOTONIC;
 *   - the best (shortest) time of each kernel over the repetitions is reported (the agent's rule:
 *     every repetition counts, as `repeats` says);
 *   - bytes counted as STREAM counts them: Copy and Scale 2 x 8, Add and Triad 3 x 8 per
 *     element (write-allocate traffic is not counted); GB = 1e9 bytes.
 *
 * Build: gcc -O2 -o stream stream.c   (benches/stream/compare.sh does this)
 * Usage: stream [REPEATS]             (default 5, the agent's default)
 * Prints one line: copy_gb_per_s=X scale_gb_per_s=X add_gb_per_s=X triad_gb_per_s=X
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#ifndef STREAM_ARRAY_SIZE
#define STREAM_ARRAY_SIZE 8388608L
#endif
#define N STREAM_ARRAY_SIZE

static double a[N], b[N], c[N];

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    long repeats = argc > 1 ? strtol(argv[1], NULL, 10) : 5;
    if (repeats < 1 || repeats > 1000) {
        fprintf(stderr, "usage: stream [REPEATS 1..1000]\n");
        return 2;
    }
    /* Read q at run time, as the agent does (black_box), so no kernel is folded. */
    volatile double qv = 3.0, av = 1.0, bv = 2.0, cv = 0.0;
    double q = qv, a0 = av, b0 = bv, c0 = cv;
    for (long j = 0; j < N; j++) {
        a[j] = a0;
        b[j] = b0;
        c[j] = c0;
    }
    double best[4] = {1e30, 1e30, 1e30, 1e30};
    for (long k = 0; k < repeats; k++) {
        double t[5];
        t[0] = now();
        for (long j = 0; j < N; j++)
            c[j] = a[j];
        t[1] = now();
        for (long j = 0; j < N; j++)
            b[j] = q * c[j];
        t[2] = now();
        for (long j = 0; j < N; j++)
            c[j] = a[j] + b[j];
        t[3] = now();
        for (long j = 0; j < N; j++)
            a[j] = b[j] + q * c[j];
        t[4] = now();
        for (int i = 0; i < 4; i++)
            if (t[i + 1] - t[i] < best[i])
                best[i] = t[i + 1] - t[i];
    }
    /* Use the results so that no loop can be dropped. */
    double sum = a[N / 2] + b[N / 3] + c[N - 1];
    double bytes[4] = {2.0 * 8 * N, 2.0 * 8 * N, 3.0 * 8 * N, 3.0 * 8 * N};
    printf("copy_gb_per_s=%.3f scale_gb_per_s=%.3f add_gb_per_s=%.3f triad_gb_per_s=%.3f "
           "check=%g\n",
           bytes[0] / best[0] / 1e9, bytes[1] / best[1] / 1e9, bytes[2] / best[2] / 1e9,
           bytes[3] / best[3] / 1e9, sum);
    return 0;
}
