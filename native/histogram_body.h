/*
 * The kernel body, compiled once per (instruction set, value type) by native/histogram.c, which defines
 * before each inclusion:
 *   HK_ISA     token naming the variant (generic, avx2, avx512)
 *   HK_VBYTES  vector width in bytes
 *   HK_T       float or double          HK_TN   f32 or f64 (name suffix)
 *   HK_I       int32_t or int64_t (the lane type a vector compare yields)
 *   HK_TMAX    FLT_MAX or DBL_MAX       HK_IS_F64  0 or 1
 *   HK_AVX512_MASKS  1 to count through AVX-512 mask registers (needs HK_VBYTES 64)
 * Everything defined here is static and suffixed, so the inclusions do not collide. GCC/Clang vector
 * extensions keep one source for every width; the surrounding target pragma picks the instructions.
 */

#define HK_CAT3_(a, b, c) a##_##b##_##c
#define HK_CAT3(a, b, c) HK_CAT3_(a, b, c)
#define HK_N(name) HK_CAT3(name, HK_TN, HK_ISA)
#define HK_VW ((size_t)(HK_VBYTES / sizeof(HK_T)))

typedef HK_T HK_N(vt) __attribute__((vector_size(HK_VBYTES)));
typedef HK_I HK_N(vi) __attribute__((vector_size(HK_VBYTES)));

/* Unaligned vector load (one vmovups / movdqu). */
static inline __attribute__((always_inline)) HK_N(vt) HK_N(load)(const HK_T *p)
{
    HK_N(vt) v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* Compare operations; the callers pass a constant, so each inlined copy keeps one of them. */
#define HK_OP_GE 0  /* value >= threshold */
#define HK_OP_GT 1  /* value > threshold */
#define HK_OP_NAN 2 /* value is NaN (threshold unused) */
#define HK_OP_FINITE 3 /* value is finite (threshold: the largest finite value) */

static inline __attribute__((always_inline)) HK_N(vi) HK_N(test)(HK_N(vt) v, HK_N(vt) t, int op)
{
    if (op == HK_OP_GE) {
        return (HK_N(vi))(v >= t);
    }
    if (op == HK_OP_GT) {
        return (HK_N(vi))(v > t);
    }
    if (op == HK_OP_FINITE) {
        const HK_N(vi) sign = (HK_N(vi))(-(HK_N(vt)){0}); /* -0.0: only the sign bit */
        const HK_N(vi) magnitude = (HK_N(vi))v & ~sign;
        return (HK_N(vi))((HK_N(vt))magnitude <= t);
    }
    return (HK_N(vi))(v != v);
}

/* a + 1 in the lanes that pass the test. With AVX-512 the compare yields a mask register and a masked
 * subtract of -1 adds it in one instruction (the generic form costs a mask-to-vector move more). */
static inline __attribute__((always_inline)) HK_N(vi) HK_N(add_test)(HK_N(vi) a, HK_N(vt) v, HK_N(vt) t, int op)
{
#if HK_AVX512_MASKS && HK_IS_F64
    /* fpclass 0x99: quiet NaN, +inf, -inf, signalling NaN */
    const __mmask8 m = op == HK_OP_GE       ? _mm512_cmp_pd_mask((__m512d)v, (__m512d)t, _CMP_GE_OQ)
                       : op == HK_OP_GT     ? _mm512_cmp_pd_mask((__m512d)v, (__m512d)t, _CMP_GT_OQ)
                       : op == HK_OP_FINITE ? (__mmask8)~_mm512_fpclass_pd_mask((__m512d)v, 0x99)
                                            : _mm512_cmp_pd_mask((__m512d)v, (__m512d)v, _CMP_UNORD_Q);
    return (HK_N(vi))_mm512_mask_sub_epi64((__m512i)a, m, (__m512i)a, _mm512_set1_epi64(-1));
#elif HK_AVX512_MASKS
    const __mmask16 m = op == HK_OP_GE       ? _mm512_cmp_ps_mask((__m512)v, (__m512)t, _CMP_GE_OQ)
                        : op == HK_OP_GT     ? _mm512_cmp_ps_mask((__m512)v, (__m512)t, _CMP_GT_OQ)
                        : op == HK_OP_FINITE ? (__mmask16)~_mm512_fpclass_ps_mask((__m512)v, 0x99)
                                             : _mm512_cmp_ps_mask((__m512)v, (__m512)v, _CMP_UNORD_Q);
    return (HK_N(vi))_mm512_mask_sub_epi32((__m512i)a, m, (__m512i)a, _mm512_set1_epi32(-1));
#else
    return a - HK_N(test)(v, t, op);
#endif
}

/* Lane-wise count of the rows of a column block passing one test, added into ge[0 .. HK_VW). Four
 * independent accumulators hide the add latency; lane counts fit HK_I since rows <= HK_CHUNK_MAX_ROWS. */
static inline __attribute__((always_inline)) void HK_N(count_one)(const HK_T *p, size_t rows, size_t stride,
                                                                   HK_N(vt) t, int op, int64_t *ge)
{
    HK_N(vi) a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
    size_t r = 0;
    for (; r + 4 <= rows; r += 4, p += 4 * stride) {
        a0 = HK_N(add_test)(a0, HK_N(load)(p), t, op);
        a1 = HK_N(add_test)(a1, HK_N(load)(p + stride), t, op);
        a2 = HK_N(add_test)(a2, HK_N(load)(p + 2 * stride), t, op);
        a3 = HK_N(add_test)(a3, HK_N(load)(p + 3 * stride), t, op);
    }
    for (; r < rows; ++r, p += stride) {
        a0 = HK_N(add_test)(a0, HK_N(load)(p), t, op);
    }
    a0 += a1 + a2 + a3;
    for (size_t l = 0; l < HK_VW; ++l) {
        ge[l] += (int64_t)a0[l];
    }
}

/* Threshold counts of one chunk of rows. src: rows x (>= fp) values with row stride `stride`; e: k x
 * (>= fp) edges in this value type with row stride `estride` (row k-1 tested with ">", the others with
 * ">="); ge: (k + 3) x fp counts: [lowest finite, e[0] .. e[k-2], e[k-1] (strict), +inf, NaN]. */
static void HK_N(count_chunk)(const HK_T *src, size_t rows, size_t stride, const HK_T *e, size_t estride, size_t k,
                              size_t fp, int64_t *ge)
{
    const HK_N(vt) highest = (HK_N(vt)){0} + (HK_T)HK_TMAX;
    const HK_N(vt) lowest = -highest;
    const HK_N(vt) inf = (HK_N(vt)){0} + (HK_T)INFINITY;
    for (size_t b = 0; b < fp; b += HK_VW) {
        const HK_T *p = src + b;
        for (size_t i = 0; i + 1 < k; ++i) {
            HK_N(count_one)(p, rows, stride, HK_N(load)(e + i * estride + b), HK_OP_GE, ge + (i + 1) * fp + b);
        }
        HK_N(count_one)(p, rows, stride, HK_N(load)(e + (k - 1) * estride + b), HK_OP_GT, ge + k * fp + b);
        /* NaN and inf are rare: one pass finds whether this block has any; only then do the three
         * passes that tell NaN, -inf and +inf apart. Without any, every value passes ">= lowest". */
        int64_t finite[HK_VW] = {0};
        HK_N(count_one)(p, rows, stride, highest, HK_OP_FINITE, finite);
        int all_finite = 1;
        for (size_t l = 0; l < HK_VW; ++l) {
            all_finite &= finite[l] == (int64_t)rows;
        }
        if (all_finite) {
            for (size_t l = 0; l < HK_VW; ++l) {
                ge[b + l] += (int64_t)rows;
            }
        } else {
            HK_N(count_one)(p, rows, stride, lowest, HK_OP_GE, ge + b);
            HK_N(count_one)(p, rows, stride, inf, HK_OP_GE, ge + (k + 1) * fp + b);
            HK_N(count_one)(p, rows, stride, inf, HK_OP_NAN, ge + (k + 2) * fp + b);
        }
    }
}

#if HK_IS_F64
/* Nonzero when some edge is not finite or is below the edge above it in its column (edges edge-major,
 * so that edge is f positions earlier). Branch-free so that it vectorizes; NaN fails "<= DBL_MAX". */
static int HK_N(edges_bad)(const double *edges, size_t k, size_t f)
{
    const size_t total = k * f;
    int bad = 0;
    for (size_t t = 0; t < total; ++t) {
        bad |= !(fabs(edges[t]) <= DBL_MAX);
    }
    for (size_t t = f; t < total; ++t) {
        bad |= edges[t] < edges[t - f];
    }
    return bad;
}

/* Index path for one row of f values (padded to fp lanes): the number of thresholds a value passes, plus
 * k + 3 when it is NaN, indexes lut, which names its bin; the bin's count is incremented directly. */
static void HK_N(index_row)(const double *row, const double *e, size_t estride, size_t k, size_t f, size_t fp,
                            const int32_t *lut, int64_t *counts)
{
    const HK_N(vt) lowest = (HK_N(vt)){0} - (HK_T)HK_TMAX;
    const HK_N(vt) inf = (HK_N(vt)){0} + (HK_T)INFINITY;
    const HK_N(vi) nan_mark = (HK_N(vi)){0} + (HK_I)(k + 3);
    const size_t ncols = k + 3;
    for (size_t b = 0; b < fp; b += HK_VW) {
        const HK_N(vt) v = HK_N(load)(row + b);
        HK_N(vi) c = HK_N(add_test)((HK_N(vi)){0}, v, lowest, HK_OP_GE);
        for (size_t i = 0; i + 1 < k; ++i) {
            c = HK_N(add_test)(c, v, HK_N(load)(e + i * estride + b), HK_OP_GE);
        }
        c = HK_N(add_test)(c, v, HK_N(load)(e + (k - 1) * estride + b), HK_OP_GT);
        c = HK_N(add_test)(c, v, inf, HK_OP_GE);
        c += (HK_N(vi))(v != v) & nan_mark;
        const size_t lanes = f - b < HK_VW ? f - b : HK_VW;
        for (size_t l = 0; l < lanes; ++l) {
            counts[(b + l) * ncols + (size_t)lut[c[l]]] += 1;
        }
    }
}

/* The index path for a whole batch; values are float32 (is_f32) or float64. Float32 rows are widened to
 * float64, which is exact, so no per-call edge conversion is needed. */
static int HK_N(index_update)(int64_t *counts, const void *values, int is_f32, const double *edges, size_t n,
                              size_t f, size_t k)
{
    const size_t fp = (f + HK_VW - 1) / HK_VW * HK_VW;
    const int padded = fp != f;
    const int need_row = padded || is_f32;
    const size_t lut_bytes = (k + 4) * sizeof(int32_t);
    const size_t edge_bytes = padded ? k * fp * sizeof(double) : 0;
    const size_t row_bytes = need_row ? fp * sizeof(double) : 0;
    _Alignas(64) unsigned char stack_ws[4096];
    const size_t ws_bytes = lut_bytes + edge_bytes + row_bytes;
    unsigned char *ws = ws_bytes <= sizeof stack_ws ? stack_ws : malloc(ws_bytes);
    if (ws == NULL) {
        return HK_ENOMEM;
    }
    double *row_buf = (double *)ws;
    double *edge_buf = (double *)(ws + row_bytes);
    int32_t *lut = (int32_t *)(ws + row_bytes + edge_bytes);

    lut[0] = (int32_t)(k + 2); /* passes nothing and not NaN: -inf */
    for (size_t c = 1; c <= k + 1; ++c) {
        lut[c] = (int32_t)(c - 1); /* below range, the k - 1 bins, above range */
    }
    lut[k + 2] = (int32_t)(k + 2); /* passes every threshold: +inf */
    lut[k + 3] = (int32_t)(k + 1); /* NaN */

    const double *e = edges;
    size_t estride = f;
    if (padded) {
        for (size_t i = 0; i < k; ++i) {
            memcpy(edge_buf + i * fp, edges + i * f, f * sizeof(double));
            memset(edge_buf + i * fp + f, 0, (fp - f) * sizeof(double));
        }
        e = edge_buf;
        estride = fp;
    }
    if (need_row) {
        memset(row_buf + f, 0, (fp - f) * sizeof(double));
    }
    for (size_t r = 0; r < n; ++r) {
        const double *row;
        if (is_f32) {
            const float *src = (const float *)values + r * f;
            for (size_t j = 0; j < f; ++j) {
                row_buf[j] = (double)src[j];
            }
            row = row_buf;
        } else if (padded) {
            memcpy(row_buf, (const double *)values + r * f, f * sizeof(double));
            row = row_buf;
        } else {
            row = (const double *)values + r * f;
        }
        HK_N(index_row)(row, e, estride, k, f, fp, lut, counts);
    }
    if (ws != stack_ws) {
        free(ws);
    }
    return HK_OK;
}
#endif

/* The count path for a whole batch. */
static int HK_N(count_update)(int64_t *counts, const HK_T *values, const double *edges, size_t n, size_t f, size_t k)
{
    const size_t fp = (f + HK_VW - 1) / HK_VW * HK_VW;
    const int padded = fp != f;
    /* Float64 values compare with the edges as given (copied only to pad); float32 values with the
     * float32 rounding of each edge towards the side that keeps the comparison exact. */
    const int convert = !HK_IS_F64 || padded;
    size_t chunk = HK_CHUNK_BYTES / (fp * sizeof(HK_T));
    if (chunk < HK_CHUNK_MIN_ROWS) {
        chunk = HK_CHUNK_MIN_ROWS;
    }
    if (chunk > HK_CHUNK_MAX_ROWS) {
        chunk = HK_CHUNK_MAX_ROWS;
    }
    if (chunk > n) {
        chunk = n;
    }
    const size_t ge_bytes = (k + 3) * fp * sizeof(int64_t);
    const size_t edge_bytes = convert ? k * fp * sizeof(HK_T) : 0;
    const size_t scratch_bytes = padded ? chunk * fp * sizeof(HK_T) : 0;
    unsigned char *ws = calloc(1, ge_bytes + edge_bytes + scratch_bytes);
    if (ws == NULL) {
        return HK_ENOMEM;
    }
    int64_t *ge = (int64_t *)ws;
    HK_T *edge_buf = (HK_T *)(ws + ge_bytes);
    HK_T *scratch = (HK_T *)(ws + ge_bytes + edge_bytes);

    const HK_T *e = (const HK_T *)edges;
    size_t estride = f;
    if (convert) {
        for (size_t i = 0; i < k; ++i) {
            const int down = i == k - 1;
            for (size_t j = 0; j < f; ++j) {
#if HK_IS_F64
                (void)down;
                edge_buf[i * fp + j] = edges[i * f + j];
#else
                edge_buf[i * fp + j] = down ? hk_f32_round_down(edges[i * f + j]) : hk_f32_round_up(edges[i * f + j]);
#endif
            }
        }
        e = edge_buf;
        estride = fp;
    }
    for (size_t r0 = 0; r0 < n; r0 += chunk) {
        const size_t rows = n - r0 < chunk ? n - r0 : chunk;
        const HK_T *src = values + r0 * f;
        size_t stride = f;
        if (padded) {
            for (size_t r = 0; r < rows; ++r) {
                memcpy(scratch + r * fp, src + r * f, f * sizeof(HK_T));
            }
            src = scratch;
            stride = fp;
        }
        HK_N(count_chunk)(src, rows, stride, e, estride, k, fp, ge);
    }
    /* Bins are differences of threshold counts: a value passing exactly c of the k + 2 thresholds lies
     * in bin c - 1 (c = 1 .. k + 1); c = k + 2 is +inf; c = 0 is NaN or -inf. */
    const size_t ncols = k + 3;
    const int64_t total = (int64_t)n;
    for (size_t j = 0; j < f; ++j) {
        int64_t *out = counts + j * ncols;
        for (size_t c = 0; c <= k; ++c) {
            out[c] += ge[c * fp + j] - ge[(c + 1) * fp + j];
        }
        const int64_t nan = ge[(k + 2) * fp + j];
        out[k + 1] += nan;
        out[k + 2] += ge[(k + 1) * fp + j] + (total - ge[j] - nan);
    }
    free(ws);
    return HK_OK;
}

static int HK_N(update)(int path, int64_t *counts, const HK_T *values, const double *edges, size_t n, size_t f,
                        size_t k)
{
    if (path == HK_PATH_AUTO) {
        path = n < HK_INDEX_PATH_MAX_ROWS ? HK_PATH_INDEX : HK_PATH_COUNT;
    }
    if (path != HK_PATH_COUNT && path != HK_PATH_INDEX) {
        return HK_EPATH;
    }
    if (n == 0 || f == 0) {
        return HK_OK;
    }
    if (path == HK_PATH_COUNT) {
        return HK_N(count_update)(counts, values, edges, n, f, k);
    }
    return HK_CAT3(index_update, f64, HK_ISA)(counts, values, !HK_IS_F64, edges, n, f, k);
}

#undef HK_OP_GE
#undef HK_OP_GT
#undef HK_OP_NAN
#undef HK_VW
#undef HK_N
#undef HK_CAT3
#undef HK_CAT3_
