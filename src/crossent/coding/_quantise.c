/* Rows of predicted weights quantised to the coder's integer frequencies, in one pass a row.

   For a row of weights u (M classes, any non-negative scale), with U_k = u_0 + ... + u_k the
   running sum (added left to right, in double) and T = 2^24:

       cut_k = floor(U_k * ((T - M) / U_M))  for k < M - 1,   cut_{M-1} = T - M  (exact)
       free_k = cut_k - cut_{k-1}  (cut_{-1} = 0):  the frequency w_k = free_k + 1 minus 1

   exactly as NumPy's cumsum, multiply, floor and subtract compute them (the same double
   operations in the same order, none of them fusable), so files coded by either decode with
   the other. Also each row's fingerprint, the sum of its cuts (an integer below 2^48, exact
   in double whatever the order), and, given labels y, the two code lengths in bits:
   log2 U_M - log2 u_y (the float model's NLL) and 24 - log2 w_y (the quantised model's).

   A row with a negative, NaN or infinite weight, or whose weights are all 0, is refused:
   the call returns its index and writes nothing further. The GIL is released. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>

#define TOTAL 16777216.0 /* 2^24 */

typedef struct {
    double nll, quantised;
} Bits;

/* One row; returns 0, or 1 where the row's weights cannot be quantised. */
static int row(const double *u, int64_t m, double *free, double *fingerprint, int32_t y,
               Bits *bits) {
    double total = 0.0;
    int bad = 0;
    for (int64_t j = 0; j < m; j++) {
        bad |= !(u[j] >= 0.0); /* NaN too */
        total += u[j];
    }
    if (bad || !(total > 0.0) || isinf(total)) return 1;
    const double factor = (TOTAL - (double)m) / total;
    double running = 0.0, previous = 0.0, sum = 0.0;
    for (int64_t j = 0; j < m - 1; j++) {
        running += u[j];
        /* floor by truncation: running * factor is in [0, 2^24), where the two agree, and
           truncation is one instruction on every x86-64, where floor() may be a call */
        const double cut = (double)(int64_t)(running * factor);
        free[j] = cut - previous;
        previous = cut;
        sum += cut;
    }
    free[m - 1] = (TOTAL - (double)m) - previous;
    *fingerprint = sum + (TOTAL - (double)m);
    if (y >= 0) {
        bits->nll += log2(total) - log2(u[y]); /* u_y = 0: +inf bits, as the math says */
        bits->quantised += 24.0 - log2(free[y] + 1.0);
    }
    return 0;
}

/* free_frequencies(u, rows, classes, labels, free, fingerprint) -> (bad_row, nll, quantised):
   addresses of C-contiguous double u (rows x classes), int32 labels (0: none), double free
   (rows x classes) and double fingerprint (rows). bad_row is -1 or the first refused row. */
static PyObject *free_frequencies(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long u, labels, free, fingerprint;
    long long rows, classes;
    if (!PyArg_ParseTuple(args, "KLLKKK", &u, &rows, &classes, &labels, &free, &fingerprint))
        return NULL;
    if (rows < 0 || classes < 2) {
        PyErr_SetString(PyExc_ValueError, "rows must be >= 0 and classes >= 2");
        return NULL;
    }
    const double *weights = (const double *)(uintptr_t)u;
    const int32_t *y = (const int32_t *)(uintptr_t)labels;
    double *out = (double *)(uintptr_t)free, *prints = (double *)(uintptr_t)fingerprint;
    Bits bits = {0.0, 0.0};
    long long bad = -1;
    Py_BEGIN_ALLOW_THREADS for (long long i = 0; i < rows; i++) {
        const int32_t label = y ? y[i] : -1;
        if (row(weights + i * classes, classes, out + i * classes, prints + i, label, &bits)) {
            bad = i;
            break;
        }
    }
    Py_END_ALLOW_THREADS return Py_BuildValue("Ldd", bad, bits.nll, bits.quantised);
}

static PyMethodDef METHODS[] = {
    {"free_frequencies", free_frequencies, METH_VARARGS,
     "free_frequencies(u, rows, classes, labels, free, fingerprint) -> (bad_row, nll_bits,\n"
     "quantised_bits): the coder's frequencies minus 1 of rows of weights, from addresses."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_quantise",
    .m_doc = "crossent's compiled quantiser of predicted weights for the range coder.",
    .m_size = -1,
    .m_methods = METHODS,
};

PyMODINIT_FUNC PyInit__quantise(void) { return PyModule_Create(&MODULE); }
