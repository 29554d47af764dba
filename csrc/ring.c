/* Elementwise ring kernels: see ring.h for the contract.
 *
 * No restrict qualifiers: out may equal an input.  GCC still vectorizes
 * these loops (with a run-time overlap check), and uint64_t arithmetic wraps
 * mod 2^64 by the C standard, which is exactly the ring.
 */
#include "ring.h"

void smpc_add_u64(uint64_t *out, const uint64_t *a, const uint64_t *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = a[i] + b[i];
}

void smpc_sub_u64(uint64_t *out, const uint64_t *a, const uint64_t *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = a[i] - b[i];
}

void smpc_mul_u64(uint64_t *out, const uint64_t *a, const uint64_t *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = a[i] * b[i];
}

void smpc_neg_u64(uint64_t *out, const uint64_t *a, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = (uint64_t)0 - a[i];
}

void smpc_mul_scalar_u64(uint64_t *out, const uint64_t *a, uint64_t s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = a[i] * s;
}

void smpc_add_scalar_u64(uint64_t *out, const uint64_t *a, uint64_t s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = a[i] + s;
}

void smpc_rshift_arith_u64(uint64_t *out, const uint64_t *a, unsigned k, size_t n)
{
    /* Right-shifting a negative int64 is implementation-defined in C, so
     * shift unsigned and flip around the sign mask: for x < 0,
     * ~((~x) >> k) is floor(x / 2^k), the arithmetic shift. */
    unsigned s = k > 63 ? 63 : k;  /* shifting by >= 64 would be undefined */
    for (size_t i = 0; i < n; i++) {
        uint64_t sign = (uint64_t)0 - (a[i] >> 63);
        out[i] = ((a[i] ^ sign) >> s) ^ sign;
    }
}

void smpc_rshift_logical_u64(uint64_t *out, const uint64_t *a, unsigned k, size_t n)
{
    if (k > 63) {
        for (size_t i = 0; i < n; i++)
            out[i] = 0;
        return;
    }
    for (size_t i = 0; i < n; i++)
        out[i] = a[i] >> k;
}
