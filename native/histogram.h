/*
 * Vectorized per-feature histogram kernel: plain C, no Python headers, so it builds and runs under
 * sanitizers on its own (see native/Makefile and native/test_histogram.c).
 *
 * Layouts (all C order, trusted: callers validate before calling):
 *   values  n x f   float32 or float64, row-major (one row = one observation of every feature)
 *   edges   k x f   float64, EDGE-MAJOR (row i holds edge i of every feature), every column finite and
 *                   sorted non-decreasing, k >= 2 (repeated edges allowed)
 *   counts  f x (k + 3) int64, accumulated in place:
 *             [0]        finite values < edges[0]
 *             [1..k-1]   numpy.histogram's bins: [e[i-1], e[i]) and the last one closed [e[k-2], e[k-1]]
 *             [k]        finite values > edges[k-1]
 *             [k+1]      NaN
 *             [k+2]      +inf or -inf
 *
 * Method. For each feature the kernel counts how many values pass each of k + 2 thresholds
 * (>= lowest finite, >= e[0] .. >= e[k-2], > e[k-1], >= +inf) plus how many are NaN; every bin is a
 * difference of two such counts. Edges are edge-major so one vector compare tests a run of
 * consecutive features of a row against the same edge. Float32 values compare against the float32
 * rounding of each edge in the direction that keeps the comparison exact (the smallest float32 >= e for
 * ">=", the largest float32 <= e for ">"), so results equal a float64 comparison bit for bit.
 * Small batches take a second path that computes each value's bin index with the same compares and
 * increments it directly (no per-call threshold conversion, no threshold-count table).
 *
 * Variants. The body is compiled once per instruction set (see HK_VARIANT_*); the best one the CPU
 * runs is chosen at run time, so a portable build (no -march=native) still runs AVX2 / AVX-512 code.
 */
#ifndef SIDECAR_NATIVE_HISTOGRAM_H
#define SIDECAR_NATIVE_HISTOGRAM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define HK_OK 0
#define HK_ENOMEM 1   /* the per-call workspace could not be allocated; counts untouched */
#define HK_EVARIANT 2 /* the requested variant is not compiled in or not supported by this CPU */
#define HK_EPATH 3    /* unknown path */

/* Paths: AUTO picks by batch size; the other two force one (tests and benchmarks). */
#define HK_PATH_AUTO 0
#define HK_PATH_COUNT 1
#define HK_PATH_INDEX 2

/* Variants, in order of preference; which are compiled in depends on the compiler and target. */
#define HK_VARIANT_GENERIC 0 /* 16-byte vectors: SSE2 on x86-64, NEON on arm64, scalar otherwise */
#define HK_VARIANT_AVX2 1    /* 32-byte vectors */
#define HK_VARIANT_AVX512 2  /* 64-byte vectors, AVX-512 F/BW/DQ/VL */
#define HK_VARIANT_COUNT 3

/* Below this many rows AUTO takes the index path. */
#define HK_INDEX_PATH_MAX_ROWS 12

const char *hk_variant_name(int variant);     /* "generic", "avx2", "avx512"; NULL if out of range */
int hk_variant_supported(int variant);        /* compiled in and runnable on this CPU */
int hk_best_variant(void);                    /* the fastest supported variant */

/* Accumulate one batch into counts with the best variant and the automatic path. Returns HK_OK or
 * HK_ENOMEM (counts are then unchanged). */
int hk_update_f32(int64_t *counts, const float *values, const double *edges, size_t n, size_t f, size_t k);
int hk_update_f64(int64_t *counts, const double *values, const double *edges, size_t n, size_t f, size_t k);

/* The same with an explicit variant and path. */
int hk_update_f32_ex(int variant, int path, int64_t *counts, const float *values, const double *edges, size_t n,
                     size_t f, size_t k);
int hk_update_f64_ex(int variant, int path, int64_t *counts, const double *values, const double *edges, size_t n,
                     size_t f, size_t k);

/* Validation helper for callers: the flat index (i * f + j) of the first edge that is not finite or is
 * smaller than the edge above it in its column, or -1 when every column is finite and sorted. */
int64_t hk_first_invalid_edge(const double *edges, size_t k, size_t f);

#ifdef __cplusplus
}
#endif

#endif
