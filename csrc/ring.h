/* Kernels over the ring Z_(2^64), stored as uint64_t.
 *
 * Contract shared by every function below:
 *   - All arithmetic is mod 2^64 (uint64_t wrap-around); nothing saturates
 *     and nothing is undefined for any input value.
 *   - Sizes are element counts (size_t), never bytes.  A size of 0 is valid
 *     and touches no memory; pointers may then be NULL.
 *   - Kernels draw no randomness, see no party and keep no state, except the
 *     GEMM kernel choice and thread count set through the functions below.
 *   - Kernels never allocate, except where a function says so (GEMM packing
 *     buffers).
 *   - Output first: smpc_<op>_u64(out, in..., sizes).
 */
#ifndef PYSMPC_RING_H
#define PYSMPC_RING_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Elementwise (ring.c) ------------------------------------------------
 * Each reads n elements from every input and writes n elements to out.
 * out may be the same pointer as any input (in place); out must not
 * partially overlap an input.  No allocation.
 */

/* out = a + b */
void smpc_add_u64(uint64_t *out, const uint64_t *a, const uint64_t *b, size_t n);
/* out = a - b */
void smpc_sub_u64(uint64_t *out, const uint64_t *a, const uint64_t *b, size_t n);
/* out = a * b (low 64 bits of the product) */
void smpc_mul_u64(uint64_t *out, const uint64_t *a, const uint64_t *b, size_t n);
/* out = -a = 2^64 - a (0 stays 0) */
void smpc_neg_u64(uint64_t *out, const uint64_t *a, size_t n);
/* out = a * s, s a public scalar */
void smpc_mul_scalar_u64(uint64_t *out, const uint64_t *a, uint64_t s, size_t n);
/* out = a + s, s a public scalar (subtract s by passing 2^64 - s) */
void smpc_add_scalar_u64(uint64_t *out, const uint64_t *a, uint64_t s, size_t n);
/* out = a >> k reading a as two's-complement int64 (sign fill): the
 * fixed-point truncation helper.  k >= 64 yields 0 or 2^64-1 by sign. */
void smpc_rshift_arith_u64(uint64_t *out, const uint64_t *a, unsigned k, size_t n);
/* out = a >> k reading a as unsigned (zero fill).  k >= 64 yields 0. */
void smpc_rshift_logical_u64(uint64_t *out, const uint64_t *a, unsigned k, size_t n);

/* ---- GEMM (gemm.c) -------------------------------------------------------
 * C = A @ B mod 2^64, overwriting C.
 *   A: m x k, element (i, p) at a[i*lda + p]
 *   B: k x n, element (p, j) at b[p*ldb + j]
 *   C: m x n, element (i, j) at c[i*ldc + j]
 * Row strides are in elements; columns are unit stride.  Row strides may be
 * anything, including 0, if the rows they address are valid.  C must not
 * overlap A or B; A and B may overlap each other.  k = 0 writes zeros.
 *
 * ALLOCATES: each call mallocs cache-aligned packing buffers (at most about
 * 2.3 MiB per thread) and frees them before returning.
 * Returns 0 on success, -1 if a packing buffer could not be allocated (C is
 * then unspecified).
 *
 * Large products run on smpc_gemm_get_num_threads() OpenMP threads that
 * share out blocks of C's rows (or columns when C is short); small ones run on
 * the calling thread.  Every kernel computes the exact ring product, so the
 * result is bit-identical whichever kernel or thread count runs.
 */
int smpc_gemm_u64(uint64_t *c, size_t ldc,
                  const uint64_t *a, size_t lda,
                  const uint64_t *b, size_t ldb,
                  size_t m, size_t n, size_t k);

/* Name of the micro-kernel smpc_gemm_u64 uses: "scalar", "avx2" or
 * "avx512".  The first call chooses it (PYSMPC_GEMM_KERNEL, else the
 * fastest available; see gemm.c). */
const char *smpc_gemm_kernel_name(void);
/* 1 if the named kernel was compiled in and this CPU can run it, else 0. */
int smpc_gemm_kernel_available(const char *name);
/* Force a kernel ("scalar", "avx2", "avx512") or "auto" to choose again.
 * Returns 0, or -1 (choice unchanged) if the name is unknown or the CPU
 * cannot run it.  Not thread-safe against concurrent smpc_gemm_u64 calls. */
int smpc_gemm_set_kernel(const char *name);
/* Threads for large products; n <= 0 restores the OpenMP default. */
void smpc_gemm_set_num_threads(int n);
int smpc_gemm_get_num_threads(void);

/* ---- Convolution (conv.c) ------------------------------------------------
 * Layouts (Keras): x NHWC (n, h, w, c), weights HWIO (kh, kw, c, o),
 * output NHWC (n, oh, ow, o).  All buffers C-contiguous.  Padding is zeros,
 * pad_top / pad_left rows / columns before the input; the caller picks oh,
 * ow and the padding (e.g. TensorFlow's "same" rule) and must make every
 * window start inside the padded input.
 */

/* out[(b*oh + y)*ow + x, (i*kw + j)*c + ch] = x[b, y*sh + i - pad_top,
 * x*sw + j - pad_left, ch], or 0 in the padding.  out holds
 * (n*oh*ow) x (kh*kw*c) elements and must not overlap x.  No allocation. */
void smpc_im2col_u64(uint64_t *out, const uint64_t *x,
                     size_t n, size_t h, size_t w, size_t c,
                     size_t kh, size_t kw, size_t sh, size_t sw,
                     size_t pad_top, size_t pad_left, size_t oh, size_t ow);

/* out = conv2d(x, wt) mod 2^64 as im2col then smpc_gemm_u64, a few images
 * at a time.  col is caller workspace of col_rows x (kh*kw*c) elements,
 * col_rows >= oh*ow; more rows means fewer, larger GEMMs.  out, col, x and
 * wt must not overlap.  Allocates only what smpc_gemm_u64 allocates; returns
 * its status (0 or -1). */
int smpc_conv2d_u64(uint64_t *out, uint64_t *col, size_t col_rows,
                    const uint64_t *x, const uint64_t *wt,
                    size_t n, size_t h, size_t w, size_t c,
                    size_t kh, size_t kw, size_t o, size_t sh, size_t sw,
                    size_t pad_top, size_t pad_left, size_t oh, size_t ow);

#ifdef __cplusplus
}
#endif

#endif /* PYSMPC_RING_H */
