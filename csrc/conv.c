/* im2col and 2-D convolution over Z_(2^64).  Contract in ring.h.
 *
 * With NHWC input and HWIO weights, an im2col row laid out (kh, kw, c)
 * matches the row order of the weights viewed as a (kh*kw*c) x o matrix, so
 * the convolution is one GEMM: col @ wt, whose (n*oh*ow) x o result is
 * already the NHWC output.  The padding is zeros, the ring's additive
 * identity, so padded taps add nothing.
 */
#include "ring.h"

#include <string.h>

void smpc_im2col_u64(uint64_t *out, const uint64_t *x,
                     size_t n, size_t h, size_t w, size_t c,
                     size_t kh, size_t kw, size_t sh, size_t sw,
                     size_t pad_top, size_t pad_left, size_t oh, size_t ow)
{
    const size_t row_len = kh * kw * c;
    for (size_t b = 0; b < n; b++) {
        const uint64_t *img = x + b * h * w * c;
        for (size_t y = 0; y < oh; y++) {
            for (size_t xo = 0; xo < ow; xo++) {
                uint64_t *dst = out + ((b * oh + y) * ow + xo) * row_len;
                /* Signed arithmetic is safe: window origins lie within
                 * [-pad, h) and sizes are far below 2^63. */
                ptrdiff_t y0 = (ptrdiff_t)(y * sh) - (ptrdiff_t)pad_top;
                ptrdiff_t x0 = (ptrdiff_t)(xo * sw) - (ptrdiff_t)pad_left;
                for (size_t i = 0; i < kh; i++) {
                    ptrdiff_t yy = y0 + (ptrdiff_t)i;
                    if (yy < 0 || yy >= (ptrdiff_t)h) {
                        memset(dst, 0, kw * c * sizeof(uint64_t));
                        dst += kw * c;
                        continue;
                    }
                    /* Columns j in [jlo, jhi) fall inside the image, and
                     * those taps are contiguous in NHWC: one memcpy. */
                    ptrdiff_t jlo = x0 < 0 ? -x0 : 0;
                    ptrdiff_t jhi = (ptrdiff_t)w - x0;
                    if (jlo > (ptrdiff_t)kw)
                        jlo = (ptrdiff_t)kw;
                    if (jhi > (ptrdiff_t)kw)
                        jhi = (ptrdiff_t)kw;
                    if (jhi < jlo)
                        jhi = jlo;
                    memset(dst, 0, (size_t)jlo * c * sizeof(uint64_t));
                    if (jhi > jlo)
                        memcpy(dst + (size_t)jlo * c,
                               img + ((size_t)yy * w + (size_t)(x0 + jlo)) * c,
                               (size_t)(jhi - jlo) * c * sizeof(uint64_t));
                    memset(dst + (size_t)jhi * c, 0,
                           (kw - (size_t)jhi) * c * sizeof(uint64_t));
                    dst += kw * c;
                }
            }
        }
    }
}

int smpc_conv2d_u64(uint64_t *out, uint64_t *col, size_t col_rows,
                    const uint64_t *x, const uint64_t *wt,
                    size_t n, size_t h, size_t w, size_t c,
                    size_t kh, size_t kw, size_t o, size_t sh, size_t sw,
                    size_t pad_top, size_t pad_left, size_t oh, size_t ow)
{
    const size_t rows_per_image = oh * ow;
    const size_t k = kh * kw * c;
    if (n == 0 || rows_per_image == 0 || o == 0)
        return 0;
    if (col_rows < rows_per_image)
        return -1;
    /* Chunks of whole images keep the im2col buffer small (and warm in
     * cache for the GEMM that reads it right after). */
    const size_t images = col_rows / rows_per_image;
    for (size_t b = 0; b < n; b += images) {
        size_t nb = n - b < images ? n - b : images;
        smpc_im2col_u64(col, x + b * h * w * c, nb, h, w, c, kh, kw, sh, sw,
                        pad_top, pad_left, oh, ow);
        int err = smpc_gemm_u64(out + b * rows_per_image * o, o, col, k,
                                wt, o, nb * rows_per_image, o, k);
        if (err)
            return err;
    }
    return 0;
}
