/* Pulse's C speedups for the two hottest pure steps of a flush (see tables/speedups.py).
 *
 * summary_text(state)        the text of a window's aggregates (Summary.text)
 * hset(key, names, values)   "HSET key name value ..." packed in RESP, from str arguments
 *
 * Both compute exactly what the Python definitions compute: the same float operations in the
 * same order (C doubles are Python floats), floats written by PyOS_double_to_string(..., 'r')
 * (which is float.__repr__), and the quantile buckets of tables.aggregators.QuantileSketch,
 * whose constants are handed over by configure() so they are defined once, in Python.
 * tests/tables/test_aggregators.py checks summary_text against Summary.values + repr, and
 * tests/pulse/sinks/test_redis_sink.py checks hset against hiredis.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Summary state layout (tables/aggregators.py). */
enum { COUNT = 0, SUM = 1, MIN = 2, MAX = 3, FIRST_V = 5, LAST_V = 7, SKETCH = 9, STATE_LEN = 10 };

static double gamma_ = 0.0;          /* QuantileSketch.GAMMA */
static long long zero_key = 0;       /* QuantileSketch.ZERO */
static long long negative_key = 0;   /* QuantileSketch.NEGATIVE */
static long long last_positive = 0;  /* QuantileSketch._LAST_POSITIVE */
static int configured = 0;

static PyObject *configure(PyObject *self, PyObject *args) {
    if (!PyArg_ParseTuple(args, "dLLL", &gamma_, &zero_key, &negative_key, &last_positive))
        return NULL;
    configured = 1;
    Py_RETURN_NONE;
}

/* QuantileSketch._order: a sort key putting bucket keys in the order of their values. */
static long long order_of(long long key) {
    if (key <= last_positive) return key;
    if (key == zero_key) return -(1LL << 20);
    return -(1LL << 21) - (key - negative_key);
}

/* QuantileSketch.value: the representative value of a bucket. */
static double representative(long long key) {
    if (key == zero_key) return 0.0;
    if (key > last_positive) return -2 * pow(gamma_, (double)(key - negative_key)) / (gamma_ + 1);
    return 2 * pow(gamma_, (double)key) / (gamma_ + 1);
}

typedef struct {
    long long key;
    long long count;
} bucket;

static int by_key(const void *a, const void *b) {
    long long x = ((const bucket *)a)->key, y = ((const bucket *)b)->key;
    return (x > y) - (x < y);
}

static int by_order(const void *a, const void *b) {
    long long x = order_of(((const bucket *)a)->key), y = order_of(((const bucket *)b)->key);
    return (x > y) - (x < y);
}

/* QuantileSketch.quantiles for (0.50, 0.95, 0.99); returns -1 with an exception set. */
static int quantiles(PyObject *sketch, long long count, double out[3]) {
    static const double levels[3] = {0.50, 0.95, 0.99};
    if (!PyDict_Check(sketch)) {
        PyErr_SetString(PyExc_TypeError, "the sketch must be a dict");
        return -1;
    }
    Py_ssize_t n = PyDict_GET_SIZE(sketch);
    if (n == 0) {
        PyErr_SetString(PyExc_ValueError, "empty sketch");
        return -1;
    }
    bucket small[64];
    bucket *buckets = n <= 64 ? small : PyMem_Malloc(sizeof(bucket) * (size_t)n);
    if (buckets == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t pos = 0, i = 0;
    PyObject *key, *value;
    int failed = 0;
    while (PyDict_Next(sketch, &pos, &key, &value)) {
        buckets[i].key = PyLong_AsLongLong(key);
        buckets[i].count = PyLong_AsLongLong(value);
        if (PyErr_Occurred()) {
            failed = 1;
            break;
        }
        i++;
    }
    if (!failed) {
        if (n == 1) {
            out[0] = out[1] = out[2] = representative(buckets[0].key);
        } else {
            qsort(buckets, (size_t)n, sizeof(bucket), by_key);
            if (buckets[n - 1].key > last_positive)  /* negative values or zero */
                qsort(buckets, (size_t)n, sizeof(bucket), by_order);
            for (int q = 0; q < 3; q++) {
                /* bisect_right over the cumulative counts, capped at the last bucket */
                double rank = levels[q] * (double)(count - 1);
                long long seen = 0;
                Py_ssize_t j = 0;
                for (; j < n; j++) {
                    seen += buckets[j].count;
                    if ((double)seen > rank) break;
                }
                if (j >= n) j = n - 1;
                out[q] = representative(buckets[j].key);
            }
        }
    }
    if (buckets != small) PyMem_Free(buckets);
    return failed ? -1 : 0;
}

static PyObject *float_text(double x) {
    char *text = PyOS_double_to_string(x, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (text == NULL) return NULL;
    PyObject *out = PyUnicode_FromString(text);
    PyMem_Free(text);
    return out;
}

/* repr is most of the cost, and most values recur (readings' values, bucket representatives):
 * their text is remembered, bounded. Zero is never remembered: 0.0 == -0.0 as a key. */
static PyObject *text_cache = NULL;
#define TEXT_CACHE_MAX 200000

static PyObject *remembered_text(double x) {
    if (x == 0.0 || text_cache == NULL) return float_text(x);
    PyObject *key = PyFloat_FromDouble(x);
    if (key == NULL) return NULL;
    PyObject *text = PyDict_GetItemWithError(text_cache, key);
    if (text != NULL) {
        Py_DECREF(key);
        Py_INCREF(text);
        return text;
    }
    if (PyErr_Occurred() || (text = float_text(x)) == NULL) {
        Py_DECREF(key);
        return NULL;
    }
    if (PyDict_GET_SIZE(text_cache) >= TEXT_CACHE_MAX) PyDict_Clear(text_cache);
    int failed = PyDict_SetItem(text_cache, key, text);
    Py_DECREF(key);
    if (failed < 0) {
        Py_DECREF(text);
        return NULL;
    }
    return text;
}

static double clamp(double p, double low, double high) {
    return p < low ? low : p > high ? high : p;
}

static PyObject *summary_text(PyObject *self, PyObject *state) {
    if (!configured) {
        PyErr_SetString(PyExc_RuntimeError, "configure() first");
        return NULL;
    }
    if (!PyList_Check(state) || PyList_GET_SIZE(state) < STATE_LEN) {
        PyErr_SetString(PyExc_TypeError, "a Summary state (list) is expected");
        return NULL;
    }
    long long count = PyLong_AsLongLong(PyList_GET_ITEM(state, COUNT));
    double total = PyFloat_AsDouble(PyList_GET_ITEM(state, SUM));
    double low = PyFloat_AsDouble(PyList_GET_ITEM(state, MIN));
    double high = PyFloat_AsDouble(PyList_GET_ITEM(state, MAX));
    double first = PyFloat_AsDouble(PyList_GET_ITEM(state, FIRST_V));
    double last = PyFloat_AsDouble(PyList_GET_ITEM(state, LAST_V));
    if (PyErr_Occurred()) return NULL;
    if (count < 1) {
        PyErr_SetString(PyExc_ValueError, "a window state counts at least one reading");
        return NULL;
    }
    PyObject *out = PyTuple_New(10);
    if (out == NULL) return NULL;
    if (count == 1 && total != 0.0) {
        /* Every aggregate is the one value (but for -0.0: the zero bucket gives 0.0). */
        PyObject *one = remembered_text(total);
        if (one == NULL) goto fail;
        PyTuple_SET_ITEM(out, 0, PyUnicode_FromString("1"));
        for (int i = 1; i < 10; i++) {
            Py_INCREF(one);
            PyTuple_SET_ITEM(out, i, one);
        }
        Py_DECREF(one);
        if (PyTuple_GET_ITEM(out, 0) == NULL) goto fail;
        return out;
    }
    double p[3];
    if (quantiles(PyList_GET_ITEM(state, SKETCH), count, p) < 0) goto fail;
    double mean = total / (double)count;
    int overflow = isinf(total);
    double values[9] = {total, low, high, mean, first, last, clamp(p[0], low, high),
                        clamp(p[1], low, high), clamp(p[2], low, high)};
    PyObject *count_text = PyUnicode_FromFormat("%lld", count);
    if (count_text == NULL) goto fail;
    PyTuple_SET_ITEM(out, 0, count_text);
    for (int i = 0; i < 9; i++) {
        /* sum and mean (positions 0 and 3 here) are null when the sum overflowed */
        /* sum and mean (0 and 3) are new numbers each time; the rest recur */
        PyObject *text = (overflow && (i == 0 || i == 3)) ? PyUnicode_FromString("null")
                         : (i == 0 || i == 3)             ? float_text(values[i])
                                                          : remembered_text(values[i]);
        if (text == NULL) goto fail;
        PyTuple_SET_ITEM(out, i + 1, text);
    }
    return out;
fail:
    Py_DECREF(out);
    return NULL;
}

/* Appends the decimal digits of n >= 0 (sprintf cost more than the rest of hset). */
static char *put_digits(char *at, Py_ssize_t n) {
    char digits[24];
    int count = 0;
    do {
        digits[count++] = (char)('0' + n % 10);
        n /= 10;
    } while (n > 0);
    while (count > 0) *at++ = digits[--count];
    return at;
}

/* Appends "$<len>\r\n<text>\r\n"; returns the new end. */
static char *put_bulk(char *at, const char *text, Py_ssize_t size) {
    *at++ = '$';
    at = put_digits(at, size);
    *at++ = '\r';
    *at++ = '\n';
    memcpy(at, text, (size_t)size);
    at += size;
    *at++ = '\r';
    *at++ = '\n';
    return at;
}

static PyObject *hset(PyObject *self, PyObject *args) {
    PyObject *key, *names, *values;
    if (!PyArg_ParseTuple(args, "UO!O!", &key, &PyTuple_Type, &names, &PyTuple_Type, &values))
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(names);
    if (PyTuple_GET_SIZE(values) != n) {
        PyErr_SetString(PyExc_ValueError, "names and values differ in length");
        return NULL;
    }
    Py_ssize_t argc = 2 + 2 * n;
    PyObject *items[2 + 2 * 64];
    if (n > 64) {
        PyErr_SetString(PyExc_ValueError, "at most 64 fields");
        return NULL;
    }
    items[1] = key;
    for (Py_ssize_t i = 0; i < n; i++) {
        items[2 + 2 * i] = PyTuple_GET_ITEM(names, i);
        items[3 + 2 * i] = PyTuple_GET_ITEM(values, i);
    }
    const char *texts[2 + 2 * 64];
    Py_ssize_t sizes[2 + 2 * 64];
    texts[0] = "HSET";
    sizes[0] = 4;
    Py_ssize_t total = 32;  /* "*<argc>\r\n" */
    for (Py_ssize_t i = 0; i < argc; i++) {
        if (i > 0) {
            if (!PyUnicode_Check(items[i])) {
                PyErr_SetString(PyExc_TypeError, "hset takes str arguments");
                return NULL;
            }
            texts[i] = PyUnicode_AsUTF8AndSize(items[i], &sizes[i]);
            if (texts[i] == NULL) return NULL;
        }
        total += sizes[i] + 24;  /* "$<len>\r\n" + "\r\n" */
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL) return NULL;
    char *start = PyBytes_AS_STRING(out), *at = start;
    *at++ = '*';
    at = put_digits(at, argc);
    *at++ = '\r';
    *at++ = '\n';
    for (Py_ssize_t i = 0; i < argc; i++) at = put_bulk(at, texts[i], sizes[i]);
    if (_PyBytes_Resize(&out, at - start) < 0) return NULL;
    return out;
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS,
     "configure(gamma, zero_key, negative_key, last_positive): the sketch's constants."},
    {"summary_text", summary_text, METH_O, "summary_text(state) -> the aggregates' text."},
    {"hset", hset, METH_VARARGS, "hset(key, names, values) -> HSET packed in RESP."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_speedups", NULL, -1, methods};

PyMODINIT_FUNC PyInit__speedups(void) {
    text_cache = PyDict_New();
    if (text_cache == NULL) return NULL;
    return PyModule_Create(&module);
}
