/* The cross entropy of float32 rows with index targets, and its gradient, in one pass per row.

   For row i with logits x (C classes), label y, class weights w (W = sum_j w_j), smoothing eps,
   z-loss z and gradient factor f (0 for an ignored row):

       m = max_j x_j,   s = sum_j exp(x_j - m),   lse = m + log s
       loss = (1 - eps) w_y (lse - x_y) + (eps / C)(W lse - sum_j w_j x_j) + z lse^2   (nats)
       (a term whose weight is 0 is 0, also where its logit is -inf)
       dloss/dx_j = f [exp(x_j - m) / s ((1 - eps) w_y + (eps / C) W + 2 z lse)
                       - (1 - eps) w_y [j = y] - (eps / C) w_j]

   The row is read from memory once (for its max, in the same loop as the previous row's
   exponentials, so that memory and arithmetic overlap); exp(x - m) is written where the
   gradient goes and scaled there while the row is still in the core's cache. No other N x C
   memory is used, and the gradient may overwrite the logits.

   exp is a vectorisable polynomial that gives exp(-inf) = 0; a NaN logit makes the row's sum
   NaN, so NaN and +inf logits give a NaN row, as torch's softmax does; results below
   float32's normal range are flushed to 0. A two-class softmax through it is within 1.9e-7
   of float64's, and row sums are added up in double, so the softmax is as close to float64's
   as torch's own, or closer on long rows (tests/test_native_cross_entropy.py). exp's
   argument x_j - m is never positive because each row is its own memory: the caller never
   passes a gradient whose rows overlap.

   Each instruction-set level is its own compiled copy of the same code, chosen at run time:
   0 = the compiler's baseline, 1 = x86-64-v3 (AVX2, FMA), 2 = x86-64-v4 (AVX-512). */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    const float *x;          /* rows x ld floats */
    int64_t x_ld;
    float *out;              /* the gradient, rows x out_ld; NULL: not wanted; may be x */
    int64_t out_ld;
    const int64_t *y;        /* labels */
    int64_t rows, classes;
    const float *weight;     /* NULL: every class weighs 1 */
    double total_weight;     /* W */
    int64_t ignore_index;
    double eps, z;
    const float *scale;      /* f of row i is scale[i * scale_step]; NULL: factor */
    int64_t scale_step;
    double factor;           /* f of every row when scale is NULL */
    float *loss;             /* rows */
    float *lse;              /* rows; NULL: not wanted */
} Rows;

#define EXP_LOW (-87.33654f) /* log of float32's smallest normal number */
#define ROUNDER 12582912.0f    /* 1.5 * 2^23: adding it rounds to an integer (SSE2 can do it) */

/* exp(t) for t <= 0 (-inf gives 0, NaN too): t = k ln 2 + r with |r| <= ln 2 / 2 (Cephes'
   split of ln 2, exact without fused multiply-adds, which the compiler may still use), then
   exp(r) = 1 + r + r^2 P(r), P of degree 4 fitted for the least relative error (3e-9; 7e-8
   in float32 arithmetic), one term shorter than Cephes' and as accurate in float32;
   tools/exp_polynomial.py derives P again and checks these coefficients. */
static inline float exp_nonpositive(float t) {
    float c = t > EXP_LOW ? t : EXP_LOW; /* NaN and -inf become EXP_LOW here ... */
    float k = (c * 1.44269504088896341f + ROUNDER) - ROUNDER; /* round to nearest: |k| < 2^22 */
    float r = k * -0.693359375f + c;
    r = k * 2.12194440e-4f + r;
    float p = 0.0013814592966809869f;
    p = p * r + 0.008368708193302155f;
    p = p * r + 0.04166838899254799f;
    p = p * r + 0.1666652113199234f;
    p = p * r + 0.4999999403953552f;
    p = p * r * r + r + 1.0f;
    uint32_t bits = (uint32_t)((int32_t)k + 127) << 23; /* 2^k, k in [-126, 0]: a shift */
    float two_k;
    memcpy(&two_k, &bits, sizeof two_k);
    return t > EXP_LOW ? p * two_k : 0.0f; /* ... and give 0 here: a NaN is caught apart */
}

static inline __attribute__((always_inline)) float row_max(const float *x, int64_t n) {
    float m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (int64_t j = 0; j < n; j++) m = x[j] > m ? x[j] : m;
    return m;
}

typedef struct {
    double s, wx;   /* sum_j exp(x_j - m) and sum_j w_j x_j, added up in double ... */
    float next_max; /* max_j of the next row */
} Pass;

#define BLOCK 512 /* ... from float32 sums of this many numbers: as exact as a float64 sum */

/* A row's pass over its cached logits x: e_j = exp(x_j - m), into g if STORE, and their sum;
   sum_j w_j x_j if SMOOTH (1: every w_j = 1; 2: the class weights, where a class of weight 0
   adds 0, even at -inf); and the max of the next row xn, whose read from memory so overlaps
   this row's arithmetic. */
static inline __attribute__((always_inline)) Pass exp_pass(const float *x, const float *xn,
                                                           float *g, const float *w, int64_t n,
                                                           float m, const int STORE,
                                                           const int SMOOTH) {
    Pass pass = {0.0, 0.0, -INFINITY};
    float next_max = -INFINITY;
    for (int64_t start = 0; start < n; start += BLOCK) {
        const int64_t stop = n - start > BLOCK ? start + BLOCK : n;
        float s = 0.0f, wx = 0.0f;
        int nans = 0;
#pragma omp simd reduction(+ : s, wx, nans) reduction(max : next_max)
        for (int64_t j = start; j < stop; j++) {
            next_max = xn[j] > next_max ? xn[j] : next_max;
            const float x_j = x[j], e = exp_nonpositive(x_j - m); /* x_j before g_j (may be x_j) */
            nans += x_j != x_j;
            if (SMOOTH == 1) wx += x_j;
            if (SMOOTH == 2) wx += w[j] != 0.0f ? w[j] * x_j : 0.0f;
            if (STORE) g[j] = e;
            s += e;
        }
        pass.s += nans ? NAN : s; /* a NaN logit: the row's loss and gradient are NaN */
        pass.wx += wx;
    }
    pass.next_max = next_max;
    return pass;
}

/* exp_pass with its switches as constants, so that each loop is compiled for its case. */
static inline __attribute__((always_inline)) Pass exp_pass_for(const float *x, const float *xn,
                                                               float *g, const float *w,
                                                               int64_t n, float m, int store,
                                                               int smooth) {
    if (store)
        return smooth == 0   ? exp_pass(x, xn, g, w, n, m, 1, 0)
               : smooth == 1 ? exp_pass(x, xn, g, w, n, m, 1, 1)
                             : exp_pass(x, xn, g, w, n, m, 1, 2);
    return smooth == 0   ? exp_pass(x, xn, g, w, n, m, 0, 0)
           : smooth == 1 ? exp_pass(x, xn, g, w, n, m, 0, 1)
                         : exp_pass(x, xn, g, w, n, m, 0, 2);
}

/* An ignored row i: loss 0 and a gradient row g (if any) of exact zeros, whatever its logits. */
static inline void ignore(const Rows *a, int64_t i, float *g) {
    a->loss[i] = 0.0f;
    if (g) memset(g, 0, (size_t)a->classes * sizeof *g);
}

/* Row i, whose max is m: its loss (and log-sum-exp), and its gradient if asked; returns the
   max of the next row xn. */
static inline __attribute__((always_inline)) float one_row(const Rows *a, int64_t i, float m,
                                                           const float *xn) {
    const int64_t n = a->classes;
    const float *x = a->x + i * a->x_ld;
    float *g = a->out ? a->out + i * a->out_ld : NULL;
    const int64_t y = a->y[i];
    const int keep = y != a->ignore_index;
    if (!keep && !a->lse) {
        ignore(a, i, g);
        return row_max(xn, n);
    }
    const float *w = a->weight;
    const int smooth = a->eps != 0.0;
    const float x_y = keep ? x[y] : 0.0f; /* read before the gradient may overwrite it */
    const Pass pass = exp_pass_for(x, xn, g, w, n, m, g && keep, !smooth ? 0 : w ? 2 : 1);
    const double log_s = log(pass.s), lse = (double)m + log_s;
    if (a->lse) a->lse[i] = (float)lse;
    if (!keep) {
        ignore(a, i, g);
        return pass.next_max;
    }
    const double eps = a->eps, w_y = w ? (double)w[y] : 1.0, share = eps / (double)n;
    const double label = (1.0 - eps) * w_y; /* 0: the label's term is 0, even if x_y = -inf */
    double loss = label != 0.0 ? label * (((double)m - (double)x_y) + log_s) : 0.0;
    if (smooth) loss += share * (a->total_weight * lse - pass.wx);
    if (a->z != 0.0) loss += a->z * lse * lse; /* not 0 * NaN where lse is NaN */
    a->loss[i] = (float)loss;
    if (!g) return pass.next_max;
    const double f = a->scale ? (double)a->scale[i * a->scale_step] : a->factor;
    double coef = label + share * a->total_weight;
    if (a->z != 0.0) coef += 2.0 * a->z * lse;
    const float times = (float)(f * coef / pass.s), minus = (float)(f * share);
    if (smooth && w) {
#pragma omp simd
        for (int64_t j = 0; j < n; j++) g[j] = g[j] * times - minus * w[j];
    } else if (smooth) {
#pragma omp simd
        for (int64_t j = 0; j < n; j++) g[j] = g[j] * times - minus;
    } else {
#pragma omp simd
        for (int64_t j = 0; j < n; j++) g[j] *= times;
    }
    g[y] -= (float)(f * label);
    return pass.next_max;
}

/* Every row; returns -1, or the first row whose label is neither ignore_index nor a class. */
static inline __attribute__((always_inline)) int64_t all_rows(const Rows *a) {
    float m = a->rows ? row_max(a->x, a->classes) : 0.0f;
    for (int64_t i = 0; i < a->rows; i++) {
        const int64_t y = a->y[i];
        if (y != a->ignore_index && (y < 0 || y >= a->classes)) return i;
        const float *x = a->x + i * a->x_ld;
        m = one_row(a, i, m, i + 1 < a->rows ? x + a->x_ld : x); /* the last: a cached re-read */
    }
    return -1;
}

static int64_t rows_baseline(const Rows *a) { return all_rows(a); }

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define LEVELS 3
__attribute__((target("arch=x86-64-v3"))) static int64_t rows_v3(const Rows *a) {
    return all_rows(a);
}
__attribute__((target("arch=x86-64-v4"))) static int64_t rows_v4(const Rows *a) {
    return all_rows(a);
}
static int supported(int level) {
    __builtin_cpu_init();
    if (level == 1)
        return __builtin_cpu_supports("x86-64-v3");
    if (level == 2)
        return __builtin_cpu_supports("x86-64-v4");
    return level == 0;
}
static int64_t (*const KERNELS[LEVELS])(const Rows *) = {rows_baseline, rows_v3, rows_v4};
#else
#define LEVELS 1
static int supported(int level) { return level == 0; }
static int64_t (*const KERNELS[LEVELS])(const Rows *) = {rows_baseline};
#endif

static PyObject *levels(PyObject *self, PyObject *unused) {
    (void)self, (void)unused;
    PyObject *out = PyList_New(0);
    for (int level = 0; out && level < LEVELS; level++) {
        if (!supported(level)) continue;
        PyObject *item = PyLong_FromLong(level);
        if (!item || PyList_Append(out, item) < 0) Py_CLEAR(out);
        Py_XDECREF(item);
    }
    return out;
}

/* layout() -> ((name, offset, size) for each field of Rows, in order), sizeof(Rows):
   _native_rows.py builds the same struct with ctypes and checks it against this at import. */
#define FIELD(name) #name, (Py_ssize_t)offsetof(Rows, name), (Py_ssize_t)sizeof(((Rows *)0)->name)
static PyObject *layout(PyObject *self, PyObject *unused) {
    (void)self, (void)unused;
    return Py_BuildValue("((snn)(snn)(snn)(snn)(snn)(snn)(snn)(snn)"
                         "(snn)(snn)(snn)(snn)(snn)(snn)(snn)(snn)(snn))n",
                         FIELD(x), FIELD(x_ld), FIELD(out), FIELD(out_ld), FIELD(y), FIELD(rows),
                         FIELD(classes), FIELD(weight), FIELD(total_weight), FIELD(ignore_index),
                         FIELD(eps), FIELD(z), FIELD(scale), FIELD(scale_step), FIELD(factor),
                         FIELD(loss), FIELD(lse), (Py_ssize_t)sizeof(Rows));
}

/* index_rows(address, level): the rows described by the Rows struct at `address`. */
static PyObject *index_rows(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long address;
    int level;
    if (!PyArg_ParseTuple(args, "Ki", &address, &level)) return NULL;
    if (level < 0 || level >= LEVELS || !supported(level)) {
        PyErr_Format(PyExc_ValueError, "level must be one of levels(), got %d", level);
        return NULL;
    }
    const Rows *a = (const Rows *)(uintptr_t)address;
    int64_t bad;
    Py_BEGIN_ALLOW_THREADS bad = KERNELS[level](a);
    Py_END_ALLOW_THREADS return PyLong_FromLongLong(bad);
}

static PyMethodDef METHODS[] = {
    {"levels", levels, METH_NOARGS,
     "levels() -> list[int]: the instruction-set levels this CPU runs, best last."},
    {"layout", layout, METH_NOARGS,
     "layout() -> (((name, offset, size) of each field of struct Rows, ...), sizeof(Rows))."},
    {"index_rows", index_rows, METH_VARARGS,
     "index_rows(address, level) -> int: losses (and gradient) of the float32 rows with int64\n"
     "labels that the struct Rows at `address` describes; -1, or the first bad label's row."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_native",
    .m_doc = "crossent's compiled CPU kernel.",
    .m_size = -1,
    .m_methods = METHODS,
};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&MODULE); }
