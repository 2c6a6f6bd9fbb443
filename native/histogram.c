/*
 * Per-feature histogram kernel: variants, dispatch and edge validation. See histogram.h for the
 * contract and the method, histogram_body.h for the loops.
 */
#include "histogram.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Count path chunking: about this many bytes of values per chunk, so a chunk stays in L1 while every
 * threshold sweeps it; the row bounds keep per-lane 32-bit counts far from overflow. */
#define HK_CHUNK_BYTES 32768
#define HK_CHUNK_MIN_ROWS 8
#define HK_CHUNK_MAX_ROWS 4096

/* The float32 next to r (not NaN) towards +inf (up) or -inf, by its bits: for a positive float the
 * next one up has the next larger bit pattern, for a negative one the next smaller. Inline instead of
 * nextafterf, since a batch converts k * f edges. */
static inline float hk_f32_step(float r, int up)
{
    uint32_t bits;
    memcpy(&bits, &r, sizeof bits);
    if ((bits & 0x7fffffffu) == 0) {
        bits = up ? 0x00000001u : 0x80000001u; /* from +-0 to the smallest subnormal */
    } else if ((bits >> 31) == 0) {
        bits = up ? bits + 1 : bits - 1;
    } else {
        bits = up ? bits - 1 : bits + 1;
    }
    memcpy(&r, &bits, sizeof r);
    return r;
}

/* The smallest float32 >= d (d finite): a float32 value v satisfies v >= d exactly when v >= the result.
 * (float)d rounds to nearest, possibly to -inf below -FLT_MAX, whose step up is -FLT_MAX. */
static float hk_f32_round_up(double d)
{
    const float r = (float)d;
    return (double)r < d ? hk_f32_step(r, 1) : r;
}

/* The largest float32 <= d (d finite): a float32 value v satisfies v > d exactly when v > the result. */
static float hk_f32_round_down(double d)
{
    const float r = (float)d;
    return (double)r > d ? hk_f32_step(r, 0) : r;
}

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#define HK_HAVE_X86_VARIANTS 1
#include <immintrin.h>
#else
#define HK_HAVE_X86_VARIANTS 0
#endif
#define HK_AVX512_MASKS 0

/* ---- generic: 16-byte vectors, the compiler's baseline instruction set ---- */
#define HK_ISA generic
#define HK_VBYTES 16
#define HK_T double
#define HK_TN f64
#define HK_I int64_t
#define HK_TMAX DBL_MAX
#define HK_IS_F64 1
#include "histogram_body.h"
#undef HK_T
#undef HK_TN
#undef HK_I
#undef HK_TMAX
#undef HK_IS_F64
#define HK_T float
#define HK_TN f32
#define HK_I int32_t
#define HK_TMAX FLT_MAX
#define HK_IS_F64 0
#include "histogram_body.h"
#undef HK_T
#undef HK_TN
#undef HK_I
#undef HK_TMAX
#undef HK_IS_F64
#undef HK_ISA
#undef HK_VBYTES

#if HK_HAVE_X86_VARIANTS
/* ---- avx2: 32-byte vectors ---- */
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2")
#endif
#define HK_ISA avx2
#define HK_VBYTES 32
#define HK_T double
#define HK_TN f64
#define HK_I int64_t
#define HK_TMAX DBL_MAX
#define HK_IS_F64 1
#include "histogram_body.h"
#undef HK_T
#undef HK_TN
#undef HK_I
#undef HK_TMAX
#undef HK_IS_F64
#define HK_T float
#define HK_TN f32
#define HK_I int32_t
#define HK_TMAX FLT_MAX
#define HK_IS_F64 0
#include "histogram_body.h"
#undef HK_T
#undef HK_TN
#undef HK_I
#undef HK_TMAX
#undef HK_IS_F64
#undef HK_ISA
#undef HK_VBYTES
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

/* ---- avx512: 64-byte vectors ---- */
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl")
#endif
#undef HK_AVX512_MASKS
#define HK_AVX512_MASKS 1
#define HK_ISA avx512
#define HK_VBYTES 64
#define HK_T double
#define HK_TN f64
#define HK_I int64_t
#define HK_TMAX DBL_MAX
#define HK_IS_F64 1
#include "histogram_body.h"
#undef HK_T
#undef HK_TN
#undef HK_I
#undef HK_TMAX
#undef HK_IS_F64
#define HK_T float
#define HK_TN f32
#define HK_I int32_t
#define HK_TMAX FLT_MAX
#define HK_IS_F64 0
#include "histogram_body.h"
#undef HK_T
#undef HK_TN
#undef HK_I
#undef HK_TMAX
#undef HK_IS_F64
#undef HK_ISA
#undef HK_VBYTES
#undef HK_AVX512_MASKS
#define HK_AVX512_MASKS 0
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif /* HK_HAVE_X86_VARIANTS */

typedef int (*hk_f32_fn)(int, int64_t *, const float *, const double *, size_t, size_t, size_t);
typedef int (*hk_f64_fn)(int, int64_t *, const double *, const double *, size_t, size_t, size_t);

static const char *const hk_names[HK_VARIANT_COUNT] = {"generic", "avx2", "avx512"};

static const hk_f32_fn hk_f32_fns[HK_VARIANT_COUNT] = {
    update_f32_generic,
#if HK_HAVE_X86_VARIANTS
    update_f32_avx2,
    update_f32_avx512,
#else
    NULL,
    NULL,
#endif
};

static const hk_f64_fn hk_f64_fns[HK_VARIANT_COUNT] = {
    update_f64_generic,
#if HK_HAVE_X86_VARIANTS
    update_f64_avx2,
    update_f64_avx512,
#else
    NULL,
    NULL,
#endif
};

const char *hk_variant_name(int variant)
{
    return variant >= 0 && variant < HK_VARIANT_COUNT ? hk_names[variant] : NULL;
}

int hk_variant_supported(int variant)
{
    if (variant < 0 || variant >= HK_VARIANT_COUNT || hk_f32_fns[variant] == NULL) {
        return 0;
    }
#if HK_HAVE_X86_VARIANTS
    if (variant == HK_VARIANT_AVX2) {
        return __builtin_cpu_supports("avx2");
    }
    if (variant == HK_VARIANT_AVX512) {
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    }
#endif
    return 1;
}

int hk_best_variant(void)
{
    for (int v = HK_VARIANT_COUNT - 1; v > 0; --v) {
        if (hk_variant_supported(v)) {
            return v;
        }
    }
    return HK_VARIANT_GENERIC;
}

int hk_update_f32_ex(int variant, int path, int64_t *counts, const float *values, const double *edges, size_t n,
                     size_t f, size_t k)
{
    if (!hk_variant_supported(variant)) {
        return HK_EVARIANT;
    }
    return hk_f32_fns[variant](path, counts, values, edges, n, f, k);
}

int hk_update_f64_ex(int variant, int path, int64_t *counts, const double *values, const double *edges, size_t n,
                     size_t f, size_t k)
{
    if (!hk_variant_supported(variant)) {
        return HK_EVARIANT;
    }
    return hk_f64_fns[variant](path, counts, values, edges, n, f, k);
}

int hk_update_f32(int64_t *counts, const float *values, const double *edges, size_t n, size_t f, size_t k)
{
    return hk_f32_fns[hk_best_variant()](HK_PATH_AUTO, counts, values, edges, n, f, k);
}

int hk_update_f64(int64_t *counts, const double *values, const double *edges, size_t n, size_t f, size_t k)
{
    return hk_f64_fns[hk_best_variant()](HK_PATH_AUTO, counts, values, edges, n, f, k);
}

typedef int (*hk_scan_fn)(const double *, size_t, size_t);

static const hk_scan_fn hk_scan_fns[HK_VARIANT_COUNT] = {
    edges_bad_f64_generic,
#if HK_HAVE_X86_VARIANTS
    edges_bad_f64_avx2,
    edges_bad_f64_avx512,
#else
    NULL,
    NULL,
#endif
};

int64_t hk_first_invalid_edge(const double *edges, size_t k, size_t f)
{
    /* Every call of the Python API runs this: a vectorized yes/no scan first, then a search for the
     * position only when something is wrong. */
    if (!hk_scan_fns[hk_best_variant()](edges, k, f)) {
        return -1;
    }
    for (size_t i = 0; i < k; ++i) {
        for (size_t j = 0; j < f; ++j) {
            const double e = edges[i * f + j];
            if (!(e >= -DBL_MAX && e <= DBL_MAX) || (i > 0 && !(e >= edges[(i - 1) * f + j]))) {
                return (int64_t)(i * f + j);
            }
        }
    }
    return -1;
}
