/* Gradient descent on deep linear networks from the moments of the data (dlnpipe.archs.linear),
 * several steps per call.
 *
 * As in activated.c, networks are dealt into chunks of LANES (one SIMD register of REAL: VECTOR_BYTES) and
 * every array is lane-last, so each loop over LANES is one vector instruction and a network's result
 * does not depend on the others. The loss is R = R* + (w − w*)ᵀΣ(w − w*) with w = (c W_L ⋯ W_1)ᵀ,
 * and the gradient is written out: with rows b_k = c W_L ⋯ W_{k+1} and h_1 = η ∂R/∂w = 2η Σ(w − w*),
 * h_{k+1} = h_k W_kᵀ, the step is W_k ← W_k − b_kᵀ h_k (every layer at the old point).
 *
 * Compile-time constants (-D): VECTOR_BYTES, REAL, IN (input dimension of W_1), M (width), OUTL (rows of W_L: 1, or M
 * with a projection p), SIGMA_LANES (1: one Σ, w*, R* per network; 0: shared). Runtime: L (depth).
 * Per step and network, the rules of dlnpipe.steppers.base (the cap comes from the caller;
 * tests/test_kernels.py holds this kernel to the torch path on networks built to diverge):
 *   value = R(W); alive &= value <= cap (false for NaN); alive_steps += alive;
 *   W <- W - (alive ? lr : 0) * grad R(W).
 */
#include <stdint.h>
#include <stdlib.h>

#ifndef VECTOR_BYTES
#error "VECTOR_BYTES (the SIMD register's size) comes from dlnpipe.kernels.vector_bytes()"
#endif
#define LANES (VECTOR_BYTES / (int)sizeof(REAL))
#define SIMD _Pragma("omp simd")
#define FOR_LANES for (int l = 0; l < LANES; ++l)

/* Rows and columns of W_k (1-based) for depth L. */
static inline int rows_of(int k, int L) { return k == L ? OUTL : M; }
static inline int cols_of(int k) { return k == 1 ? IN : M; }

static long n_params(int L) {
    long p = 0;
    for (int k = 1; k <= L; ++k) p += (long)rows_of(k, L) * cols_of(k);
    return p;
}

/* One chunk: `steps` steps. W [P][LANES]; c [OUTL][LANES]; sigma [IN][IN](×LANES), wstar [IN](×LANES),
 * loss_opt (×LANES); b: work space [(L+1)][M or IN][LANES]. */
static void chunk_steps(int L, long steps, REAL *restrict W, const REAL *restrict c, const REAL *restrict sigma,
                        const REAL *restrict wstar, const REAL *restrict loss_opt, const REAL *restrict lr,
                        const REAL *restrict cap, uint8_t *restrict alive, int64_t *restrict alive_steps,
                        REAL *restrict value, uint8_t *restrict moved, REAL *restrict b, long *restrict offset) {
    const int width = M > IN ? (M > OUTL ? M : OUTL) : (IN > OUTL ? IN : OUTL);
#define B(k, i) (b + ((long)(k) * width + (i)) * LANES)
#define WK(k, o, i) (W + (offset[k] + (long)(o) * cols_of(k) + (i)) * LANES)
#if SIGMA_LANES
#define SIG(i, j) sigma[((long)(i) * IN + (j)) * LANES + l]
#define WSTAR(i) wstar[(long)(i) * LANES + l]
#define ROPT loss_opt[l]
#else
#define SIG(i, j) sigma[(long)(i) * IN + (j)]
#define WSTAR(i) wstar[i]
#define ROPT loss_opt[0]
#endif
    FOR_LANES moved[l] = 0;
    for (long t = 0; t < steps; ++t) {
        const int last = t + 1 == steps;  /* the last step also notes which weights it moved */
        /* rows: b_L = c, b_{k-1} = b_k W_k */
        for (int o = 0; o < OUTL; ++o) SIMD FOR_LANES B(L, o)[l] = c[(long)o * LANES + l];
        for (int k = L; k >= 1; --k) {
            const int rk = rows_of(k, L), ck = cols_of(k);
            for (int i = 0; i < ck; ++i) {
                REAL acc[LANES] = {0};
                for (int o = 0; o < rk; ++o) {
                    const REAL *bo = B(k, o), *w = WK(k, o, i);
                    SIMD FOR_LANES acc[l] += bo[l] * w[l];
                }
                SIMD FOR_LANES B(k - 1, i)[l] = acc[l];
            }
        }
        /* e = w - w*, g = 2 Σ e, value = R* + ½ g·e; h_1 = η g in b_0's place (w is no longer needed) */
        REAL e[IN][LANES], h[IN][LANES], ge[LANES] = {0}, eta[LANES];
        for (int i = 0; i < IN; ++i) SIMD FOR_LANES e[i][l] = B(0, i)[l] - WSTAR(i);
        for (int i = 0; i < IN; ++i) {
            REAL acc[LANES] = {0};
            for (int j = 0; j < IN; ++j) SIMD FOR_LANES acc[l] += SIG(i, j) * e[j][l];
            SIMD FOR_LANES { h[i][l] = 2 * acc[l]; ge[l] += h[i][l] * e[i][l]; }
        }
        FOR_LANES {
            value[l] = ROPT + (REAL)0.5 * ge[l];
            alive[l] = alive[l] && value[l] <= cap[l];
            alive_steps[l] += alive[l];
            eta[l] = alive[l] ? lr[l] : (REAL)0;
        }
        for (int i = 0; i < IN; ++i) SIMD FOR_LANES h[i][l] = alive[l] ? eta[l] * h[i][l] : (REAL)0;
        /* through the layers from the first: h_{k+1} = h_k W_kᵀ (old W_k), then W_k -= b_kᵀ h_k */
        REAL *hk = &h[0][0], *hn = B(0, 0);  /* b_0 is free now: it holds h_{k+1} in turn */
        REAL next[M > OUTL ? M : OUTL][LANES];
        for (int k = 1; k <= L; ++k) {
            const int rk = rows_of(k, L), ck = cols_of(k);
            for (int o = 0; o < rk; ++o) {
                REAL acc[LANES] = {0};
                for (int i = 0; i < ck; ++i) {
                    const REAL *w = WK(k, o, i), *hi = hk + (long)i * LANES;
                    SIMD FOR_LANES acc[l] += hi[l] * w[l];
                }
                SIMD FOR_LANES next[o][l] = acc[l];
            }
            for (int o = 0; o < rk; ++o) {
                const REAL *bo = B(k, o);
                for (int i = 0; i < ck; ++i) {
                    REAL *w = WK(k, o, i);
                    const REAL *hi = hk + (long)i * LANES;
                    if (!last) {
                        SIMD FOR_LANES w[l] -= bo[l] * hi[l];
                    } else {
                        FOR_LANES {
                            const REAL old = w[l];
                            w[l] -= bo[l] * hi[l];
                            moved[l] |= w[l] != old;
                        }
                    }
                }
            }
            for (int o = 0; o < rk; ++o) SIMD FOR_LANES hn[(long)o * LANES + l] = next[o][l];
            hk = hn;
        }
    }
#undef B
#undef WK
#undef SIG
#undef WSTAR
#undef ROPT
}

/* `steps` GD steps of nchunks chunks in place. W: [nchunks][P][LANES]; c: [nchunks][OUTL][LANES]; with
 * SIGMA_LANES sigma [nchunks][IN][IN][LANES], wstar [nchunks][IN][LANES], loss_opt [nchunks][LANES], else
 * one sigma [IN][IN], wstar [IN], loss_opt [1]; lr, cap, value: [nchunks][LANES]; alive (0/1),
 * alive_steps, moved: [nchunks][LANES]. value: the loss before the last step; moved: whether the last step
 * changed any of the network's weights. */
int dlnpipe_steps(int nchunks, int L, long steps, REAL *W, const REAL *c, const REAL *sigma, const REAL *wstar,
                  const REAL *loss_opt, const REAL *lr, const REAL *cap, uint8_t *alive, int64_t *alive_steps,
                  REAL *value, uint8_t *moved) {
    const long P = n_params(L);
    const int width = M > IN ? (M > OUTL ? M : OUTL) : (IN > OUTL ? IN : OUTL);
    REAL *b = malloc(sizeof(REAL) * (long)(L + 1) * width * LANES);
    long *offset = malloc(sizeof(long) * (L + 1));
    if (!b || !offset) {
        free(b), free(offset);
        return 1;
    }
    offset[0] = 0, offset[1] = 0;
    for (int k = 2; k <= L; ++k) offset[k] = offset[k - 1] + (long)rows_of(k - 1, L) * cols_of(k - 1);
    const long sig = SIGMA_LANES ? (long)IN * IN * LANES : 0, ws = SIGMA_LANES ? (long)IN * LANES : 0;
    for (int ch = 0; ch < nchunks; ++ch) {
        const long at = (long)ch * LANES;
        chunk_steps(L, steps, W + ch * P * LANES, c + (long)ch * OUTL * LANES, sigma + ch * sig, wstar + ch * ws,
                    loss_opt + (SIGMA_LANES ? at : 0), lr + at, cap + at, alive + at, alive_steps + at, value + at,
                    moved + at, b, offset);
    }
    free(b), free(offset);
    return 0;
}

/* The lanes per chunk this build packs (the caller lays its arrays out by it). */
int dlnpipe_lanes(void) { return LANES; }
