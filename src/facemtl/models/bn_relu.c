/* Training-mode batch norm followed by ReLU on channels-last (NHWC) float32 tensors, for the CPU
   speed paths (facemtl/models/bn_relu.py loads it; see there for why it exists).

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

/* Per-channel sums s1 = sum(u), s2 = sum(u * w) over one block, where, per element,
   mode 0: u = x - k, w = u (shifted moments of x);
   mode 1: u = (PRE(x) > 0 ? g : 0), w = x - k (gradient sums of the backward pass). */
static void channel_sums(int mode, const float *x, const float *scale, const float *shift, const float *g,
                         int64_t m, int64_t c, const float *k, double *s1, double *s2, int threads) {
    int64_t p = period(c), groups = m * c / p;
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
   mode 1 (input gradient): out = a * u + b * x + e, u = PRE(x, scale, shift) > 0 ? g : 0. */
static void channel_affine(int mode, const float *x, const float *scale, const float *shift, const float *g,
                           float *out, int64_t m, int64_t c, const float *a, const float *b, const float *e,
                           int threads) {
    int64_t p = period(c), groups = m * c / p;
    float *st = tiled(scale, c, p), *ht = tiled(shift, c, p);
    float *at = tiled(mode ? a : scale, c, p), *bt = tiled(mode ? b : scale, c, p), *et = tiled(mode ? e : scale, c, p);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t q = 0; q < groups; q++) {
        const float *xs = x + q * p;
        float *o = out + q * p;
        if (mode == 0) {
            for (int64_t j = 0; j < p; j++) { float v = PRE(xs[j], st[j], ht[j]); o[j] = v > 0.f ? v : 0.f; }
        } else {
            const float *gs = g + q * p;
            for (int64_t j = 0; j < p; j++)
                o[j] = at[j] * (PRE(xs[j], st[j], ht[j]) > 0.f ? gs[j] : 0.f) + bt[j] * xs[j] + et[j];
        }
    }
    for (int64_t i = groups * p; i < m * c; i++) {
        int64_t j = i % c;
        float v = PRE(x[i], scale[j], shift[j]);
        if (mode == 0) out[i] = v > 0.f ? v : 0.f;
        else out[i] = a[j] * (v > 0.f ? g[i] : 0.f) + b[j] * x[i] + e[j];
    }
    free(st);
    free(ht);
    free(at);
    free(bt);
    free(et);
}

/* y = relu(batch_norm(x)); saves, per block and channel (each chunks x c), the mean, 1/std and
   the forward's scale and shift, and updates the running statistics (unbiased variance, as
   torch.nn.functional.batch_norm). */
void bn_relu_forward(const float *x, float *y, int64_t chunks, int64_t m, int64_t c, const float *weight,
                     const float *bias, float *running_mean, float *running_var, double momentum, double eps,
                     float *save_mean, float *save_invstd, float *save_scale, float *save_shift, int threads) {
    double *s1 = malloc(2 * c * sizeof(double)), *s2 = s1 + c;
    for (int64_t k = 0; k < chunks; k++) {
        const float *xk = x + k * m * c, *wk = weight + k * c, *bk = bias + k * c;
        float *scale = save_scale + k * c, *shift = save_shift + k * c;
        channel_sums(0, xk, NULL, NULL, NULL, m, c, xk, s1, s2, threads); /* shifted by the first row */
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
        channel_affine(0, xk, scale, shift, NULL, y + k * m * c, m, c, NULL, NULL, NULL, threads);
    }
    free(s1);
}

/* Gradients of bn_relu_forward: with g = gy where y > 0 and xhat = (x - mean) * invstd,
   grad_weight = sum(g * xhat), grad_bias = sum(g),
   grad_x = weight * invstd * (g - mean(g) - xhat * mean(g * xhat)), as a * g + b * x + e.
   Reads x and gy only: the ReLU's mask is recomputed from x (PRE). */
void bn_relu_backward(const float *x, const float *gy, float *gx, int64_t chunks, int64_t m, int64_t c,
                      const float *weight, const float *save_mean, const float *save_invstd,
                      const float *save_scale, const float *save_shift, float *grad_weight, float *grad_bias,
                      int threads) {
    double *sg = malloc(2 * c * sizeof(double)), *sgx = sg + c;
    float *a = malloc(3 * c * sizeof(float)), *b = a + c, *e = b + c;
    for (int64_t k = 0; k < chunks; k++) {
        const float *mean = save_mean + k * c, *invstd = save_invstd + k * c, *wk = weight + k * c;
        const float *scale = save_scale + k * c, *shift = save_shift + k * c;
        int64_t off = k * m * c;
        channel_sums(1, x + off, scale, shift, gy + off, m, c, mean, sg, sgx, threads);
        for (int64_t j = 0; j < c; j++) {
            double is = invstd[j], aj = wk[j] * is, bj = -wk[j] * is * is * is * sgx[j] / m;
            grad_weight[k * c + j] = (float)(sgx[j] * is);
            grad_bias[k * c + j] = (float)sg[j];
            a[j] = (float)aj;
            b[j] = (float)bj;
            e[j] = (float)(-aj * sg[j] / m - bj * mean[j]);
        }
        channel_affine(1, x + off, scale, shift, gy + off, gx + off, m, c, a, b, e, threads);
    }
    free(sg);
    free(a);
}
