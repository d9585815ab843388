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
        for (int i = 0; i < ck; ++i) {
            REAL acc[LANES] = {0};
            for (int o = 0; o < rk; ++o) {
                const REAL *bo = ROW(k, o), *w = WK(W, k, o, i);
                SIMD FOR_LANES acc[l] += bo[l] * w[l];
            }
            SIMD FOR_LANES ROW(k - 1, i)[l] = acc[l];
        }
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
 * in turn). With G: the field, G_k = −b_kᵀ h_k (W is not written). Without: the step W_k −= b_kᵀ h_k, and
 * with `track` the lanes whose weights it changed in `moved`. */
static inline __attribute__((always_inline)) void backward(int L, REAL *restrict W, REAL *restrict G,
                                                           REAL *restrict b, REAL h[IN][LANES],
                                                           const long *restrict offset, int track,
                                                           uint8_t *restrict moved) {
    REAL *hk = &h[0][0], *hn = ROW(0, 0);
    REAL next[M > OUTL ? M : OUTL][LANES];
    for (int k = 1; k <= L; ++k) {
        const int rk = rows_of(k, L), ck = cols_of(k);
        for (int o = 0; o < rk; ++o) {
            REAL acc[LANES] = {0};
            for (int i = 0; i < ck; ++i) {
                const REAL *w = WK(W, k, o, i), *hi = hk + (long)i * LANES;
                SIMD FOR_LANES acc[l] += hi[l] * w[l];
            }
            SIMD FOR_LANES next[o][l] = acc[l];
        }
        for (int o = 0; o < rk; ++o) {
            const REAL *bo = ROW(k, o);
            for (int i = 0; i < ck; ++i) {
                const REAL *hi = hk + (long)i * LANES;
                if (G) {
                    REAL *g = WK(G, k, o, i);
                    SIMD FOR_LANES g[l] = -(bo[l] * hi[l]);
                } else if (!track) {
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
                        REAL *restrict value, uint8_t *restrict moved, REAL *restrict b, long *restrict offset) {
    FOR_LANES moved[l] = 0;
    for (long t = 0; t < steps; ++t) {
        REAL h[IN][LANES], excess[LANES], eta[LANES];
        suffix_rows(L, W, c, b, offset);
        data_term(b, sigma, wstar, h, excess);
        FOR_LANES {
            value[l] = ROPT + excess[l];
            alive[l] = alive[l] && value[l] <= cap[l];
            alive_steps[l] += alive[l];
            eta[l] = alive[l] ? lr[l] : (REAL)0;
        }
        for (int i = 0; i < IN; ++i) SIMD FOR_LANES h[i][l] = alive[l] ? eta[l] * h[i][l] : (REAL)0;
        if (t + 1 < steps) backward(L, W, NULL, b, h, offset, 0, moved);
        else backward(L, W, NULL, b, h, offset, 1, moved);  /* the last step notes which weights it moved */
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
 * one sigma [IN][IN], wstar [IN], loss_opt [1]; lr, cap, value: [nchunks][LANES]; alive (0/1),
 * alive_steps, moved: [nchunks][LANES]. value: the loss before the last step; moved: whether the last step
 * changed any of the network's weights. */
int dlnpipe_steps(int nchunks, int L, long steps, REAL *W, const REAL *c, const REAL *sigma, const REAL *wstar,
                  const REAL *loss_opt, const REAL *lr, const REAL *cap, uint8_t *alive, int64_t *alive_steps,
                  REAL *value, uint8_t *moved) {
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
                    moved + at, b, offset);
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
 * while networks remain. Everything runs here; the caller sees only the results. */

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

struct flow_slots {  /* the chunk's LANES slots: the state of the network each one holds */
    REAL *y, *k[7], *ys, *b, *c, *sigma, *wstar;
    long *offset;
    REAL t[LANES], h[LANES], ex[LANES], w[IN][LANES];
    long nxt[LANES], acc[LANES], ev[LANES];
    int net[LANES];
};

/* The field at y into f: −∇R, with R − R* into ex and w (b_0) into the slots' w. */
static void field(int L, struct flow_slots *s, const REAL *restrict y, REAL *restrict f, REAL *restrict ex) {
    REAL h[IN][LANES];
    REAL *b = s->b;
    suffix_rows(L, y, s->c, b, s->offset);
    for (int i = 0; i < IN; ++i) SIMD FOR_LANES s->w[i][l] = ROW(0, i)[l];
    data_term(b, s->sigma, s->wstar, h, ex);
    backward(L, (REAL *)y, f, b, h, s->offset, 0, NULL);
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

/* Record slot l's network at every record time its clock has reached (maybe several). */
static void sample(struct flow_slots *s, int l, int NT, const REAL *rec, REAL *w_rec, REAL *ex_rec) {
    const long i = s->net[l];
    while (s->nxt[l] < NT && s->t[l] >= rec[i * NT + s->nxt[l]] * (1 - (REAL)1e-12)) {
        const long j = i * NT + s->nxt[l];
        for (int d = 0; d < IN; ++d) w_rec[j * IN + d] = s->w[d][l];
        ex_rec[j] = s->ex[l];
        s->nxt[l] += 1;
    }
}

/* Fill the free slots from the queue (networks next .. B-1): the field there, the initial step (Hairer,
 * Nørsett & Wanner II.4: h0 = 0.01·‖y‖/‖f‖ in the scaled norm, at most T) and the samples at t = 0. */
static long refill(int L, long P, int B, long next, struct flow_slots *s, REAL rtol, REAL atol, const REAL *W,
                   const REAL *c, const REAL *sigma, const REAL *wstar, const REAL *T, int NT, const REAL *rec,
                   REAL *w_rec, REAL *ex_rec) {
    int fresh[LANES] = {0}, any = 0;
    FOR_LANES if (s->net[l] < 0 && next < B) {
        load(s, l, next++, P, W, c, sigma, wstar);
        fresh[l] = any = 1;
    }
    if (!any) return next;
    REAL ex[LANES], *f = s->k[6];  /* k_7 is scratch between steps */
    field(L, s, s->y, f, ex);
    REAL d0[LANES] = {0}, d1[LANES] = {0};
    for (long p = 0; p < P; ++p) SIMD FOR_LANES {
        const REAL sc = atol + rtol * fabs(s->y[p * LANES + l]);
        const REAL a = s->y[p * LANES + l] / sc, g = f[p * LANES + l] / sc;
        d0[l] += a * a, d1[l] += g * g;
    }
    FOR_LANES if (fresh[l]) {
        for (long p = 0; p < P; ++p) s->k[0][p * LANES + l] = f[p * LANES + l];
        const REAL r0 = sqrt(d0[l] / P), r1 = sqrt(d1[l] / P);
        REAL h = (r0 < (REAL)1e-5 || r1 < (REAL)1e-5) ? (REAL)1e-6 : (REAL)0.01 * r0 / r1;
        const REAL Ti = T[s->net[l]];
        h = h < Ti ? h : Ti;
        s->h[l] = h > (REAL)1e-12 ? h : (REAL)1e-12;
        s->ex[l] = ex[l], s->t[l] = 0, s->nxt[l] = 0, s->acc[l] = 0, s->ev[l] = 1;
        sample(s, l, NT, rec, w_rec, ex_rec);
    }
    return next;
}

/* One attempted step of every occupied slot (free slots take h = 0 and are not read). */
static void attempt(int L, long P, struct flow_slots *s, REAL rtol, REAL atol, const REAL *T, int NT,
                    const REAL *rec, REAL *w_rec, REAL *ex_rec) {
    REAL hh[LANES], ex[LANES], ex5[LANES], err[LANES] = {0};
    FOR_LANES {
        hh[l] = 0;
        if (s->net[l] < 0) continue;
        const long i = s->net[l];
        const REAL at = s->nxt[l] < NT ? rec[i * NT + s->nxt[l]] : (REAL)INFINITY;
        const REAL lim = (at < T[i] ? at : T[i]) - s->t[l], h = s->h[l] < lim ? s->h[l] : lim;
        hh[l] = h > (REAL)1e-14 ? h : (REAL)1e-14;
    }
    REAL *y = s->y, *ys = s->ys, **k = s->k;
    for (int st = 1; st <= 5; ++st) {
        for (long p = 0; p < P; ++p) SIMD FOR_LANES {
            const long q = p * LANES + l;
            REAL acc = DP_A[st][0] * k[0][q];
            for (int j = 1; j < st; ++j) acc += DP_A[st][j] * k[j][q];
            ys[q] = y[q] + hh[l] * acc;
        }
        field(L, s, ys, k[st], ex);
    }
    for (long p = 0; p < P; ++p) SIMD FOR_LANES {
        const long q = p * LANES + l;
        REAL acc = DP_B5[0] * k[0][q];
        for (int j = 2; j < 6; ++j) acc += DP_B5[j] * k[j][q];
        ys[q] = y[q] + hh[l] * acc;
    }
    field(L, s, ys, k[6], ex5);
    REAL e[7];
    for (int j = 0; j < 7; ++j) e[j] = (REAL)((j < 6 ? (double)DP_B5[j] : 0.0) - DP_B4[j]);
    for (long p = 0; p < P; ++p) SIMD FOR_LANES {
        const long q = p * LANES + l;
        REAL acc = e[0] * k[0][q];
        for (int j = 2; j < 7; ++j) acc += e[j] * k[j][q];
        const REAL big = fabs(y[q]) > fabs(ys[q]) ? fabs(y[q]) : fabs(ys[q]);
        const REAL d = hh[l] * acc / (atol + rtol * big);
        err[l] += d * d;
    }
    int ok[LANES];
    FOR_LANES {
        err[l] = sqrt(err[l] / P);
        ok[l] = s->net[l] >= 0 && err[l] <= 1 && isfinite(err[l]);
    }
    for (long p = 0; p < P; ++p) SIMD FOR_LANES {
        const long q = p * LANES + l;
        y[q] = ok[l] ? ys[q] : y[q];
        k[0][q] = ok[l] ? k[6][q] : k[0][q];
    }
    FOR_LANES if (s->net[l] >= 0) {
        const REAL factor = isfinite(err[l]) ? (REAL)0.9 * POW(err[l] > (REAL)1e-10 ? err[l] : (REAL)1e-10, (REAL)-0.2)
                                             : (REAL)0.2;
        s->h[l] = hh[l] * (factor < (REAL)0.2 ? (REAL)0.2 : factor > 5 ? (REAL)5 : factor);
        s->ev[l] += 6;
        if (ok[l]) {
            s->ex[l] = ex5[l], s->t[l] += hh[l], s->acc[l] += 1;  /* s->w: w(y5), from the last field */
            sample(s, l, NT, rec, w_rec, ex_rec);
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
    const long P = n_params(L);
    const REAL rtol = tol[0], atol = tol[1];
    struct flow_slots s;
    REAL *mem = calloc((size_t)(9 * P + (L + 1) * WIDTH + OUTL + (long)IN * IN + IN) * LANES, sizeof(REAL));
    s.offset = layer_offsets(L);
    if (!mem || !s.offset) {
        free(mem), free(s.offset);
        return 1;
    }
    s.y = mem, s.ys = mem + P * LANES;
    for (int j = 0; j < 7; ++j) s.k[j] = mem + (2 + j) * P * LANES;
    s.b = mem + 9 * P * LANES;
    s.c = s.b + (long)(L + 1) * WIDTH * LANES;
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
