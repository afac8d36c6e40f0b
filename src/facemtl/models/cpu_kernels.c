/* Kernels of the CPU speed paths on channels-last (NHWC) float32 tensors: training-mode batch norm
   followed by ReLU (optionally of a concatenation), and 2x2 max pooling keeping its input
   (facemtl/models/cpu_kernels.py loads them; see there for why they exist).

   x holds `chunks` equal blocks of m rows of c floats; block k is normalised with its own batch
   statistics and the k-th row of weight, bias and running statistics (a stacked per-source batch,
   facemtl/models/norm.py). The flat block is walked in periods of p = lcm(c, 16) floats, so the
   inner loops have one fixed, vectorisable length whatever c is (PyTorch's channels-last kernels
   slow down 3-10x when c is not a multiple of 16); per-channel values are tiled to one period.
   Sums are taken per thread in float over short runs and added up in double. */

#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FLUSH 64 /* periods summed in float before a partial sum goes to double */

static int64_t period(int64_t c) {
    int64_t a = c, b = 16;
    while (b) { int64_t t = a % b; a = b; b = t; }
    return c / a * 16;
}

static float *tiled(const float *v, int64_t c, int64_t p) {
    float *out = malloc(p * sizeof(float));
    for (int64_t j = 0; j < p; j++) out[j] = v[j % c];
    return out;
}

/* The ReLU's input, recomputed in the backward pass: the same fused multiply-add as the forward
   pass, so the two agree bit for bit on which elements were clipped (no need to read y back). */
#define PRE(x, scale, shift) fmaf((x), (scale), (shift))

/* x = cat(a, b) along channels (rows of ca and c - ca floats), rows r0 .. r1 - 1 */
static void cat_rows(float *x, const float *a, const float *b, int64_t ca, int64_t c, int64_t r0, int64_t r1) {
    int64_t cb = c - ca;
    for (int64_t r = r0; r < r1; r++) { /* loops, not memcpy: rows are a few dozen floats */
        float *xr = x + r * c;
        const float *ar = a + r * ca, *br = b + r * cb;
        for (int64_t j = 0; j < ca; j++) xr[j] = ar[j];
        for (int64_t j = 0; j < cb; j++) xr[ca + j] = br[j];
    }
}

/* Its inverse: rows of c floats of x -> rows of ca floats of a and of c - ca floats of b. */
static void split_rows(const float *x, float *a, float *b, int64_t ca, int64_t c, int64_t rows) {
    int64_t cb = c - ca;
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * c;
        float *ar = a + r * ca, *br = b + r * cb;
        for (int64_t j = 0; j < ca; j++) ar[j] = xr[j];
        for (int64_t j = 0; j < cb; j++) br[j] = xr[ca + j];
    }
}

/* Per-channel sums s1 = sum(u), s2 = sum(u * w) over one block, where, per element,
   mode 0: u = x - k, w = u (shifted moments of x);
   mode 1: u = (PRE(x) > 0 ? g : 0), w = x - k (gradient sums of the backward pass).
   With cat_a, x is first written as cat(cat_a, cat_b), group by group (see cat_rows). */
static void channel_sums(int mode, const float *x, const float *scale, const float *shift, const float *g,
                         int64_t m, int64_t c, const float *k, double *s1, double *s2, int threads,
                         const float *cat_a, const float *cat_b, int64_t ca) {
    int64_t p = period(c), groups = m * c / p;
    float *xw = (float *)x; /* written first, group by group, when it is the concatenation of cat_a, cat_b */
    float *kt = tiled(k, c, p), *st = tiled(mode ? scale : k, c, p), *ht = tiled(mode ? shift : k, c, p);
    memset(s1, 0, c * sizeof(double));
    memset(s2, 0, c * sizeof(double));
    /* one partial sum per thread, added up in thread order afterwards: the same result on
       every run (a critical section would add them in whichever order the threads finish) */
    double *parts = calloc((size_t)threads * 2 * p, sizeof(double));
#pragma omp parallel num_threads(threads)
    {
        float *a1 = calloc(2 * p, sizeof(float)), *a2 = a1 + p;
        double *d1 = parts + (size_t)omp_get_thread_num() * 2 * p, *d2 = d1 + p;
        int n = 0;
#pragma omp for schedule(static)
        for (int64_t q = 0; q < groups; q++) {
            const float *xs = x + q * p;
            if (cat_a) cat_rows(xw, cat_a, cat_b, ca, c, q * p / c, (q + 1) * p / c); /* still in cache below */
            if (mode == 0) {
                for (int64_t j = 0; j < p; j++) { float u = xs[j] - kt[j]; a1[j] += u; a2[j] += u * u; }
            } else {
                const float *gs = g + q * p;
                for (int64_t j = 0; j < p; j++) {
                    float u = PRE(xs[j], st[j], ht[j]) > 0.f ? gs[j] : 0.f;
                    a1[j] += u; a2[j] += u * (xs[j] - kt[j]);
                }
            }
            if (++n == FLUSH) {
                for (int64_t j = 0; j < p; j++) { d1[j] += a1[j]; d2[j] += a2[j]; a1[j] = 0.f; a2[j] = 0.f; }
                n = 0;
            }
        }
        for (int64_t j = 0; j < p; j++) { d1[j] += a1[j]; d2[j] += a2[j]; }
        free(a1);
    }
    for (int t = 0; t < threads; t++) {
        const double *d1 = parts + (size_t)t * 2 * p, *d2 = d1 + p;
        for (int64_t j = 0; j < p; j++) { s1[j % c] += d1[j]; s2[j % c] += d2[j]; }
    }
    free(parts);
    if (cat_a) cat_rows(xw, cat_a, cat_b, ca, c, groups * p / c, m);
    for (int64_t i = groups * p; i < m * c; i++) { /* the rows that do not fill a period */
        int64_t j = i % c;
        double u = mode == 0 ? x[i] - k[j] : (PRE(x[i], scale[j], shift[j]) > 0.f ? g[i] : 0.f);
        s1[j] += u;
        s2[j] += mode == 0 ? u * u : u * (x[i] - k[j]);
    }
    free(kt);
    free(st);
    free(ht);
}

/* mode 0 (forward): out = max(0, PRE(x, scale, shift));
   mode 1 (input gradient): out = a * u + b * x + e (+ add, when given: a second gradient of x,
   whose rows of c values lie add_stride floats apart),
   u = PRE(x, scale, shift) > 0 ? g : 0. With out2, each row's first ca values go to out (rows of
   ca) and the rest to out2 (rows of c - ca): the gradients of the two pieces of a concatenation. */
static void channel_affine(int mode, const float *x, const float *scale, const float *shift, const float *g,
                           float *out, int64_t m, int64_t c, const float *a, const float *b, const float *e,
                           int threads, const float *add, int64_t add_stride, float *out2, int64_t ca) {
    int64_t p = period(c), groups = m * c / p, cb = c - ca;
    float *st = tiled(scale, c, p), *ht = tiled(shift, c, p);
    float *at = tiled(mode ? a : scale, c, p), *bt = tiled(mode ? b : scale, c, p), *et = tiled(mode ? e : scale, c, p);
#pragma omp parallel num_threads(threads)
    {
        float *tmp = out2 ? malloc(p * sizeof(float)) : NULL;
#pragma omp for schedule(static)
        for (int64_t q = 0; q < groups; q++) {
            const float *xs = x + q * p;
            float *o = out2 ? tmp : out + q * p;
            if (mode == 0) {
                for (int64_t j = 0; j < p; j++) { float v = PRE(xs[j], st[j], ht[j]); o[j] = v > 0.f ? v : 0.f; }
            } else {
                const float *gs = g + q * p;
                for (int64_t j = 0; j < p; j++)
                    o[j] = at[j] * (PRE(xs[j], st[j], ht[j]) > 0.f ? gs[j] : 0.f) + bt[j] * xs[j] + et[j];
                if (add) /* rows of c values, add_stride apart (a channel slice of a wider tensor) */
                    for (int64_t r = 0, r0 = q * p / c; r < p / c; r++) {
                        const float *ds = add + (r0 + r) * add_stride;
                        float *orow = o + r * c;
                        for (int64_t j = 0; j < c; j++) orow[j] += ds[j];
                    }
            }
            if (out2) split_rows(tmp, out + q * p / c * ca, out2 + q * p / c * cb, ca, c, p / c);
        }
        free(tmp);
    }
    for (int64_t i = groups * p; i < m * c; i++) {
        int64_t j = i % c;
        float v = PRE(x[i], scale[j], shift[j]), o;
        if (mode == 0) o = v > 0.f ? v : 0.f;
        else {
            o = a[j] * (v > 0.f ? g[i] : 0.f) + b[j] * x[i] + e[j];
            if (add) o += add[i / c * add_stride + j];
        }
        if (!out2) out[i] = o;
        else if (j < ca) out[i / c * ca + j] = o;
        else out2[i / c * cb + j - ca] = o;
    }
    free(st);
    free(ht);
    free(at);
    free(bt);
    free(et);
}

/* y = relu(batch_norm(x)); saves, per block and channel (each chunks x c), the mean, 1/std and
   the forward's scale and shift, and updates the running statistics (unbiased variance, as
   torch.nn.functional.batch_norm). With cat_a (rows of ca floats) and cat_b (rows of c - ca),
   x is first written as their concatenation along channels, in the same pass that sums it. */
void bn_relu_forward(float *x, float *y, int64_t chunks, int64_t m, int64_t c, const float *weight,
                     const float *bias, float *running_mean, float *running_var, double momentum, double eps,
                     float *save_mean, float *save_invstd, float *save_scale, float *save_shift, int threads,
                     const float *cat_a, const float *cat_b, int64_t ca) {
    double *s1 = malloc(2 * c * sizeof(double)), *s2 = s1 + c;
    for (int64_t k = 0; k < chunks; k++) {
        float *xk = x + k * m * c;
        const float *wk = weight + k * c, *bk = bias + k * c;
        const float *ak = cat_a ? cat_a + k * m * ca : NULL, *bk2 = cat_a ? cat_b + k * m * (c - ca) : NULL;
        float *scale = save_scale + k * c, *shift = save_shift + k * c;
        if (ak) cat_rows(xk, ak, bk2, ca, c, 0, 1); /* the first row: the shift of the sums */
        channel_sums(0, xk, NULL, NULL, NULL, m, c, xk, s1, s2, threads, ak, bk2, ca); /* shifted by the first row */
        for (int64_t j = 0; j < c; j++) {
            double mu = s1[j] / m, var = s2[j] / m - mu * mu;
            if (var < 0) var = 0;
            double mean = mu + xk[j], invstd = 1.0 / sqrt(var + eps);
            save_mean[k * c + j] = (float)mean;
            save_invstd[k * c + j] = (float)invstd;
            running_mean[k * c + j] = (float)((1 - momentum) * running_mean[k * c + j] + momentum * mean);
            running_var[k * c + j] = (float)((1 - momentum) * running_var[k * c + j]
                                             + momentum * var * m / (m > 1 ? m - 1 : 1));
            scale[j] = (float)(wk[j] * invstd);
            shift[j] = (float)(bk[j] - mean * wk[j] * invstd);
        }
        channel_affine(0, xk, scale, shift, NULL, y + k * m * c, m, c, NULL, NULL, NULL, threads, NULL, 0, NULL, c);
    }
    free(s1);
}

/* Gradients of bn_relu_forward: with g = gy where y > 0 and xhat = (x - mean) * invstd,
   grad_weight = sum(g * xhat), grad_bias = sum(g),
   grad_x = weight * invstd * (g - mean(g) - xhat * mean(g * xhat)), as a * g + b * x + e.
   Reads x and gy only: the ReLU's mask is recomputed from x (PRE). gx_add (or NULL): another
   gradient of x, added (rows of c values add_stride floats apart). gx2 (or NULL): x was
   cat(a, b) (a: ca channels); a's gradient goes to gx, b's to gx2. */
void bn_relu_backward(const float *x, const float *gy, float *gx, int64_t chunks, int64_t m, int64_t c,
                      const float *weight, const float *save_mean, const float *save_invstd,
                      const float *save_scale, const float *save_shift, float *grad_weight, float *grad_bias,
                      int threads, const float *gx_add, int64_t add_stride, float *gx2, int64_t ca) {
    double *sg = malloc(2 * c * sizeof(double)), *sgx = sg + c;
    float *a = malloc(3 * c * sizeof(float)), *b = a + c, *e = b + c;
    for (int64_t k = 0; k < chunks; k++) {
        const float *mean = save_mean + k * c, *invstd = save_invstd + k * c, *wk = weight + k * c;
        const float *scale = save_scale + k * c, *shift = save_shift + k * c;
        int64_t off = k * m * c;
        channel_sums(1, x + off, scale, shift, gy + off, m, c, mean, sg, sgx, threads, NULL, NULL, 0);
        for (int64_t j = 0; j < c; j++) {
            double is = invstd[j], aj = wk[j] * is, bj = -wk[j] * is * is * is * sgx[j] / m;
            grad_weight[k * c + j] = (float)(sgx[j] * is);
            grad_bias[k * c + j] = (float)sg[j];
            a[j] = (float)aj;
            b[j] = (float)bj;
            e[j] = (float)(-aj * sg[j] / m - bj * mean[j]);
        }
        if (gx2)
            channel_affine(1, x + off, scale, shift, gy + off, gx + k * m * ca, m, c, a, b, e, threads,
                           gx_add ? gx_add + k * m * add_stride : NULL, add_stride, gx2 + k * m * (c - ca), ca);
        else
            channel_affine(1, x + off, scale, shift, gy + off, gx + off, m, c, a, b, e, threads,
                           gx_add ? gx_add + k * m * add_stride : NULL, add_stride, NULL, c);
    }
    free(sg);
    free(a);
}

/* 2x2 max pooling with stride 2 of an NHWC batch x (n, h, w, c; h and w even) -> out
   (n, h/2, w/2, c), and in idx which of the four inputs won (dy * 2 + dx). PyTorch's rule: the
   first maximum in scan order, and a NaN wins over numbers (the last NaN).
   Channels are taken 16 at a time (the last 16 overlapping the previous ones when c is not a
   multiple of 16): a loop of c iterations leaves its remainder to scalar code whose
   data-dependent branches ran 10x slower than the vector code for c = 28. */
#define LANES 16

static inline void pool_lanes(int64_t len, const float *restrict p0, const float *restrict p1,
                              const float *restrict p2, const float *restrict p3, float *restrict o,
                              uint8_t *restrict ix) {
    for (int64_t j = 0; j < len; j++) {
        float m = p0[j], v; /* starting from p0 equals PyTorch's start from -inf with index 0 */
        int k = 0, t;
        v = p1[j]; t = (v > m) | (v != v); m = t ? v : m; k = t ? 1 : k;
        v = p2[j]; t = (v > m) | (v != v); m = t ? v : m; k = t ? 2 : k;
        v = p3[j]; t = (v > m) | (v != v); m = t ? v : m; k = t ? 3 : k;
        o[j] = m;
        ix[j] = (uint8_t)k;
    }
}

/* With cat_a (rows of ca floats) and cat_b (rows of c - ca), x is first written as their
   concatenation along channels, two input rows at a time, just before they are pooled. */
void max_pool_forward(float *x, float *out, uint8_t *idx, int64_t n, int64_t h, int64_t w, int64_t c,
                      int threads, const float *cat_a, const float *cat_b, int64_t ca) {
    int64_t ho = h / 2, wo = w / 2;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < n * ho; r++) {
        int64_t first = (r / ho * h + r % ho * 2) * w; /* first pixel of the two input rows */
        if (cat_a) cat_rows(x, cat_a, cat_b, ca, c, first, first + 2 * w);
        const float *x0 = x + first * c, *x1 = x0 + w * c;
        for (int64_t q = 0; q < wo; q++) {
            const float *p0 = x0 + 2 * q * c, *p2 = x1 + 2 * q * c;
            float *o = out + (r * wo + q) * c;
            uint8_t *ix = idx + (r * wo + q) * c;
            if (c < LANES) {
                pool_lanes(c, p0, p0 + c, p2, p2 + c, o, ix);
                continue;
            }
            for (int64_t j = 0;; j += LANES) {
                if (j + LANES > c) j = c - LANES;
                pool_lanes(LANES, p0 + j, p0 + c + j, p2 + j, p2 + c + j, o + j, ix + j);
                if (j + LANES == c) break;
            }
        }
    }
}

/* GCC/Clang vector types: 16 lanes, lowered to whatever vector width the CPU has */
typedef float vf16 __attribute__((vector_size(64)));
typedef int32_t vi16 __attribute__((vector_size(64)));
typedef uint8_t vb16 __attribute__((vector_size(16)));

static inline void unpool_16(vi16 k, const float *g, const uint8_t *ix, const float *skip, float *out) {
    vf16 gv, o;
    vb16 b;
    memcpy(&gv, g, sizeof gv);
    memcpy(&b, ix, sizeof b);
    vi16 won = __builtin_convertvector(b, vi16) == k; /* -1 where this input won, else 0 */
    o = (vf16)((vi16)gv & won);                       /* the gradient there, +0.0 elsewhere */
    if (skip) {
        vf16 sv;
        memcpy(&sv, skip, sizeof sv);
        o = sv + o;
    }
    memcpy(out, &o, sizeof o);
}

/* Gradient of max_pool_forward's input: gout where the input won, 0 elsewhere, plus gskip (or
   NULL): the input's gradient from its other readers, rows of c values skip_stride floats apart.
   With gx2, x was cat(a, b) (a: ca channels): a's gradient goes to gx, b's to gx2. */
void max_pool_backward(const float *gout, const uint8_t *idx, const float *gskip, int64_t skip_stride, float *gx,
                       int64_t n, int64_t h, int64_t w, int64_t c, int threads, float *gx2, int64_t ca) {
    int64_t ho = h / 2, wo = w / 2, cb = c - ca;
#pragma omp parallel num_threads(threads)
    {
    float *row = gx2 ? malloc(c * sizeof(float)) : NULL; /* one pixel's gradient, then split */
#pragma omp for schedule(static)
    for (int64_t r = 0; r < n * h; r++) {
        int64_t ro = r / h * ho + r % h / 2, dy = r % 2;
        for (int64_t xi = 0; xi < w; xi++) {
            int k = (int)(dy * 2 + xi % 2);
            const float *g = gout + (ro * wo + xi / 2) * c;
            const uint8_t *ix = idx + (ro * wo + xi / 2) * c;
            const float *skip = gskip ? gskip + (r * w + xi) * skip_stride : NULL;
            float *out = gx2 ? row : gx + (r * w + xi) * c;
            if (c < LANES) {
                for (int64_t j = 0; j < c; j++) out[j] = (skip ? skip[j] : 0.f) + (ix[j] == k ? g[j] : 0.f);
            } else {
                vi16 kv = k - (vi16){0}; /* k in every lane */
                for (int64_t j = 0;; j += LANES) {
                    if (j + LANES > c) j = c - LANES;
                    unpool_16(kv, g + j, ix + j, skip ? skip + j : NULL, out + j);
                    if (j + LANES == c) break;
                }
            }
            if (gx2) split_rows(row, gx + (r * w + xi) * ca, gx2 + (r * w + xi) * cb, ca, c, 1);
        }
    }
    free(row);
    }
}
