/* Gradient descent on small-init networks with an elementwise activation between layers
 * (dlnpipe.archs.activated): forward, hand-written backward and the update, several steps per call.
 *
 * The networks of a batch are dealt into chunks of LANES networks (one SIMD register of REAL: VECTOR_BYTES,
 * the CPU's vector width, dlnpipe.kernels.vector_bytes), and every array is stored lane-last:
 * W[out][in][LANES], activations [sample][unit][LANES]. Each loop over LANES is one vector instruction, so
 * a chunk advances LANES networks at the cost of one, and a network's result does not depend on the others
 * in its chunk (nor on LANES).
 *
 * Compile-time constants (-D): VECTOR_BYTES, REAL (float or double), M (width), D (input dimension), ACT (the
 * activation: ACT_GELU or ACT_RELU, whose values dlnpipe.kernels.Activation passes too). Runtime: L
 * (depth >= 1), N (samples). Per step and network, the rules of dlnpipe.steppers.base (the cap comes from
 * the caller; tests/test_kernels.py holds this kernel to the torch path on networks built to diverge):
 *   value = R(W); alive &= value <= cap (false for NaN); alive_steps += alive;
 *   W <- W - (alive ? lr : 0) * nan_to_num(grad R(W)).
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if !defined(ACT) || !defined(ACT_GELU) || !defined(ACT_RELU)
#error "ACT, ACT_GELU and ACT_RELU come from dlnpipe.kernels.Activation.defines()"
#endif

#ifndef VECTOR_BYTES
#error "VECTOR_BYTES (the SIMD register's size) comes from dlnpipe.kernels.vector_bytes()"
#endif
#define LANES (VECTOR_BYTES / (int)sizeof(REAL))
#define MAXDIM (M > D ? M : D)  /* fixed-size local arrays: no VLA, so the short loops unroll */
#define SIMD _Pragma("omp simd")
#define FOR_LANES for (int l = 0; l < LANES; ++l)

#if REAL_IS_DOUBLE
#define ERF erf
#define EXP exp
#define BIG DBL_MAX
double erf(double) __attribute__((simd("notinbranch")));
double exp(double) __attribute__((simd("notinbranch")));
#else
#define ERF erff
#define EXP expf
#define BIG FLT_MAX
float erff(float) __attribute__((simd("notinbranch")));
float expf(float) __attribute__((simd("notinbranch")));
#endif

#if ACT == ACT_GELU && !REAL_IS_DOUBLE
/* float32 GELU without libm. For |z| ≤ 2 (nearly every pre-activation at small init), two polynomials
 * in s = z²: σ(z) = z (0.5 + z·A(s)) with Φ(z) = 0.5 + z·A(s), and σ'(z) = Φ + zφ = 0.5 + z·D(s) (A
 * and D least-squares fits of degree 7 and 9, no exp at all). Beyond, Φ(−t) = φ(t)·B(1/t)/t (the
 * Mills ratio, degree 7) with φ(t) = exp(−t²/2)/√(2π) by Cody–Waite reduction and the Cephes
 * polynomial. The three fits and their float32 errors: dlnpipe/kernels/fit_gelu.py, which writes the
 * coefficients below (python -m dlnpipe.kernels.fit_gelu --write). After float32 rounding σ is within
 * 1.2e-7·max(1, |z|) and σ' within 4e-7 of the exact values, about three ulp (torch's own float32 GELU:
 * 3.6e-7 and 2.8e-7). */
static inline float exp_nonpositive(float x) {
    x = x < -80.0f ? -80.0f : x;  /* exp(-80) ≈ 1.8e-35: no subnormal anywhere downstream */
    float k = __builtin_rintf(x * 1.44269504088896341f);
    float r = x - k * 0.693359375f;
    r = r - k * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { int32_t i; float f; } scale = {.i = ((int32_t)k + 127) << 23};
    return p * scale.f;
}

static inline float gelu_pdf(float z) { return 0.398942280401432678f * exp_nonpositive(-0.5f * z * z); }

/* Φ(z) for |z| > 2: φ(t)·B(1/t)/t, t = |z|, reflected for z > 0. */
static inline float gelu_cdf_tail(float z, float pdf) {
    const float t = z < 0 ? -z : z, u = 1.0f / t;
    float pb = -3.862309933e+00f;
    pb = pb * u + 1.010782909e+01f;
    pb = pb * u + -1.081074524e+01f;
    pb = pb * u + 5.365789890e+00f;
    pb = pb * u + -3.012838960e-01f;
    pb = pb * u + -9.779220223e-01f;
    pb = pb * u + -8.388765855e-04f;
    pb = pb * u + 1.000012159e+00f;
    const float tail = pdf * u * pb;
    return z < 0 ? tail : 1.0f - tail;
}
#endif

/* σ(z) into a and σ'(z) into da (kept for the backward pass), as torch computes them: GELU
 * 0.5 z (1 + erf(z/√2)) with derivative cdf + z·pdf; ReLU max(z, 0) with derivative 1 where z > 0. */
static inline void activate(const REAL *restrict z, REAL *restrict a, REAL *restrict da, int count) {
#if ACT == ACT_GELU && !REAL_IS_DOUBLE
    int tails = 0;  /* the polynomials in z² everywhere, then the lanes with |z| > 2 again (tail formula) */
    _Pragma("omp simd reduction(+:tails)") for (int i = 0; i < count; ++i) {
        const float zi = z[i], s = zi * zi;
        float pa = -1.662160010e-08f;
        pa = pa * s + 5.212625638e-07f;
        pa = pa * s + -8.953068573e-06f;
        pa = pa * s + 1.144489579e-04f;
        pa = pa * s + -1.186186448e-03f;
        pa = pa * s + 9.972847998e-03f;
        pa = pa * s + -6.649018079e-02f;
        pa = pa * s + 3.989422619e-01f;
        float pd = -8.142423957e-10f;
        pd = pd * s + 3.018674022e-08f;
        pd = pd * s + -6.106478168e-07f;
        pd = pd * s + 9.181049791e-06f;
        pd = pd * s + -1.130686942e-04f;
        pd = pd * s + 1.154029276e-03f;
        pd = pd * s + -9.498396888e-03f;
        pd = pd * s + 5.984125286e-02f;
        pd = pd * s + -2.659614980e-01f;
        pd = pd * s + 7.978845835e-01f;
        a[i] = zi * (0.5f + zi * pa);
        da[i] = 0.5f + zi * pd;
        tails += s > 4.0f;
    }
    if (tails && 16 * tails < count) {  /* a few: one by one */
        for (int i = 0; i < count; ++i) {
            if (z[i] > 2.0f || z[i] < -2.0f) {
                const float pdf = gelu_pdf(z[i]), cdf = gelu_cdf_tail(z[i], pdf);
                a[i] = z[i] * cdf;
                da[i] = cdf + z[i] * pdf;
            }
        }
    } else if (tails) {  /* many: the tail formula for the whole block, kept where it applies */
        SIMD for (int i = 0; i < count; ++i) {
            const float zi = z[i], t = zi < 0 ? -zi : zi, pdf = gelu_pdf(zi);
            const float cdf = gelu_cdf_tail(t > 2.0f ? zi : 2.0f, pdf);
            a[i] = t > 2.0f ? zi * cdf : a[i];
            da[i] = t > 2.0f ? cdf + zi * pdf : da[i];
        }
    }
#else
    SIMD for (int i = 0; i < count; ++i) {
#if ACT == ACT_GELU
        REAL cdf = (REAL)0.5 * ((REAL)1 + ERF(z[i] * (REAL)M_SQRT1_2));
        REAL pdf = (REAL)(M_2_SQRTPI * M_SQRT1_2 * 0.5) * EXP((REAL)-0.5 * z[i] * z[i]);
        a[i] = z[i] * cdf;
        da[i] = cdf + z[i] * pdf;
#else
        a[i] = z[i] > 0 ? z[i] : (REAL)0;
        da[i] = z[i] > 0 ? (REAL)1 : (REAL)0;
#endif
    }
#endif
}

/* The activation alone, for tests: a = σ(z), da = σ'(z) for `count` values. */
void dlnpipe_activation(int count, const REAL *z, REAL *a, REAL *da) { activate(z, a, da, count); }

/* dz ← dh · σ'(z) (ReLU: dh where z > 0, else 0, even for a non-finite dh: autograd's rule). */
static inline void activate_backward(const REAL *restrict da, const REAL *restrict dh, REAL *restrict dz,
                                     int count) {
    SIMD for (int i = 0; i < count; ++i) {
#if ACT == ACT_GELU
        dz[i] = dh[i] * da[i];
#else
        dz[i] = da[i] != 0 ? dh[i] : (REAL)0;
#endif
    }
}

static inline REAL nan_to_num(REAL g) { return g != g ? (REAL)0 : (g > BIG ? BIG : (g < -BIG ? -BIG : g)); }

/* Parameters of one chunk: W1 (M, D), L-2 hidden (M, M), WL (1, M), each entry LANES wide. */
static inline long n_params(int L) { return L == 1 ? (long)D : (long)M * D + (long)(L - 2) * M * M + M; }

typedef struct {
    REAL *da, *a;  /* σ'(z) and activations of the hidden layers: [L-1][N][M][LANES] */
    REAL *dh, *dz, *r, *g;  /* [N][M][LANES] twice, [N][LANES], [P][LANES] */
} Work;

/* The three products of a layer, each loop nest ordered so that the weights a sample needs stay in
 * registers and every multiply-add loads one vector (x is lane-wide, or one value broadcast to all
 * lanes for the data, lane_x = 0). Inlined with constant sizes, the compiler unrolls the short loops. */
#define INLINE static inline __attribute__((always_inline))

/* z[i][o] = Σ_k W[o][k] x[i][k]. */
INLINE void dense(const REAL *restrict W, const REAL *restrict x, REAL *restrict z, int N, int OUT, int IN,
                  int lane_x) {
    for (int o = 0; o < OUT; ++o) {
        REAL w[MAXDIM][LANES];
        for (int k = 0; k < IN; ++k) SIMD FOR_LANES w[k][l] = W[((long)o * IN + k) * LANES + l];
        for (int i = 0; i < N; ++i) {
            REAL acc[LANES] = {0};
            for (int k = 0; k < IN; ++k) {
                if (lane_x) {
                    const REAL *xv = x + ((long)i * IN + k) * LANES;
                    SIMD FOR_LANES acc[l] += w[k][l] * xv[l];
                } else {
                    const REAL xv = x[(long)i * IN + k];
                    SIMD FOR_LANES acc[l] += w[k][l] * xv;
                }
            }
            REAL *out = z + ((long)i * OUT + o) * LANES;
            SIMD FOR_LANES out[l] = acc[l];
        }
    }
}

/* g[o][k] = Σ_i dz[i][o] x[i][k]. */
INLINE void outer(const REAL *restrict dz, const REAL *restrict x, REAL *restrict g, int N, int OUT, int IN,
                  int lane_x) {
    for (int o = 0; o < OUT; ++o) {
        REAL acc[MAXDIM][LANES];
        for (int k = 0; k < IN; ++k) SIMD FOR_LANES acc[k][l] = 0;
        for (int i = 0; i < N; ++i) {
            const REAL *d = dz + ((long)i * OUT + o) * LANES;
            for (int k = 0; k < IN; ++k) {
                if (lane_x) {
                    const REAL *xv = x + ((long)i * IN + k) * LANES;
                    SIMD FOR_LANES acc[k][l] += d[l] * xv[l];
                } else {
                    const REAL xv = x[(long)i * IN + k];
                    SIMD FOR_LANES acc[k][l] += d[l] * xv;
                }
            }
        }
        for (int k = 0; k < IN; ++k) SIMD FOR_LANES g[((long)o * IN + k) * LANES + l] = acc[k][l];
    }
}

/* dh[i][k] = Σ_o dz[i][o] W[o][k]. */
INLINE void back(const REAL *restrict dz, const REAL *restrict W, REAL *restrict dh, int N, int OUT, int IN) {
    for (int k = 0; k < IN; ++k) {
        REAL w[MAXDIM][LANES];
        for (int o = 0; o < OUT; ++o) SIMD FOR_LANES w[o][l] = W[((long)o * IN + k) * LANES + l];
        for (int i = 0; i < N; ++i) {
            REAL acc[LANES] = {0};
            for (int o = 0; o < OUT; ++o) {
                const REAL *d = dz + ((long)i * OUT + o) * LANES;
                SIMD FOR_LANES acc[l] += d[l] * w[o][l];
            }
            REAL *out = dh + ((long)i * IN + k) * LANES;
            SIMD FOR_LANES out[l] = acc[l];
        }
    }
}

/* The loss of one chunk (lanes) on (X, y) into value, the residuals into w->r and the activations kept for
 * the backward pass. Every call below passes its sizes as constants (D, M, 1) and whether x is lane-wide,
 * so each inlined copy is fully specialised. */
static void forward(const REAL *W, int L, int N, const REAL *X, const REAL *y, Work *w, REAL *value) {
    const long hidden = (long)N * M * LANES;
    const REAL *WL = W + (n_params(L) - (L == 1 ? D : M)) * LANES;  /* the last layer, (1, D or M) */
    if (L == 1) {
        dense(WL, X, w->r, N, 1, D, 0);
    } else {
        dense(W, X, w->dz, N, M, D, 0);  /* z, in the backward pass's buffer */
        activate(w->dz, w->a, w->da, (int)hidden);
        for (int k = 1; k < L - 1; ++k) {
            dense(W + ((long)M * D + (long)(k - 1) * M * M) * LANES, w->a + (k - 1) * hidden, w->dz, N, M, M, 1);
            activate(w->dz, w->a + k * hidden, w->da + k * hidden, (int)hidden);
        }
        dense(WL, w->a + (L - 2) * hidden, w->r, N, 1, M, 1);
    }
    REAL acc[LANES] = {0};
    for (int i = 0; i < N; ++i) {
        REAL *r = w->r + (long)i * LANES;
        const REAL yi = y[i];
        SIMD FOR_LANES { r[l] -= yi; acc[l] += r[l] * r[l]; }
    }
    SIMD FOR_LANES value[l] = acc[l] / (REAL)N;
}

/* The loss of one chunk into value, and its gradient into w->g. */
static void loss_and_grad(const REAL *W, int L, int N, const REAL *X, const REAL *y, Work *w, REAL *value) {
    const long hidden = (long)N * M * LANES;
    const REAL *WL = W + (n_params(L) - (L == 1 ? D : M)) * LANES;
    forward(W, L, N, X, y, w, value);
    /* backward: dout = (2/n) r, then through the layers from the top */
    for (int i = 0; i < N; ++i) {
        REAL *r = w->r + (long)i * LANES;
        SIMD FOR_LANES r[l] *= (REAL)2 / (REAL)N;
    }
    REAL *gL = w->g + (WL - W);
    if (L == 1) {
        outer(w->r, X, gL, N, 1, D, 0);
        return;
    }
    outer(w->r, w->a + (L - 2) * hidden, gL, N, 1, M, 1);
    back(w->r, WL, w->dh, N, 1, M);
    for (int k = L - 2; k >= 0; --k) {
        activate_backward(w->da + k * hidden, w->dh, w->dz, (int)hidden);
        if (k == 0) {
            outer(w->dz, X, w->g, N, M, D, 0);
        } else {
            const long offset = ((long)M * D + (long)(k - 1) * M * M) * LANES;
            outer(w->dz, w->a + (k - 1) * hidden, w->g + offset, N, M, M, 1);
            back(w->dz, W + offset, w->dh, N, M, M);
        }
    }
}

/* Work space for N samples; its buffer (to free), or NULL. */
static REAL *work(Work *w, int L, int N, long P) {
    const long hidden = (long)N * M * LANES, layers = L > 1 ? L - 1 : 1;
    REAL *buf = malloc(sizeof(REAL) * (2 * layers * hidden + 2 * hidden + (long)N * LANES + P * LANES));
    if (!buf) return NULL;
    w->da = buf, w->a = w->da + layers * hidden, w->dh = w->a + layers * hidden;
    w->dz = w->dh + hidden, w->r = w->dz + hidden, w->g = w->r + (long)N * LANES;
    return buf;
}

/* `steps` GD steps of nchunks chunks in place. W: [nchunks][P][LANES]; lr, cap, value, first: [nchunks][LANES];
 * alive, moved: [nchunks][LANES] (0/1); alive_steps: [nchunks][LANES]. value: the loss before the last step;
 * first: before the first (a recording step's training loss); with a test set (NT > 0: Xt [NT][D], yt [NT]),
 * first_test: the test loss before the first step; moved: whether the last step changed any of the
 * network's weights (a network it did not is at a fixed point of the GD map). */
int dlnpipe_steps(int nchunks, int L, int N, long steps, REAL *W, const REAL *X, const REAL *y, const REAL *lr,
                  const REAL *cap, uint8_t *alive, int64_t *alive_steps, REAL *value, REAL *first, uint8_t *moved,
                  int NT, const REAL *Xt, const REAL *yt, REAL *first_test) {
    const long P = n_params(L);
    Work w, wt;
    REAL *buf = work(&w, L, N, P), *buft = NT > 0 ? work(&wt, L, NT, P) : NULL;
    if (!buf || (NT > 0 && !buft)) {
        free(buf), free(buft);
        return 1;
    }
    for (int c = 0; c < nchunks; ++c) {
        REAL *Wc = W + c * P * LANES, *vc = value + c * LANES, *fc = first + c * LANES;
        const REAL *lc = lr + c * LANES, *cc = cap + c * LANES;
        uint8_t *ac = alive + c * LANES, *mc = moved + c * LANES;
        int64_t *sc = alive_steps + c * LANES;
        if (NT > 0) forward(Wc, L, NT, Xt, yt, &wt, first_test + c * LANES);
        FOR_LANES mc[l] = 0;
        for (long t = 0; t < steps; ++t) {
            loss_and_grad(Wc, L, N, X, y, &w, vc);
            if (t == 0) FOR_LANES fc[l] = vc[l];
            REAL step[LANES];
            FOR_LANES {
                ac[l] = ac[l] && vc[l] <= cc[l];
                sc[l] += ac[l];
                step[l] = ac[l] ? lc[l] : (REAL)0;
            }
            if (t + 1 < steps) {
                for (long p = 0; p < P; ++p) {
                    REAL *wp = Wc + p * LANES;
                    const REAL *gp = w.g + p * LANES;
                    SIMD FOR_LANES wp[l] -= step[l] * nan_to_num(gp[l]);
                }
            } else {  /* the last step: also note which weights it moved */
                for (long p = 0; p < P; ++p) {
                    REAL *wp = Wc + p * LANES;
                    const REAL *gp = w.g + p * LANES;
                    FOR_LANES {
                        const REAL old = wp[l];
                        wp[l] -= step[l] * nan_to_num(gp[l]);
                        mc[l] |= wp[l] != old;
                    }
                }
            }
        }
    }
    free(buf), free(buft);
    return 0;
}

/* The lanes per chunk this build packs (the caller lays its arrays out by it). */
int dlnpipe_lanes(void) { return LANES; }
