/* Gradient descent and gradient flow on deep linear networks from the moments of the data
 * (dlnpipe.archs.linear): several GD steps per call (dlnpipe_steps), or a whole Dormand–Prince flow
 * (dlnpipe_flow).
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
 * The flow's field −∇R is the same two recursions with h_1 = ∂R/∂w, written out instead of applied.
 */
#include <math.h>
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
#define WIDTH (M > IN ? (M > OUTL ? M : OUTL) : (IN > OUTL ? IN : OUTL))  /* the longest row b_k */

static long n_params(int L) {
    long p = 0;
    for (int k = 1; k <= L; ++k) p += (long)rows_of(k, L) * cols_of(k);
    return p;
}

/* A chunk's arrays: W [P][LANES] (layer k at offset[k]); b: rows [(L+1)][WIDTH][LANES]; c [OUTL][LANES];
 * with SIGMA_LANES sigma [IN][IN][LANES], wstar [IN][LANES], loss_opt [LANES], else one of each. */
#define ROW(k, i) (b + ((long)(k) * WIDTH + (i)) * LANES)
#define WK(W, k, o, i) ((W) + (offset[k] + (long)(o) * cols_of(k) + (i)) * LANES)
#if SIGMA_LANES
#define SIG(i, j) sigma[((long)(i) * IN + (j)) * LANES + l]
#define WSTAR(i) wstar[(long)(i) * LANES + l]
#define ROPT loss_opt[l]
#else
#define SIG(i, j) sigma[(long)(i) * IN + (j)]
#define WSTAR(i) wstar[i]
#define ROPT loss_opt[0]
#endif

/* The rows b_L = c, b_{k-1} = b_k W_k; b_0 = w, the regressor. */
static inline void suffix_rows(int L, const REAL *restrict W, const REAL *restrict c, REAL *restrict b,
                               const long *restrict offset) {
    for (int o = 0; o < OUTL; ++o) SIMD FOR_LANES ROW(L, o)[l] = c[(long)o * LANES + l];
    for (int k = L; k >= 1; --k) {
        const int rk = rows_of(k, L), ck = cols_of(k);
        /* every column's sum at once (independent chains, each summed over o in order) */
        REAL acc[M > IN ? M : IN][LANES] = {{0}};
        for (int o = 0; o < rk; ++o) {
            const REAL *bo = ROW(k, o), *w = WK(W, k, o, 0);
            for (int i = 0; i < ck; ++i) SIMD FOR_LANES acc[i][l] += bo[l] * w[(long)i * LANES + l];
        }
        for (int i = 0; i < ck; ++i) SIMD FOR_LANES ROW(k - 1, i)[l] = acc[i][l];
    }
}

/* From b_0 = w: e = w − w*, h = g = ∂R/∂w = 2 Σ e, excess = R − R* = ½ g·e. */
static inline void data_term(const REAL *restrict b, const REAL *restrict sigma, const REAL *restrict wstar,
                             REAL h[IN][LANES], REAL *restrict excess) {
    REAL e[IN][LANES], ge[LANES] = {0};
    for (int i = 0; i < IN; ++i) SIMD FOR_LANES e[i][l] = ROW(0, i)[l] - WSTAR(i);
    for (int i = 0; i < IN; ++i) {
        REAL acc[LANES] = {0};
        for (int j = 0; j < IN; ++j) SIMD FOR_LANES acc[l] += SIG(i, j) * e[j][l];
        SIMD FOR_LANES { h[i][l] = 2 * acc[l]; ge[l] += h[i][l] * e[i][l]; }
    }
    SIMD FOR_LANES excess[l] = (REAL)0.5 * ge[l];
}

/* Through the layers from the first, h_{k+1} = h_k W_kᵀ at the old W_k (h_1 = h; b_0's place holds h_{k+1}
 * in turn), and the step W_k −= b_kᵀ h_k; with `track`, the lanes whose weights it changed in `moved`. */
static inline __attribute__((always_inline)) void backward(int L, REAL *restrict W, REAL *restrict b,
                                                           REAL h[IN][LANES], const long *restrict offset,
                                                           int track, uint8_t *restrict moved) {
    REAL *hk = &h[0][0], *hn = ROW(0, 0);
    REAL next[M > OUTL ? M : OUTL][LANES];
    for (int k = 1; k <= L; ++k) {
        const int rk = rows_of(k, L), ck = cols_of(k);
        /* every row's sum at once (independent chains, each summed over i in order) */
        for (int o = 0; o < rk; ++o) SIMD FOR_LANES next[o][l] = 0;
        for (int i = 0; i < ck; ++i) {
            const REAL *hi = hk + (long)i * LANES;
            for (int o = 0; o < rk; ++o) {
                const REAL *w = WK(W, k, o, i);
                SIMD FOR_LANES next[o][l] += hi[l] * w[l];
            }
        }
        for (int o = 0; o < rk; ++o) {
            const REAL *bo = ROW(k, o);
            for (int i = 0; i < ck; ++i) {
                const REAL *hi = hk + (long)i * LANES;
                if (!track) {
                    REAL *w = WK(W, k, o, i);
                    SIMD FOR_LANES w[l] -= bo[l] * hi[l];
                } else {
                    REAL *w = WK(W, k, o, i);
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

/* One chunk: `steps` GD steps. lr, cap, alive, alive_steps, value, moved: [LANES]; b: work space. */
static void chunk_steps(int L, long steps, REAL *restrict W, const REAL *restrict c, const REAL *restrict sigma,
                        const REAL *restrict wstar, const REAL *restrict loss_opt, const REAL *restrict lr,
                        const REAL *restrict cap, uint8_t *restrict alive, int64_t *restrict alive_steps,
                        REAL *restrict value, REAL *restrict first, uint8_t *restrict moved, REAL *restrict b,
                        long *restrict offset) {
    FOR_LANES moved[l] = 0;
    for (long t = 0; t < steps; ++t) {
        REAL h[IN][LANES], excess[LANES], eta[LANES];
        suffix_rows(L, W, c, b, offset);
        data_term(b, sigma, wstar, h, excess);
        FOR_LANES {
            value[l] = ROPT + excess[l];
            if (t == 0) first[l] = value[l];
            alive[l] = alive[l] && value[l] <= cap[l];
            alive_steps[l] += alive[l];
            eta[l] = alive[l] ? lr[l] : (REAL)0;
        }
        for (int i = 0; i < IN; ++i) SIMD FOR_LANES h[i][l] = alive[l] ? eta[l] * h[i][l] : (REAL)0;
        if (t + 1 < steps) backward(L, W, b, h, offset, 0, moved);
        else backward(L, W, b, h, offset, 1, moved);  /* the last step notes which weights it moved */
    }
}

static long *layer_offsets(int L) {
    long *offset = malloc(sizeof(long) * (L + 1));
    if (!offset) return NULL;
    offset[0] = 0, offset[1] = 0;
    for (int k = 2; k <= L; ++k) offset[k] = offset[k - 1] + (long)rows_of(k - 1, L) * cols_of(k - 1);
    return offset;
}

/* `steps` GD steps of nchunks chunks in place. W: [nchunks][P][LANES]; c: [nchunks][OUTL][LANES]; with
 * SIGMA_LANES sigma [nchunks][IN][IN][LANES], wstar [nchunks][IN][LANES], loss_opt [nchunks][LANES], else
 * one sigma [IN][IN], wstar [IN], loss_opt [1]; lr, cap, value, first: [nchunks][LANES]; alive (0/1),
 * alive_steps, moved: [nchunks][LANES]. value: the loss before the last step; first: before the first (a
 * recording step's training loss); moved: whether the last step changed any of the network's weights. */
int dlnpipe_steps(int nchunks, int L, long steps, REAL *W, const REAL *c, const REAL *sigma, const REAL *wstar,
                  const REAL *loss_opt, const REAL *lr, const REAL *cap, uint8_t *alive, int64_t *alive_steps,
                  REAL *value, REAL *first, uint8_t *moved) {
    const long P = n_params(L);
    REAL *b = malloc(sizeof(REAL) * (long)(L + 1) * WIDTH * LANES);
    long *offset = layer_offsets(L);
    if (!b || !offset) {
        free(b), free(offset);
        return 1;
    }
    const long sig = SIGMA_LANES ? (long)IN * IN * LANES : 0, ws = SIGMA_LANES ? (long)IN * LANES : 0;
    for (int ch = 0; ch < nchunks; ++ch) {
        const long at = (long)ch * LANES;
        chunk_steps(L, steps, W + ch * P * LANES, c + (long)ch * OUTL * LANES, sigma + ch * sig, wstar + ch * ws,
                    loss_opt + (SIGMA_LANES ? at : 0), lr + at, cap + at, alive + at, alive_steps + at, value + at,
                    first + at, moved + at, b, offset);
    }
    free(b), free(offset);
    return 0;
}

/* ---- gradient flow: Dormand–Prince 5(4), the solver of dlnpipe/steppers/flow.py, step for step ---------
 * Each network has its own step size h and clock t; a step is accepted when the scaled error
 * err = rms(h·Σ e_j k_j / (atol + rtol·max(|y|, |y5|))) ≤ 1, and h ← h·clip(0.9·err^(−1/5), 0.2, 5). A
 * network's steps stop at its record times and its horizon T; it leaves when t ≥ T, R − R* ≤ stop, after
 * max_steps accepted steps, or when R − R* is not finite or exceeds its cap (diverged). The LANES slots
 * of one chunk take the networks in turn: a slot whose network left takes the next one, so no lane idles
 * while networks remain. Everything runs here; the caller sees only the results.
 *
 * The field is rank one per layer, k(W)_k = −b_kᵀ h_k, so a stage is kept as its rows b_k and h_k, never
 * as a matrix, and a stage point Y + Σ_j α_j k_j is never formed: its products with rows are those of Y
 * corrected by dot products with the earlier stages' rows,
 *   b (Y_k − Σ_j α_j b_jᵀ h_j) = b Y_k − Σ_j α_j (b·b_j) h_j,   and likewise h (…)ᵀ = h Y_kᵀ − Σ_j α_j (h·h_j) b_j,
 * so every stage costs the two recursions through Y, as a GD step does, plus O(L m) per earlier stage.
 * One pass over the weights per step forms y5 and the error. */

static const REAL DP_A[6][5] = {
    {0}, {1.0 / 5}, {3.0 / 40, 9.0 / 40}, {44.0 / 45, -56.0 / 15, 32.0 / 9},
    {19372.0 / 6561, -25360.0 / 2187, 64448.0 / 6561, -212.0 / 729},
    {9017.0 / 3168, -355.0 / 33, 46732.0 / 5247, 49.0 / 176, -5103.0 / 18656}};
static const REAL DP_B5[6] = {35.0 / 384, 0, 500.0 / 1113, 125.0 / 192, -2187.0 / 6784, 11.0 / 84};
/* error weights e_j = b5_j − b4_j (as flow.py computes them: the difference of the two rows in double) */
static const double DP_B4[7] = {5179.0 / 57600, 0, 7571.0 / 16695, 393.0 / 640, -92097.0 / 339200,
                                187.0 / 2100, 1.0 / 40};

#if REAL_IS_DOUBLE
#define POW pow
#else
#define POW powf
#endif
#define AT(A, k, i) ((A) + ((long)(k) * WIDTH + (i)) * LANES)  /* row k, entry i of a stage's rows */

struct flow_slots {  /* the chunk's LANES slots: the state of the network each one holds */
    REAL *y, *y5, *b[7], *h[7], *c, *sigma, *wstar;  /* b[j], h[j]: stage j's rows [(L+1)][WIDTH][LANES] */
    long *offset;
    REAL t[LANES], hs[LANES], ex[LANES];
    long nxt[LANES], acc[LANES], ev[LANES];
    int net[LANES];
};

/* The field at the point Y + Σ_{j<n} coef_j k_{stage_j} into stage `out`'s rows (b_0 = w there), R − R* into ex. */
static void field(int L, struct flow_slots *s, int out, int n, const int *stage, REAL coef[][LANES],
                  REAL *restrict ex) {
    const long *offset = s->offset;
    REAL *restrict bo = s->b[out], *restrict ho = s->h[out];
    const REAL *Y = s->y;
    for (int o = 0; o < OUTL; ++o) SIMD FOR_LANES AT(bo, L, o)[l] = s->c[(long)o * LANES + l];
    for (int k = L; k >= 1; --k) {  /* b_{k-1} = b_k Y_k − Σ_j coef_j (b_k·b_j,k) h_j,k */
        const int rk = rows_of(k, L), ck = cols_of(k);
        REAL acc[M > IN ? M : IN][LANES] = {{0}};
        for (int o = 0; o < rk; ++o) {
            const REAL *bk = AT(bo, k, o), *w = WK(Y, k, o, 0);
            for (int i = 0; i < ck; ++i) SIMD FOR_LANES acc[i][l] += bk[l] * w[(long)i * LANES + l];
        }
        for (int j = 0; j < n; ++j) {
            REAL dot[LANES] = {0};
            for (int o = 0; o < rk; ++o) SIMD FOR_LANES dot[l] += AT(bo, k, o)[l] * AT(s->b[stage[j]], k, o)[l];
            SIMD FOR_LANES dot[l] *= coef[j][l];
            for (int i = 0; i < ck; ++i) SIMD FOR_LANES acc[i][l] -= dot[l] * AT(s->h[stage[j]], k, i)[l];
        }
        for (int i = 0; i < ck; ++i) SIMD FOR_LANES AT(bo, k - 1, i)[l] = acc[i][l];
    }
    REAL g[IN][LANES];
    data_term(bo, s->sigma, s->wstar, g, ex);
    for (int i = 0; i < IN; ++i) SIMD FOR_LANES AT(ho, 1, i)[l] = g[i][l];
    for (int k = 1; k < L; ++k) {  /* h_{k+1} = h_k Y_kᵀ − Σ_j coef_j (h_k·h_j,k) b_j,k */
        const int rk = rows_of(k, L), ck = cols_of(k);
        REAL next[M][LANES];
        for (int o = 0; o < rk; ++o) SIMD FOR_LANES next[o][l] = 0;
        for (int i = 0; i < ck; ++i) {
            const REAL *hi = AT(ho, k, i);
            for (int o = 0; o < rk; ++o) {
                const REAL *w = WK(Y, k, o, i);
                SIMD FOR_LANES next[o][l] += hi[l] * w[l];
            }
        }
        for (int j = 0; j < n; ++j) {
            REAL dot[LANES] = {0};
            for (int i = 0; i < ck; ++i) SIMD FOR_LANES dot[l] += AT(ho, k, i)[l] * AT(s->h[stage[j]], k, i)[l];
            SIMD FOR_LANES dot[l] *= coef[j][l];
            for (int o = 0; o < rk; ++o) SIMD FOR_LANES next[o][l] -= dot[l] * AT(s->b[stage[j]], k, o)[l];
        }
        for (int o = 0; o < rk; ++o) SIMD FOR_LANES AT(ho, k + 1, o)[l] = next[o][l];
    }
}

/* Take network i into slot l: its weights, prefix and (with SIGMA_LANES) its moments. */
static void load(struct flow_slots *s, int l, long i, long P, const REAL *W, const REAL *c, const REAL *sigma,
                 const REAL *wstar) {
    for (long p = 0; p < P; ++p) s->y[p * LANES + l] = W[i * P + p];
    for (int o = 0; o < OUTL; ++o) s->c[(long)o * LANES + l] = c[i * OUTL + o];
#if SIGMA_LANES
    for (long j = 0; j < (long)IN * IN; ++j) s->sigma[j * LANES + l] = sigma[i * IN * IN + j];
    for (int j = 0; j < IN; ++j) s->wstar[(long)j * LANES + l] = wstar[i * IN + j];
#else
    (void)sigma, (void)wstar;
#endif
    s->net[l] = (int)i;
}

/* Record slot l's network (w: the rows b_0 of stage `at`) at every record time its clock has reached. */
static void sample(struct flow_slots *s, int l, int at, int NT, const REAL *rec, REAL *w_rec, REAL *ex_rec) {
    const long i = s->net[l];
    while (s->nxt[l] < NT && s->t[l] >= rec[i * NT + s->nxt[l]] * (1 - (REAL)1e-12)) {
        const long j = i * NT + s->nxt[l];
        for (int d = 0; d < IN; ++d) w_rec[j * IN + d] = AT(s->b[at], 0, d)[l];
        ex_rec[j] = s->ex[l];
        s->nxt[l] += 1;
    }
}

/* Copy lane l of stage `from`'s rows into stage `to`'s. */
static void copy_rows(int L, struct flow_slots *s, int from, int to, int l) {
    for (long q = 0; q < (long)(L + 1) * WIDTH; ++q) {
        s->b[to][q * LANES + l] = s->b[from][q * LANES + l];
        s->h[to][q * LANES + l] = s->h[from][q * LANES + l];
    }
}

/* Fill the free slots from the queue (networks next .. B-1): the field there (stage 0), the initial step
 * (Hairer, Nørsett & Wanner II.4: h0 = 0.01·‖y‖/‖f‖ in the scaled norm, at most T) and the samples at t = 0. */
static long refill(int L, long P, int B, long next, struct flow_slots *s, REAL rtol, REAL atol, const REAL *W,
                   const REAL *c, const REAL *sigma, const REAL *wstar, const REAL *T, int NT, const REAL *rec,
                   REAL *w_rec, REAL *ex_rec) {
    int fresh[LANES] = {0}, any = 0;
    FOR_LANES if (s->net[l] < 0 && next < B) {
        load(s, l, next++, P, W, c, sigma, wstar);
        fresh[l] = any = 1;
    }
    if (!any) return next;
    REAL ex[LANES], d0[LANES] = {0}, d1[LANES] = {0};
    field(L, s, 6, 0, NULL, NULL, ex);  /* stage 6's rows are free between steps */
    const long *offset = s->offset;
    for (int k = 1; k <= L; ++k)
        for (int o = 0; o < rows_of(k, L); ++o)
            for (int i = 0; i < cols_of(k); ++i) {
                const REAL *y = WK(s->y, k, o, i), *bk = AT(s->b[6], k, o), *hk = AT(s->h[6], k, i);
                SIMD FOR_LANES {
                    const REAL inv = 1 / (atol + rtol * fabs(y[l])), a = y[l] * inv, f = -(bk[l] * hk[l]) * inv;
                    d0[l] += a * a, d1[l] += f * f;
                }
            }
    FOR_LANES if (fresh[l]) {
        copy_rows(L, s, 6, 0, l);
        const REAL r0 = sqrt(d0[l] / P), r1 = sqrt(d1[l] / P);
        REAL h = (r0 < (REAL)1e-5 || r1 < (REAL)1e-5) ? (REAL)1e-6 : (REAL)0.01 * r0 / r1;
        const REAL Ti = T[s->net[l]];
        h = h < Ti ? h : Ti;
        s->hs[l] = h > (REAL)1e-12 ? h : (REAL)1e-12;
        s->ex[l] = ex[l], s->t[l] = 0, s->nxt[l] = 0, s->acc[l] = 0, s->ev[l] = 1;
        sample(s, l, 0, NT, rec, w_rec, ex_rec);
    }
    return next;
}

/* One pass over the weights: y5 = Y + Σ_j β_j k_j into s->y5, and each lane's error sum Σ (E/scale)². */
static void finish_step(int L, struct flow_slots *s, const REAL *hh, REAL *restrict err, REAL atol, REAL rtol) {
    static const int J5[5] = {0, 2, 3, 4, 5}, JE[6] = {0, 2, 3, 4, 5, 6};  /* b5_1 = e_1 = 0 */
    const long *offset = s->offset;
    REAL e[7];
    for (int j = 0; j < 7; ++j) e[j] = (REAL)((j < 6 ? (double)DP_B5[j] : 0.0) - DP_B4[j]);
    for (int k = 1; k <= L; ++k) {
        const int rk = rows_of(k, L), ck = cols_of(k);
        const REAL *h0 = AT(s->h[0], k, 0), *h2 = AT(s->h[2], k, 0), *h3 = AT(s->h[3], k, 0),
                   *h4 = AT(s->h[4], k, 0), *h5 = AT(s->h[5], k, 0), *h6 = AT(s->h[6], k, 0);
        for (int o = 0; o < rk; ++o) {
            REAL cb[5][LANES], ce[6][LANES];  /* per row: −β_j b_j[o] and −h e_j b_j[o] */
            for (int j = 0; j < 5; ++j) SIMD FOR_LANES cb[j][l] = -(hh[l] * DP_B5[J5[j]]) * AT(s->b[J5[j]], k, o)[l];
            for (int j = 0; j < 6; ++j) SIMD FOR_LANES ce[j][l] = -(hh[l] * e[JE[j]]) * AT(s->b[JE[j]], k, o)[l];
            const REAL *Y = WK(s->y, k, o, 0);
            REAL *Y5 = WK(s->y5, k, o, 0);
            for (int i = 0; i < ck; ++i) SIMD FOR_LANES {
                const long q = (long)i * LANES + l;
                const REAL y5 = Y[q] + cb[0][l] * h0[q] + cb[1][l] * h2[q] + cb[2][l] * h3[q] + cb[3][l] * h4[q]
                                + cb[4][l] * h5[q];
                const REAL E = ce[0][l] * h0[q] + ce[1][l] * h2[q] + ce[2][l] * h3[q] + ce[3][l] * h4[q]
                               + ce[4][l] * h5[q] + ce[5][l] * h6[q];
                Y5[q] = y5;
                const REAL big = fabs(Y[q]) > fabs(y5) ? fabs(Y[q]) : fabs(y5), d = E / (atol + rtol * big);
                err[l] += d * d;
            }
        }
    }
}

/* One attempted step of every occupied slot (free slots take h = 0 and are not read). */
static void attempt(int L, long P, struct flow_slots *s, REAL rtol, REAL atol, const REAL *T, int NT,
                    const REAL *rec, REAL *w_rec, REAL *ex_rec) {
    static const int J[6] = {0, 1, 2, 3, 4, 5}, J5[5] = {0, 2, 3, 4, 5};
    REAL hh[LANES], ex[LANES], ex5[LANES], err[LANES] = {0}, coef[6][LANES];
    FOR_LANES {
        hh[l] = 0;
        if (s->net[l] < 0) continue;
        const long i = s->net[l];
        const REAL at = s->nxt[l] < NT ? rec[i * NT + s->nxt[l]] : (REAL)INFINITY;
        const REAL lim = (at < T[i] ? at : T[i]) - s->t[l], h = s->hs[l] < lim ? s->hs[l] : lim;
        hh[l] = h > (REAL)1e-14 ? h : (REAL)1e-14;
    }
    for (int st = 1; st <= 5; ++st) {  /* stage st at Y + h Σ_{j<st} a_st,j k_j */
        for (int j = 0; j < st; ++j) SIMD FOR_LANES coef[j][l] = hh[l] * DP_A[st][j];
        field(L, s, st, st, J, coef, ex);
    }
    for (int j = 0; j < 5; ++j) SIMD FOR_LANES coef[j][l] = hh[l] * DP_B5[J5[j]];
    field(L, s, 6, 5, J5, coef, ex5);  /* at y5 */
    finish_step(L, s, hh, err, atol, rtol);
    int ok[LANES], all = 1;
    FOR_LANES {
        err[l] = sqrt(err[l] / P);
        ok[l] = s->net[l] >= 0 && err[l] <= 1 && isfinite(err[l]);
        all &= ok[l] || s->net[l] < 0;
    }
    if (!all)  /* rejected lanes keep Y: write it into y5's lanes, so that y5 becomes every lane's new point */
        for (long p = 0; p < P; ++p) SIMD FOR_LANES s->y5[p * LANES + l] = ok[l] ? s->y5[p * LANES + l] : s->y[p * LANES + l];
    REAL *swap = s->y;
    s->y = s->y5, s->y5 = swap;
    /* FSAL: the field at y5 is the next step's first stage, for the lanes that moved there */
    if (all) {
        REAL *b0 = s->b[0], *h0 = s->h[0];
        s->b[0] = s->b[6], s->h[0] = s->h[6], s->b[6] = b0, s->h[6] = h0;
    } else {
        for (long q = 0; q < (long)(L + 1) * WIDTH; ++q) SIMD FOR_LANES {
            s->b[0][q * LANES + l] = ok[l] ? s->b[6][q * LANES + l] : s->b[0][q * LANES + l];
            s->h[0][q * LANES + l] = ok[l] ? s->h[6][q * LANES + l] : s->h[0][q * LANES + l];
        }
    }
    FOR_LANES if (s->net[l] >= 0) {
        const REAL factor = isfinite(err[l]) ? (REAL)0.9 * POW(err[l] > (REAL)1e-10 ? err[l] : (REAL)1e-10, (REAL)-0.2)
                                             : (REAL)0.2;
        s->hs[l] = hh[l] * (factor < (REAL)0.2 ? (REAL)0.2 : factor > 5 ? (REAL)5 : factor);
        s->ev[l] += 6;
        if (ok[l]) {
            s->ex[l] = ex5[l], s->t[l] += hh[l], s->acc[l] += 1;
            sample(s, l, 0, NT, rec, w_rec, ex_rec);
        }
    }
}

/* The flow of B networks (one chunk of slots, the networks in turn). In (network-major): W [B][P] (out: the
 * final weights), c [B][OUTL], with SIGMA_LANES sigma [B][IN][IN] and wstar [B][IN] (else one of each),
 * rec [B][NT] (record times), T, stop, cap [B]; tol: rtol, atol. Out: w_rec [B][NT][IN] and ex_rec [B][NT]
 * (w and R − R* at the first nrec[i] record times), and per network R − R*, t, accepted steps, field
 * evaluations, and whether it diverged. */
int dlnpipe_flow(int B, int L, int NT, long max_steps, const REAL *tol, REAL *W, const REAL *c, const REAL *sigma,
                 const REAL *wstar, const REAL *rec, const REAL *T, const REAL *stop, const REAL *cap, REAL *w_rec,
                 REAL *ex_rec, int64_t *nrec, REAL *excess, REAL *t_out, int64_t *accepted, int64_t *evals,
                 uint8_t *bad) {
    const long P = n_params(L), R = (long)(L + 1) * WIDTH * LANES;
    const REAL rtol = tol[0], atol = tol[1];
    struct flow_slots s;
    REAL *mem = calloc((size_t)(2 * P * LANES + 14 * R + (OUTL + (long)IN * IN + IN) * LANES), sizeof(REAL));
    s.offset = layer_offsets(L);
    if (!mem || !s.offset) {
        free(mem), free(s.offset);
        return 1;
    }
    s.y = mem, s.y5 = mem + P * LANES;
    for (int j = 0; j < 7; ++j) s.b[j] = mem + 2 * P * LANES + 2 * j * R, s.h[j] = s.b[j] + R;
    s.c = mem + 2 * P * LANES + 14 * R;
#if SIGMA_LANES
    s.sigma = s.c + OUTL * LANES, s.wstar = s.sigma + (long)IN * IN * LANES;
#else
    s.sigma = (REAL *)sigma, s.wstar = (REAL *)wstar;
#endif
    FOR_LANES s.net[l] = -1;
    long next = 0;
    for (;;) {
        next = refill(L, P, B, next, &s, rtol, atol, W, c, sigma, wstar, T, NT, rec, w_rec, ex_rec);
        int left = 0, live = 0;
        FOR_LANES if (s.net[l] >= 0) {  /* leave: at the horizon, converged to stop, out of steps, diverged */
            const long i = s.net[l];
            const int diverged = !isfinite(s.ex[l]) || s.ex[l] > cap[i];
            if (s.t[l] >= T[i] * (1 - (REAL)1e-14) || s.ex[l] <= stop[i] || diverged || s.acc[l] >= max_steps) {
                for (long p = 0; p < P; ++p) W[i * P + p] = s.y[p * LANES + l];
                excess[i] = s.ex[l], t_out[i] = s.t[l], accepted[i] = s.acc[l], evals[i] = s.ev[l];
                bad[i] = (uint8_t)diverged, nrec[i] = s.nxt[l];
                s.net[l] = -1, left = 1;
            } else {
                live += 1;
            }
        }
        if (left) continue;  /* refill the free slots first */
        if (!live) break;
        attempt(L, P, &s, rtol, atol, T, NT, rec, w_rec, ex_rec);
    }
    free(mem), free(s.offset);
    return 0;
}

/* The lanes per chunk this build packs (the caller lays its arrays out by it). */
int dlnpipe_lanes(void) { return LANES; }
