/* GEMM over Z_(2^64): C = A @ B mod 2^64.  Contract in ring.h.
 *
 * Structure (Goto / BLIS): for each NC-column block of B and KC-deep slice,
 * pack B into NR-wide slivers; for each MC-row block of A pack A into
 * MR-tall slivers; then an MR x NR register-blocked micro-kernel walks the
 * packed slivers.  Packing zero-pads the edges, so micro-kernels only ever
 * see full MR x NR tiles; partial tiles of C go through a small buffer.
 *
 * Three micro-kernels, chosen once at run time (see choose_kernel):
 *   scalar  portable C, one 64-bit imul per multiply-add.
 *   avx2    4 lanes; AVX2 has no 64-bit lane multiply, so a*b mod 2^64 is
 *           lo(a)lo(b) + ((lo(a)hi(b) + hi(a)lo(b)) << 32): lo*lo with
 *           vpmuludq (32x32->64), the cross term with one 32-bit vpmulld.
 *           They go to separate accumulators and the shift happens once
 *           per tile: only the low 32 bits of the cross sum survive the
 *           shift, and those are exact mod 2^32 however many terms wrapped
 *           before.
 *   avx512  8 lanes with the native 64-bit vpmullq (AVX-512DQ).
 * All three are exact in the ring, so they agree bit for bit.
 */
#include "ring.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define SMPC_X86 1
#endif

typedef void (*ukr_fn)(size_t kc, const uint64_t *ap, const uint64_t *bp,
                       uint64_t *c, size_t ldc, int accumulate);

/* The micro-kernel on rows of A in place: A[i, p] at a[i * lda + p]. */
typedef void (*ukr_direct_fn)(size_t kc, const uint64_t *a, size_t lda, const uint64_t *bp,
                              uint64_t *c, size_t ldc, int accumulate);

typedef struct {
    const char *name;
    size_t mr, nr;       /* register tile */
    size_t mc, kc, nc;   /* cache blocks: mc % mr == 0, nc % nr == 0 */
    ukr_fn ukr;
    ukr_direct_fn ukr_direct;  /* NULL: A is always packed */
} gemm_impl;

/* A block (MC x KC, 192 KiB) stays in a Zen/Skylake 512 KiB+ L2, a B sliver
 * (KC x NR) in L1, and the packed B block (KC x NC, 1.9 MiB) in L3. */
#define SMPC_KC 256
#define SMPC_MC 96
#define SMPC_NC 960
#define SMPC_MAX_TILE 128  /* >= mr * nr of every kernel */
#define SMPC_DIRECT_A_MAX_N 64  /* C at most this wide: A is read in place (gemm_serial) */

/* Below this many multiply-adds (~100^3) run on the calling thread: waking
 * a second thread saved only ~20% at 64^3 on the dev box, and when the
 * other core is busy a barrier can stall for a whole scheduler slice. */
#define SMPC_PARALLEL_MACS ((size_t)1 << 20)

/* ---- micro-kernels ------------------------------------------------------ */

/* Scalar 4x4.  Written out so that GCC keeps the 16 accumulators and
 * operands in general registers; vectorizing would be a loss (SSE2 has no
 * 64-bit multiply), hence the optimize attribute. */
__attribute__((optimize("no-tree-vectorize")))
static void ukr_scalar(size_t kc, const uint64_t *ap, const uint64_t *bp,
                       uint64_t *c, size_t ldc, int accumulate)
{
    uint64_t c00 = 0, c01 = 0, c02 = 0, c03 = 0;
    uint64_t c10 = 0, c11 = 0, c12 = 0, c13 = 0;
    uint64_t c20 = 0, c21 = 0, c22 = 0, c23 = 0;
    uint64_t c30 = 0, c31 = 0, c32 = 0, c33 = 0;
    for (size_t p = 0; p < kc; p++) {
        uint64_t a0 = ap[0], a1 = ap[1], a2 = ap[2], a3 = ap[3];
        uint64_t b0 = bp[0], b1 = bp[1], b2 = bp[2], b3 = bp[3];
        c00 += a0 * b0; c01 += a0 * b1; c02 += a0 * b2; c03 += a0 * b3;
        c10 += a1 * b0; c11 += a1 * b1; c12 += a1 * b2; c13 += a1 * b3;
        c20 += a2 * b0; c21 += a2 * b1; c22 += a2 * b2; c23 += a2 * b3;
        c30 += a3 * b0; c31 += a3 * b1; c32 += a3 * b2; c33 += a3 * b3;
        ap += 4;
        bp += 4;
    }
    uint64_t *r0 = c, *r1 = c + ldc, *r2 = c + 2 * ldc, *r3 = c + 3 * ldc;
    if (accumulate) {
        r0[0] += c00; r0[1] += c01; r0[2] += c02; r0[3] += c03;
        r1[0] += c10; r1[1] += c11; r1[2] += c12; r1[3] += c13;
        r2[0] += c20; r2[1] += c21; r2[2] += c22; r2[3] += c23;
        r3[0] += c30; r3[1] += c31; r3[2] += c32; r3[3] += c33;
    } else {
        r0[0] = c00; r0[1] = c01; r0[2] = c02; r0[3] = c03;
        r1[0] = c10; r1[1] = c11; r1[2] = c12; r1[3] = c13;
        r2[0] = c20; r2[1] = c21; r2[2] = c22; r2[3] = c23;
        r3[0] = c30; r3[1] = c31; r3[2] = c32; r3[3] = c33;
    }
}

#ifdef SMPC_X86

/* AVX2 4x4: one ymm of B per k step, four broadcast A values.  Only the
 * low 32 bits of the cross term lo(a)hi(b) + hi(a)lo(b) survive the final
 * shift, so it is one 32-bit-lane vpmulld of a broadcast [lo(a), hi(a)]
 * by B with its halves swapped, [hi(b), lo(b)], summed per half with
 * vpaddd (mod 2^32, exact) and folded once per tile: per k step 4
 * vpmuludq + 4 vpmulld for 16 multiply-adds, where the three-vpmuludq form
 * (with its shifts) took 12 multiplies and 5 shifts. */
/* The body, for A at ap[i * rs + p * cs]: packed slivers (rs = 1, cs = 4)
 * or rows of A read in place (rs = lda, cs = 1; see gemm_serial). */
__attribute__((target("avx2"), always_inline))
static inline void ukr_avx2_body(size_t kc, const uint64_t *ap, size_t rs, size_t cs,
                                 const uint64_t *bp, uint64_t *c, size_t ldc, int accumulate)
{
    const uint64_t *a0p = ap, *a1p = ap + rs, *a2p = ap + 2 * rs, *a3p = ap + 3 * rs;
    __m256i lo0 = _mm256_setzero_si256(), lo1 = lo0, lo2 = lo0, lo3 = lo0;
    __m256i x0 = lo0, x1 = lo0, x2 = lo0, x3 = lo0;
    for (size_t p = 0; p < kc; p++) {
        __m256i b = _mm256_load_si256((const __m256i *)bp);
        __m256i bs = _mm256_shuffle_epi32(b, 0xB1);  /* swap the 32-bit halves */
        __m256i a;
        a = _mm256_set1_epi64x((long long)*a0p);
        lo0 = _mm256_add_epi64(lo0, _mm256_mul_epu32(a, b));
        x0 = _mm256_add_epi32(x0, _mm256_mullo_epi32(a, bs));
        a = _mm256_set1_epi64x((long long)*a1p);
        lo1 = _mm256_add_epi64(lo1, _mm256_mul_epu32(a, b));
        x1 = _mm256_add_epi32(x1, _mm256_mullo_epi32(a, bs));
        a = _mm256_set1_epi64x((long long)*a2p);
        lo2 = _mm256_add_epi64(lo2, _mm256_mul_epu32(a, b));
        x2 = _mm256_add_epi32(x2, _mm256_mullo_epi32(a, bs));
        a = _mm256_set1_epi64x((long long)*a3p);
        lo3 = _mm256_add_epi64(lo3, _mm256_mul_epu32(a, b));
        x3 = _mm256_add_epi32(x3, _mm256_mullo_epi32(a, bs));
        a0p += cs;
        a1p += cs;
        a2p += cs;
        a3p += cs;
        bp += 4;
    }
    /* cross = low half + high half of x (mod 2^32, the shift drops the rest). */
    __m256i r[4];
    r[0] = _mm256_add_epi64(lo0, _mm256_slli_epi64(_mm256_add_epi32(x0, _mm256_srli_epi64(x0, 32)), 32));
    r[1] = _mm256_add_epi64(lo1, _mm256_slli_epi64(_mm256_add_epi32(x1, _mm256_srli_epi64(x1, 32)), 32));
    r[2] = _mm256_add_epi64(lo2, _mm256_slli_epi64(_mm256_add_epi32(x2, _mm256_srli_epi64(x2, 32)), 32));
    r[3] = _mm256_add_epi64(lo3, _mm256_slli_epi64(_mm256_add_epi32(x3, _mm256_srli_epi64(x3, 32)), 32));
    for (int i = 0; i < 4; i++) {
        __m256i *dst = (__m256i *)(c + (size_t)i * ldc);
        if (accumulate)
            r[i] = _mm256_add_epi64(r[i], _mm256_loadu_si256(dst));
        _mm256_storeu_si256(dst, r[i]);
    }
}

__attribute__((target("avx2")))
static void ukr_avx2(size_t kc, const uint64_t *ap, const uint64_t *bp,
                     uint64_t *c, size_t ldc, int accumulate)
{
    ukr_avx2_body(kc, ap, 1, 4, bp, c, ldc, accumulate);
}

__attribute__((target("avx2")))
static void ukr_avx2_direct(size_t kc, const uint64_t *a, size_t lda, const uint64_t *bp,
                            uint64_t *c, size_t ldc, int accumulate)
{
    ukr_avx2_body(kc, a, lda, 1, bp, c, ldc, accumulate);
}

/* AVX-512 8x16: two zmm of B per k step, 16 accumulators to cover
 * vpmullq's long latency. */
__attribute__((target("avx512f,avx512dq")))
static void ukr_avx512(size_t kc, const uint64_t *ap, const uint64_t *bp,
                       uint64_t *c, size_t ldc, int accumulate)
{
    __m512i acc[8][2];
    for (int i = 0; i < 8; i++) {
        acc[i][0] = _mm512_setzero_si512();
        acc[i][1] = _mm512_setzero_si512();
    }
    for (size_t p = 0; p < kc; p++) {
        __m512i b0 = _mm512_load_si512((const void *)bp);
        __m512i b1 = _mm512_load_si512((const void *)(bp + 8));
        for (int i = 0; i < 8; i++) {
            __m512i a = _mm512_set1_epi64((long long)ap[i]);
            acc[i][0] = _mm512_add_epi64(acc[i][0], _mm512_mullo_epi64(a, b0));
            acc[i][1] = _mm512_add_epi64(acc[i][1], _mm512_mullo_epi64(a, b1));
        }
        ap += 8;
        bp += 16;
    }
    for (int i = 0; i < 8; i++) {
        uint64_t *dst = c + (size_t)i * ldc;
        __m512i r0 = acc[i][0], r1 = acc[i][1];
        if (accumulate) {
            r0 = _mm512_add_epi64(r0, _mm512_loadu_si512((const void *)dst));
            r1 = _mm512_add_epi64(r1, _mm512_loadu_si512((const void *)(dst + 8)));
        }
        _mm512_storeu_si512((void *)dst, r0);
        _mm512_storeu_si512((void *)(dst + 8), r1);
    }
}

#endif /* SMPC_X86 */

static const gemm_impl IMPL_SCALAR = {"scalar", 4, 4, SMPC_MC, SMPC_KC, SMPC_NC, ukr_scalar, NULL};
#ifdef SMPC_X86
static const gemm_impl IMPL_AVX2 = {"avx2", 4, 4, SMPC_MC, SMPC_KC, SMPC_NC, ukr_avx2, ukr_avx2_direct};
static const gemm_impl IMPL_AVX512 = {"avx512", 8, 16, SMPC_MC, SMPC_KC, SMPC_NC, ukr_avx512, NULL};
#endif

/* ---- packing ------------------------------------------------------------ */

/* ap[s*kc*mr + p*mr + i] = A[s*mr + i, p], zero past row mc. */
static void pack_a(uint64_t *ap, const uint64_t *a, size_t lda,
                   size_t mc, size_t kc, size_t mr)
{
    for (size_t i0 = 0; i0 < mc; i0 += mr) {
        size_t rows = mc - i0 < mr ? mc - i0 : mr;
        const uint64_t *src = a + i0 * lda;
        for (size_t p = 0; p < kc; p++) {
            size_t i = 0;
            for (; i < rows; i++)
                ap[i] = src[i * lda + p];
            for (; i < mr; i++)
                ap[i] = 0;
            ap += mr;
        }
    }
}

/* bp[s*kc*nr + p*nr + j] = B[p, s*nr + j], zero past column nc. */
static void pack_b(uint64_t *bp, const uint64_t *b, size_t ldb,
                   size_t kc, size_t nc, size_t nr)
{
    for (size_t j0 = 0; j0 < nc; j0 += nr) {
        size_t cols = nc - j0 < nr ? nc - j0 : nr;
        const uint64_t *src = b + j0;
        for (size_t p = 0; p < kc; p++) {
            size_t j = 0;
            for (; j < cols; j++)
                bp[j] = src[p * ldb + j];
            for (; j < nr; j++)
                bp[j] = 0;
            bp += nr;
        }
    }
}

/* ---- blocked product on one thread -------------------------------------- */

static size_t round_up(size_t x, size_t to) { return (x + to - 1) / to * to; }

static int gemm_serial(const gemm_impl *im, uint64_t *c, size_t ldc,
                       const uint64_t *a, size_t lda,
                       const uint64_t *b, size_t ldb,
                       size_t m, size_t n, size_t k)
{
    const size_t mr = im->mr, nr = im->nr;
    const size_t mcb = im->mc, kcb = im->kc, ncb = im->nc;
    size_t kmax = k < kcb ? k : kcb;
    size_t a_elems = round_up(m < mcb ? m : mcb, mr) * kmax;
    size_t b_elems = round_up(n < ncb ? n : ncb, nr) * kmax;
    /* 64-byte alignment for aligned vector loads of packed B. */
    uint64_t *ap = aligned_alloc(64, round_up(a_elems * sizeof(uint64_t), 64));
    uint64_t *bp = aligned_alloc(64, round_up(b_elems * sizeof(uint64_t), 64));
    if (!ap || !bp) {
        free(ap);
        free(bp);
        return -1;
    }
    uint64_t tile[SMPC_MAX_TILE];
    /* A narrow C (ResNet-20's 16-64 output channels) uses each packed A
     * element for only n multiply-adds, so packing A cost about as much as
     * the products: read its rows in place instead (4 rows x KC, 8 KiB,
     * stay in L1 across B's few slivers).  Partial row tiles, which the
     * kernel would read past, are packed (zero-padded) as before. */
    const int direct = im->ukr_direct != NULL && n <= SMPC_DIRECT_A_MAX_N;

    for (size_t jc = 0; jc < n; jc += ncb) {
        size_t nc = n - jc < ncb ? n - jc : ncb;
        for (size_t pc = 0; pc < k; pc += kcb) {
            size_t kc = k - pc < kcb ? k - pc : kcb;
            int accumulate = pc > 0;  /* the first slice overwrites C */
            pack_b(bp, b + pc * ldb + jc, ldb, kc, nc, nr);
            for (size_t ic = 0; ic < m; ic += mcb) {
                size_t mc = m - ic < mcb ? m - ic : mcb;
                size_t full = direct ? mc / mr * mr : 0;  /* rows read in place */
                if (mc > full)
                    pack_a(ap + full * kc, a + (ic + full) * lda + pc, lda, mc - full, kc, mr);
                for (size_t jr = 0; jr < nc; jr += nr) {
                    size_t cols = nc - jr < nr ? nc - jr : nr;
                    const uint64_t *bs = bp + jr * kc;
                    for (size_t ir = 0; ir < mc; ir += mr) {
                        size_t rows = mc - ir < mr ? mc - ir : mr;
                        const uint64_t *as = ap + ir * kc;
                        uint64_t *ct = c + (ic + ir) * ldc + jc + jr;
                        if (ir < full) {
                            if (cols == nr) {
                                im->ukr_direct(kc, a + (ic + ir) * lda + pc, lda, bs, ct, ldc, accumulate);
                                continue;
                            }
                            im->ukr_direct(kc, a + (ic + ir) * lda + pc, lda, bs, tile, nr, 0);
                        } else if (rows == mr && cols == nr) {
                            im->ukr(kc, as, bs, ct, ldc, accumulate);
                            continue;
                        } else {
                            im->ukr(kc, as, bs, tile, nr, 0);
                        }
                        for (size_t i = 0; i < rows; i++)
                            for (size_t j = 0; j < cols; j++)
                                ct[i * ldc + j] = accumulate
                                    ? ct[i * ldc + j] + tile[i * nr + j]
                                    : tile[i * nr + j];
                    }
                }
            }
        }
    }
    free(ap);
    free(bp);
    return 0;
}

/* ---- kernel choice ------------------------------------------------------ */

static const gemm_impl *g_impl = NULL;
static int g_threads = 0;  /* 0: OpenMP default */
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static const gemm_impl *impl_by_name(const char *name)
{
    if (strcmp(name, "scalar") == 0)
        return &IMPL_SCALAR;
#ifdef SMPC_X86
    __builtin_cpu_init();
    if (strcmp(name, "avx2") == 0)
        return __builtin_cpu_supports("avx2") ? &IMPL_AVX2 : NULL;
    if (strcmp(name, "avx512") == 0)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq")
            ? &IMPL_AVX512 : NULL;
#endif
    return NULL;
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Seconds per multiply-add of a micro-kernel on L1-resident packed panels,
 * best of a few short runs (about 1 ms in all). */
static double time_ukr(const gemm_impl *im)
{
    enum { KC = 128 };
    double best = 1e30;
    uint64_t *ap = aligned_alloc(64, im->mr * KC * sizeof(uint64_t));
    uint64_t *bp = aligned_alloc(64, im->nr * KC * sizeof(uint64_t));
    uint64_t *c = aligned_alloc(64, im->mr * im->nr * sizeof(uint64_t));
    if (!ap || !bp || !c)
        goto done;
    for (size_t i = 0; i < im->mr * KC; i++)
        ap[i] = 0x9e3779b97f4a7c15ULL * (i + 1);
    for (size_t i = 0; i < im->nr * KC; i++)
        bp[i] = 0xbf58476d1ce4e5b9ULL * (i + 3);
    memset(c, 0, im->mr * im->nr * sizeof(uint64_t));
    for (int trial = 0; trial < 5; trial++) {
        const int reps = 64;
        double t0 = now_seconds();
        for (int r = 0; r < reps; r++)
            im->ukr(KC, ap, bp, c, im->nr, 1);
        double t = (now_seconds() - t0) / ((double)reps * KC * im->mr * im->nr);
        if (t < best)
            best = t;
    }
done:
    free(ap);
    free(bp);
    free(c);
    return best;
}

/* Default choice.  AVX-512 wins wherever it exists: vpmullq does 8 exact
 * 64-bit products per instruction.  With AVX2 only, the answer depends on
 * the core: on Intel (two vector multiply ports) the vpmuludq emulation
 * beats scalar imul, but on AMD Zen1 (one 128-bit multiply pipe; a ymm
 * vpmuludq takes 2 cycles, so 4 products cost 6 cycles) the scalar kernel
 * at one imul per cycle is faster.  Measured on the EPYC (Zen1) dev box,
 * one core, 1024^3: scalar 2.2-2.3 GMAC/s, avx2 1.3-1.4 GMAC/s (a mixed
 * kernel feeding imul and vpmuludq together gained only ~10% in a
 * micro-benchmark, so it is not here).
 * (That was the three-vpmuludq kernel; with vpmulld for the cross term
 * the avx2 kernel does 16 multiply-adds in 8 multiplies.  On the Zen3
 * 2-core box, one core: 512^3 3.0 -> 6.3-7.0 GMAC/s; scalar ~1.7.
 * ResNet-20's batch-64 3x3 convolutions, with A read in place for their
 * narrow C and 2 MiB im2col chunks: 5.9-6.6 GMAC/s.)
 * Rather than keep a CPU table, time both micro-kernels once (~1 ms). */
static const gemm_impl *choose_auto(void)
{
    const gemm_impl *best = &IMPL_SCALAR;
#ifdef SMPC_X86
    const gemm_impl *v;
    if ((v = impl_by_name("avx512")) != NULL)
        return v;
    if ((v = impl_by_name("avx2")) != NULL) {
        time_ukr(&IMPL_SCALAR);  /* warm up clocks and caches */
        double ts = time_ukr(&IMPL_SCALAR);
        double tv = time_ukr(v);
        if (tv < ts)
            best = v;
    }
#endif
    return best;
}

static void gemm_init(void)
{
    const char *env = getenv("PYSMPC_GEMM_KERNEL");
    const gemm_impl *im = NULL;
    if (env && *env && strcmp(env, "auto") != 0)
        im = impl_by_name(env);  /* unknown or unsupported: fall back */
    g_impl = im ? im : choose_auto();
}

const char *smpc_gemm_kernel_name(void)
{
    pthread_once(&g_once, gemm_init);
    return g_impl->name;
}

int smpc_gemm_kernel_available(const char *name)
{
    return impl_by_name(name) != NULL;
}

int smpc_gemm_set_kernel(const char *name)
{
    pthread_once(&g_once, gemm_init);
    if (strcmp(name, "auto") == 0) {
        g_impl = choose_auto();
        return 0;
    }
    const gemm_impl *im = impl_by_name(name);
    if (!im)
        return -1;
    g_impl = im;
    return 0;
}

void smpc_gemm_set_num_threads(int n) { g_threads = n > 0 ? n : 0; }

int smpc_gemm_get_num_threads(void)
{
    if (g_threads > 0)
        return g_threads;
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* ---- entry point -------------------------------------------------------- */

int smpc_gemm_u64(uint64_t *c, size_t ldc,
                  const uint64_t *a, size_t lda,
                  const uint64_t *b, size_t ldb,
                  size_t m, size_t n, size_t k)
{
    if (m == 0 || n == 0)
        return 0;
    if (k == 0) {
        for (size_t i = 0; i < m; i++)
            memset(c + i * ldc, 0, n * sizeof(uint64_t));
        return 0;
    }
    pthread_once(&g_once, gemm_init);
    const gemm_impl *im = g_impl;

    int threads = smpc_gemm_get_num_threads();
    if (threads < 2 || m * n * k < SMPC_PARALLEL_MACS)
        return gemm_serial(im, c, ldc, a, lda, b, ldb, m, n, k);

#ifdef _OPENMP
    /* Split C into blocks of rows (or of columns when C has too few rows)
     * handed out dynamically, about four per thread: each block packs its
     * own copy of B, an O(k n) cost against its O(rows n k) work, and if a
     * core is busy elsewhere (three parties on one host) the other threads
     * take over its blocks instead of waiting at the barrier. */
    int by_rows = m >= (size_t)threads * im->mr * 4 || n < (size_t)threads * im->nr;
    size_t extent = by_rows ? m : n;
    size_t unit = by_rows ? im->mr : im->nr;
    size_t min_chunk = by_rows ? im->mc : 4 * im->nr;
    size_t chunk = (extent + 4 * (size_t)threads - 1) / (4 * (size_t)threads);
    chunk = round_up(chunk < min_chunk ? min_chunk : chunk, unit);
    long nchunks = (long)((extent + chunk - 1) / chunk);
    int err = 0;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) reduction(| : err)
    for (long t = 0; t < nchunks; t++) {
        size_t lo = (size_t)t * chunk;
        size_t len = extent - lo < chunk ? extent - lo : chunk;
        if (by_rows)
            err |= gemm_serial(im, c + lo * ldc, ldc, a + lo * lda, lda, b, ldb, len, n, k);
        else
            err |= gemm_serial(im, c + lo, ldc, a, lda, b + lo, ldb, m, len, k);
    }
    return err ? -1 : 0;
#else
    return gemm_serial(im, c, ldc, a, lda, b, ldb, m, n, k);
#endif
}
