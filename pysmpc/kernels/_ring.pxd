# Declarations of the C ring kernels (csrc/ring.h); see that header for the
# contract of each function (sizes, aliasing, mod 2^64, allocation).
from libc.stdint cimport uint64_t


cdef extern from "ring.h" nogil:
    void smpc_add_u64(uint64_t *out, const uint64_t *a, const uint64_t *b, size_t n)
    void smpc_sub_u64(uint64_t *out, const uint64_t *a, const uint64_t *b, size_t n)
    void smpc_mul_u64(uint64_t *out, const uint64_t *a, const uint64_t *b, size_t n)
    void smpc_neg_u64(uint64_t *out, const uint64_t *a, size_t n)
    void smpc_mul_scalar_u64(uint64_t *out, const uint64_t *a, uint64_t s, size_t n)
    void smpc_add_scalar_u64(uint64_t *out, const uint64_t *a, uint64_t s, size_t n)
    void smpc_rshift_arith_u64(uint64_t *out, const uint64_t *a, unsigned k, size_t n)
    void smpc_rshift_logical_u64(uint64_t *out, const uint64_t *a, unsigned k, size_t n)

    int smpc_gemm_u64(uint64_t *c, size_t ldc,
                      const uint64_t *a, size_t lda,
                      const uint64_t *b, size_t ldb,
                      size_t m, size_t n, size_t k)
    const char *smpc_gemm_kernel_name()
    int smpc_gemm_kernel_available(const char *name)
    int smpc_gemm_set_kernel(const char *name)
    void smpc_gemm_set_num_threads(int n)
    int smpc_gemm_get_num_threads()

    void smpc_im2col_u64(uint64_t *out, const uint64_t *x,
                         size_t n, size_t h, size_t w, size_t c,
                         size_t kh, size_t kw, size_t sh, size_t sw,
                         size_t pad_top, size_t pad_left, size_t oh, size_t ow)
    int smpc_conv2d_u64(uint64_t *out, uint64_t *col, size_t col_rows,
                        const uint64_t *x, const uint64_t *wt,
                        size_t n, size_t h, size_t w, size_t c,
                        size_t kh, size_t kw, size_t o, size_t sh, size_t sw,
                        size_t pad_top, size_t pad_left, size_t oh, size_t ow)
