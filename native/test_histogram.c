/*
 * Test driver for the histogram kernel, built without Python (and, by `make -C native sanitize`, with
 * AddressSanitizer and UndefinedBehaviorSanitizer). Every supported variant and both paths are checked
 * against a reference written straight from the bin definitions, on random batches full of the hard
 * cases: values exactly on edges, float32 neighbours of float64 edges, repeated edges, NaN, +-inf,
 * values near the float32 range limits, feature counts that are not a multiple of any vector width.
 * Inputs live in exactly-sized heap blocks so any read past them is reported by the sanitizer.
 * Exit status 0 when everything matches; the first mismatch is printed.
 */
#include "histogram.h"

#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint64_t rng_next(void)
{
    /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1Dull;
}

static double rng_unit(void)
{
    return (double)(rng_next() >> 11) * (1.0 / 9007199254740992.0);
}

static size_t rng_below(size_t n)
{
    return (size_t)(rng_next() % n);
}

/* The bin of one value, from the definitions in histogram.h: exactly one category must claim it. */
static size_t reference_bin(double v, const double *edges, size_t k, size_t f, size_t j)
{
    if (isnan(v)) {
        return k + 1;
    }
    if (isinf(v)) {
        return k + 2;
    }
    const double first = edges[j];
    const double last = edges[(k - 1) * f + j];
    size_t found = 0;
    size_t bin = 0;
    if (v < first) {
        found++;
        bin = 0;
    }
    if (v > last) {
        found++;
        bin = k;
    }
    for (size_t i = 1; i < k; ++i) {
        const double lo = edges[(i - 1) * f + j];
        const double hi = edges[i * f + j];
        const int inside = i < k - 1 ? (lo <= v && v < hi) : (lo <= v && v <= hi);
        if (inside) {
            found++;
            bin = i;
        }
    }
    if (found != 1) {
        fprintf(stderr, "reference: value %.17g claimed by %zu bins\n", v, found);
        exit(2);
    }
    return bin;
}

/* A value for feature j that is likely to land on or next to an edge. */
static double tricky_value(const double *edges, size_t k, size_t f, size_t j, int f32)
{
    const double e = edges[rng_below(k) * f + j];
    switch (rng_below(12)) {
    case 0:
        return NAN;
    case 1:
        return INFINITY;
    case 2:
        return -INFINITY;
    case 3:
        return e;
    case 4:
        return f32 ? (double)nextafterf((float)e, INFINITY) : nextafter(e, INFINITY);
    case 5:
        return f32 ? (double)nextafterf((float)e, -INFINITY) : nextafter(e, -INFINITY);
    case 6:
        return (double)(float)e;
    case 7:
        return f32 ? (rng_below(2) ? FLT_MAX : -FLT_MAX) : (rng_below(2) ? DBL_MAX : -DBL_MAX);
    default: {
        const double lo = edges[j];
        const double hi = edges[(k - 1) * f + j];
        const double span = hi - lo + 1.0;
        return lo - 0.25 * span + 1.5 * span * rng_unit();
    }
    }
}

/* Random sorted edges per feature, with repeats, float32-unrepresentable values and extremes. */
static void make_edges(double *edges, size_t k, size_t f)
{
    for (size_t j = 0; j < f; ++j) {
        const int style = (int)rng_below(7);
        double x = (rng_unit() - 0.5) * 200.0;
        for (size_t i = 0; i < k; ++i) {
            double e;
            if (style == 0) {
                e = (double)i; /* integers: exact in float32 */
            } else if (style == 1 && i > 0 && rng_below(3) == 0) {
                e = edges[(i - 1) * f + j]; /* repeated edge */
            } else if (style == 2) {
                e = x + (double)i * 1e-9; /* edges closer than float32 can tell apart */
            } else if (style == 3) {
                /* straddle the float32 range limit */
                e = (i == 0) ? -3.5e38 : (i == k - 1) ? 3.5e38 : (double)i * 1e37;
            } else if (style == 4) {
                /* around zero, below the smallest float32 subnormal */
                static const double tiny[] = {-1e-30, -1e-300, -0.0, 0.0, 1e-300, 1e-46, 1.4e-45, 1e-40, 1e-38};
                e = tiny[rng_below(sizeof tiny / sizeof tiny[0])];
            } else {
                x += rng_unit() * 10.0 + 0.1 / 3.0;
                e = x;
            }
            if (i > 0 && e < edges[(i - 1) * f + j]) {
                e = edges[(i - 1) * f + j];
            }
            edges[i * f + j] = e;
        }
    }
}

static int failures = 0;

static void compare(const char *what, int variant, int path, const int64_t *got, const int64_t *want, size_t n,
                    size_t f, size_t k)
{
    if (memcmp(got, want, f * (k + 3) * sizeof(int64_t)) == 0) {
        return;
    }
    for (size_t j = 0; j < f; ++j) {
        for (size_t c = 0; c < k + 3; ++c) {
            if (got[j * (k + 3) + c] != want[j * (k + 3) + c]) {
                fprintf(stderr, "MISMATCH %s variant=%s path=%d n=%zu f=%zu k=%zu: feature %zu bin %zu: got %" PRId64
                        " want %" PRId64 "\n", what, hk_variant_name(variant), path, n, f, k, j, c,
                        got[j * (k + 3) + c], want[j * (k + 3) + c]);
                failures++;
                return;
            }
        }
    }
}

static void run_case(size_t n, size_t f, size_t k)
{
    double *edges = malloc(k * f * sizeof(double));
    double *v64 = malloc((n ? n : 1) * f * sizeof(double));
    float *v32 = malloc((n ? n : 1) * f * sizeof(float));
    int64_t *want64 = calloc(f * (k + 3), sizeof(int64_t));
    int64_t *want32 = calloc(f * (k + 3), sizeof(int64_t));
    int64_t *got = malloc(f * (k + 3) * sizeof(int64_t));
    if (!edges || !v64 || !v32 || !want64 || !want32 || !got) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    make_edges(edges, k, f);
    if (hk_first_invalid_edge(edges, k, f) != -1) {
        fprintf(stderr, "generated edges rejected\n");
        exit(2);
    }
    for (size_t r = 0; r < n; ++r) {
        for (size_t j = 0; j < f; ++j) {
            v64[r * f + j] = tricky_value(edges, k, f, j, 0);
            v32[r * f + j] = (float)tricky_value(edges, k, f, j, 1);
            if (j % 3 == 0) {
                /* every third feature without NaN or inf: the kernel skips their passes */
                if (!isfinite(v64[r * f + j])) {
                    v64[r * f + j] = edges[j];
                }
                if (!isfinite(v32[r * f + j])) {
                    v32[r * f + j] = (float)edges[j];
                }
            }
            want64[j * (k + 3) + reference_bin(v64[r * f + j], edges, k, f, j)]++;
            want32[j * (k + 3) + reference_bin((double)v32[r * f + j], edges, k, f, j)]++;
        }
    }
    for (int variant = 0; variant < HK_VARIANT_COUNT; ++variant) {
        if (!hk_variant_supported(variant)) {
            continue;
        }
        for (int path = HK_PATH_AUTO; path <= HK_PATH_INDEX; ++path) {
            /* counts accumulate: start from a non-zero state and subtract it afterwards */
            for (size_t c = 0; c < f * (k + 3); ++c) {
                got[c] = (int64_t)c;
            }
            if (hk_update_f64_ex(variant, path, got, v64, edges, n, f, k) != HK_OK) {
                fprintf(stderr, "update_f64 failed\n");
                exit(2);
            }
            for (size_t c = 0; c < f * (k + 3); ++c) {
                got[c] -= (int64_t)c;
            }
            compare("f64", variant, path, got, want64, n, f, k);
            memset(got, 0, f * (k + 3) * sizeof(int64_t));
            if (hk_update_f32_ex(variant, path, got, v32, edges, n, f, k) != HK_OK) {
                fprintf(stderr, "update_f32 failed\n");
                exit(2);
            }
            compare("f32", variant, path, got, want32, n, f, k);
        }
    }
    free(edges);
    free(v64);
    free(v32);
    free(want64);
    free(want32);
    free(got);
}

static void test_invalid_edges(void)
{
    double e[6] = {0.0, 1.0, 1.0, 2.0, 3.0, 2.0}; /* k=3, f=2: columns 0, 1, 3 and 1, 2, 2 */
    if (hk_first_invalid_edge(e, 3, 2) != -1) {
        fprintf(stderr, "valid edges rejected\n");
        failures++;
    }
    e[5] = 1.5; /* column 1: 1.0, 2.0, 1.5 */
    if (hk_first_invalid_edge(e, 3, 2) != 5) {
        fprintf(stderr, "unsorted edge not found\n");
        failures++;
    }
    e[5] = 2.0;
    e[2] = NAN;
    if (hk_first_invalid_edge(e, 3, 2) != 2) {
        fprintf(stderr, "NaN edge not found\n");
        failures++;
    }
    e[2] = 1.0;
    e[0] = -INFINITY;
    if (hk_first_invalid_edge(e, 3, 2) != 0) {
        fprintf(stderr, "infinite edge not found\n");
        failures++;
    }
}

static void test_bad_arguments(void)
{
    int64_t counts[5] = {0};
    const double edges[2] = {0.0, 1.0};
    const double v = 0.5;
    if (hk_update_f64_ex(HK_VARIANT_COUNT, HK_PATH_AUTO, counts, &v, edges, 1, 1, 2) != HK_EVARIANT ||
        hk_update_f64_ex(-1, HK_PATH_AUTO, counts, &v, edges, 1, 1, 2) != HK_EVARIANT ||
        hk_update_f64_ex(HK_VARIANT_GENERIC, 7, counts, &v, edges, 1, 1, 2) != HK_EPATH) {
        fprintf(stderr, "bad variant or path accepted\n");
        failures++;
    }
    if (hk_update_f64(counts, &v, edges, 1, 1, 2) != HK_OK || counts[1] != 1) {
        fprintf(stderr, "default entry point failed\n");
        failures++;
    }
}

int main(void)
{
    static const size_t ns[] = {0, 1, 2, 3, 5, 11, 12, 13, 64, 333, 5000};
    static const size_t fs[] = {1, 2, 3, 7, 8, 9, 16, 17, 31, 64, 70};
    static const size_t ks[] = {2, 3, 10, 33};
    test_invalid_edges();
    test_bad_arguments();
    size_t cases = 0;
    for (size_t a = 0; a < sizeof ns / sizeof ns[0]; ++a) {
        for (size_t b = 0; b < sizeof fs / sizeof fs[0]; ++b) {
            for (size_t c = 0; c < sizeof ks / sizeof ks[0]; ++c) {
                if (ns[a] * fs[b] > 100000) {
                    continue; /* keep the sanitizer run short */
                }
                run_case(ns[a], fs[b], ks[c]);
                cases++;
            }
        }
    }
    printf("variants:");
    for (int v = 0; v < HK_VARIANT_COUNT; ++v) {
        printf(" %s%s", hk_variant_name(v), hk_variant_supported(v) ? "" : "(unsupported)");
    }
    printf("; best: %s; %zu cases; %d failures\n", hk_variant_name(hk_best_variant()), cases, failures);
    return failures == 0 ? 0 : 1;
}
