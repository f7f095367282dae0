/* Pulse's C speedups for the hottest pure steps: applying readings, draining the window
 * state and writing the outputs.
 *
 * Every function here is an optimisation of its Python definition of the same name in
 * tables/_speedups_py.py, which says what it guarantees: the same results, the same float
 * operations in the same order (C doubles are Python floats), floats written as
 * float.__repr__ writes them (short_repr, or PyOS_double_to_string(..., 'r') outside its
 * range), the same objects built in the same containers in the same order.
 * tests/tables/test_speedups.py holds the two equal; callers take the functions from
 * tables/_native.py, which can leave any of them out (PULSE_NO_EXTENSIONS).
 *
 * The state they build is the Python lists and dicts tables/ documents, so recovery,
 * snapshots and the rest of tables/ work on it unchanged. QuantileSketch's constants are
 * handed over by configure() so they are defined once, in Python; they, and everything else
 * the module keeps, live in the module's state (ModuleState).
 *
 * UNTRACKED: the objects they build that live on in the state or the outputs (window states,
 * window keys, aggregate texts, closed windows) are taken off the cyclic garbage collector's
 * lists at once. None of them can be part of a reference cycle: they hold only strs, ints,
 * floats, None and states whose dicts hold strs and ints. The collector would untrack the
 * tuples itself, but only after scanning each once, and it never untracks a list: with
 * them tracked, each collection walked every open window (see tune_gc in pulse/app.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Summary state layout (tables/aggregators.py). */
enum { COUNT = 0, SUM = 1, MIN = 2, MAX = 3, FIRST_V = 5, LAST_V = 7, SKETCH = 9, STATE_LEN = 10 };

enum { FIRST_T = 4, LAST_T = 6, LAST_TAGS = 8 };

/* The texts of floats remembered by summary_text (see remembered_text). */
#define TEXT_CACHE_BITS 17
#define TEXT_CACHE_SLOTS (1 << TEXT_CACHE_BITS)
typedef struct {
    uint64_t bits;
    PyObject *text; /* NULL: an empty slot */
} TextSlot;

/* The decimal texts of the counts below SMALL_COUNTS, made once each (see count_text). */
#define SMALL_COUNTS 4096

/* Everything the module keeps, per module object (multi-phase initialisation). */
typedef struct {
    /* QuantileSketch's constants, handed over by configure() so they are defined once. */
    int configured;
    double gamma;            /* QuantileSketch.GAMMA */
    double inv_log_gamma;    /* QuantileSketch.INV_LOG_GAMMA */
    double min_magnitude;    /* QuantileSketch.MIN_MAGNITUDE */
    long long zero_key;      /* QuantileSketch.ZERO */
    long long negative_key;  /* QuantileSketch.NEGATIVE */
    long long last_positive; /* QuantileSketch._LAST_POSITIVE */
    Py_ssize_t max_buckets;  /* QuantileSketch.MAX_BUCKETS */
    PyObject *collapse;      /* QuantileSketch._collapse (rare: stays in Python) */
    PyObject *one;           /* the int 1 */
    PyObject *heappush;      /* heapq.heappush */
    /* Names looked up in a reading's JSON object and on a Kafka record. */
    PyObject *field_device, *field_metric, *field_value, *field_ts, *field_tags;
    PyObject *attr_offset, *attr_key, *attr_value, *attr_timestamp;
    PyObject *attr_timestamp_type, *attr_checksum, *attr_headers;
    PyObject *small_count_text[SMALL_COUNTS];
    TextSlot *text_cache; /* TEXT_CACHE_SLOTS slots */
} ModuleState;

static inline ModuleState *state_of(PyObject *module) {
    return (ModuleState *)PyModule_GetState(module);
}

static PyObject *configure(PyObject *module, PyObject *args) {
    ModuleState *st = state_of(module);
    PyObject *collapse;
    double gamma, inv_log_gamma, min_magnitude;
    long long zero_key, negative_key, last_positive;
    Py_ssize_t max_buckets;
    if (!PyArg_ParseTuple(args, "dddLLLnO", &gamma, &inv_log_gamma, &min_magnitude, &zero_key,
                          &negative_key, &last_positive, &max_buckets, &collapse))
        return NULL;
    st->gamma = gamma;
    st->inv_log_gamma = inv_log_gamma;
    st->min_magnitude = min_magnitude;
    st->zero_key = zero_key;
    st->negative_key = negative_key;
    st->last_positive = last_positive;
    st->max_buckets = max_buckets;
    Py_XDECREF(st->collapse);
    st->collapse = Py_NewRef(collapse);
    st->configured = 1;
    Py_RETURN_NONE;
}

/* The module state of a function of the module, after configure(); NULL with an exception. */
static ModuleState *configured_state(PyObject *module) {
    ModuleState *st = state_of(module);
    if (!st->configured) {
        PyErr_SetString(PyExc_RuntimeError, "configure() first");
        return NULL;
    }
    return st;
}

#define NEED_CONFIGURED(st)                                            \
    ModuleState *st = configured_state(module);                        \
    if (st == NULL) return NULL

/* QuantileSketch.key: the bucket of a value. */
static long long bucket_of(const ModuleState *st, double value) {
    if (value > st->min_magnitude) return (long long)ceil(log(value) * st->inv_log_gamma);
    if (value < -st->min_magnitude)
        return (long long)ceil(log(-value) * st->inv_log_gamma) + st->negative_key;
    return st->zero_key;
}

/* QuantileSketch.add: count a value in a sketch dict. 0 on success, -1 with an exception. */
static int sketch_count(const ModuleState *st, PyObject *sketch, double value) {
    PyObject *key = PyLong_FromLongLong(bucket_of(st, value));
    if (key == NULL) return -1;
    PyObject *count = PyDict_GetItemWithError(sketch, key);
    PyObject *updated;
    if (count == NULL) {
        if (PyErr_Occurred()) {
            Py_DECREF(key);
            return -1;
        }
        updated = Py_NewRef(st->one);
    } else {
        updated = PyNumber_Add(count, st->one);
        if (updated == NULL) {
            Py_DECREF(key);
            return -1;
        }
    }
    int failed = PyDict_SetItem(sketch, key, updated);
    Py_DECREF(key);
    Py_DECREF(updated);
    if (failed < 0) return -1;
    if (PyDict_GET_SIZE(sketch) > st->max_buckets) {
        PyObject *done = PyObject_CallOneArg(st->collapse, sketch);
        if (done == NULL) return -1;
        Py_DECREF(done);
    }
    return 0;
}

/* Summary.initialize: the state of a window holding one reading. */
static PyObject *new_state(const ModuleState *st, PyObject *t, PyObject *value, PyObject *tags) {
    double v = PyFloat_AsDouble(value);
    if (v == -1.0 && PyErr_Occurred()) return NULL;
    PyObject *sketch = PyDict_New();
    if (sketch == NULL) return NULL;
    if (sketch_count(st, sketch, v) < 0) {
        Py_DECREF(sketch);
        return NULL;
    }
    PyObject *state = PyList_New(STATE_LEN);
    if (state == NULL) {
        Py_DECREF(sketch);
        return NULL;
    }
    PyObject *items[STATE_LEN] = {st->one, value, value, value, t, value, t, value, tags, sketch};
    for (int i = 0; i < STATE_LEN; i++) {
        if (i != SKETCH) Py_INCREF(items[i]);
        PyList_SET_ITEM(state, i, items[i]);
    }
    PyObject_GC_UnTrack(state); /* see UNTRACKED */
    return state;
}

static PyObject *summary_initialize(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    NEED_CONFIGURED(st);
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "summary_initialize(t_us, value, tags)");
        return NULL;
    }
    return new_state(st, args[0], args[1], args[2]);
}

static int set_item(PyObject *list, Py_ssize_t i, PyObject *value) {
    Py_INCREF(value);
    return PyList_SetItem(list, i, value);
}

/* Summary.add: one more reading in a window's state. 0 on success, -1 with an exception. */
static int add_reading(const ModuleState *st, PyObject *state, PyObject *t, PyObject *value,
                       PyObject *tags) {
    if (!PyList_Check(state) || PyList_GET_SIZE(state) < STATE_LEN) {
        PyErr_SetString(PyExc_TypeError, "a Summary state (list) is expected");
        return -1;
    }
    double v = PyFloat_AsDouble(value);
    double total = PyFloat_AsDouble(PyList_GET_ITEM(state, SUM));
    double low = PyFloat_AsDouble(PyList_GET_ITEM(state, MIN));
    double high = PyFloat_AsDouble(PyList_GET_ITEM(state, MAX));
    long long t_us = PyLong_AsLongLong(t);
    long long first_t = PyLong_AsLongLong(PyList_GET_ITEM(state, FIRST_T));
    long long last_t = PyLong_AsLongLong(PyList_GET_ITEM(state, LAST_T));
    if (PyErr_Occurred()) return -1;
    PyObject *count = PyNumber_Add(PyList_GET_ITEM(state, COUNT), st->one);
    if (count == NULL) return -1;
    PyList_SetItem(state, COUNT, count);  /* steals */
    PyObject *sum = PyFloat_FromDouble(total + v);
    if (sum == NULL) return -1;
    PyList_SetItem(state, SUM, sum);
    if (v < low && set_item(state, MIN, value) < 0) return -1;
    if (v > high && set_item(state, MAX, value) < 0) return -1;
    if (t_us < first_t) {
        if (set_item(state, FIRST_T, t) < 0 || set_item(state, FIRST_V, value) < 0) return -1;
    }
    if (t_us >= last_t) {
        if (set_item(state, LAST_T, t) < 0 || set_item(state, LAST_V, value) < 0 ||
            set_item(state, LAST_TAGS, tags) < 0)
            return -1;
    }
    PyObject *sketch = PyList_GET_ITEM(state, SKETCH);
    if (!PyDict_Check(sketch)) {
        PyErr_SetString(PyExc_TypeError, "the sketch must be a dict");
        return -1;
    }
    return sketch_count(st, sketch, v);
}

static PyObject *summary_add(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    NEED_CONFIGURED(st);
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "summary_add(state, t_us, value, tags)");
        return NULL;
    }
    if (add_reading(st, args[0], args[1], args[2], args[3]) < 0) return NULL;
    Py_RETURN_NONE;
}

/* Python's floor division of a by b > 0. */
static long long floor_div(long long a, long long b) {
    long long q = a / b;
    return (a % b != 0 && a < 0) ? q - 1 : q;
}

/* The window math of one tumbling or hopping spec: (index, size, step) of _spec_math. */
typedef struct {
    PyObject *index; /* borrowed from the specs tuple */
    long long size, step;
} WindowMath;

#define MAX_SPECS 64

/* Reads PartitionState._spec_math into ``out``; the number of specs, or -1 with an exception. */
static Py_ssize_t window_math(PyObject *specs, WindowMath *out) {
    if (!PyTuple_Check(specs) || PyTuple_GET_SIZE(specs) > MAX_SPECS) {
        PyErr_SetString(PyExc_TypeError, "specs: a tuple of at most 64 (index, size, step)");
        return -1;
    }
    for (Py_ssize_t s = 0; s < PyTuple_GET_SIZE(specs); s++) {
        PyObject *index;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(specs, s), "OLL", &index, &out[s].size,
                              &out[s].step))
            return -1;
        if (out[s].size <= 0 || out[s].step <= 0) {
            PyErr_SetString(PyExc_ValueError, "a window's size and step must be positive");
            return -1;
        }
        out[s].index = index;
    }
    return PyTuple_GET_SIZE(specs);
}

/* Called for each window a reading opens, with its key and end; 0, or -1 with an exception. */
typedef int (*OnOpen)(void *context, PyObject *key, long long end);

/* PartitionState.apply's window part: the reading (t, value, tags) into every open window of
 * the specs; each window it changed goes into ``changed``, each it opened to ``on_open``.
 * Returns how many windows it went into (0: late for all), or -1 with an exception. */
static int apply_to_windows(const ModuleState *st, PyObject *windows, PyObject *changed,
                            const WindowMath *specs, Py_ssize_t n, PyObject *device,
                            PyObject *metric, PyObject *value, PyObject *t, long long t_us,
                            PyObject *tags, long long watermark, OnOpen on_open, void *context) {
    int applied = 0;
    for (Py_ssize_t s = 0; s < n; s++) {
        long long size = specs[s].size, step = specs[s].step;
        long long last = floor_div(t_us, step) * step;
        long long first = step == size ? last : floor_div(t_us - size, step) * step + step;
        for (long long start = first; start <= last; start += step) {
            long long end = start + size;
            if (end <= watermark) continue; /* this window has closed: late for it */
            PyObject *start_obj = PyLong_FromLongLong(start);
            if (start_obj == NULL) return -1;
            PyObject *key = PyTuple_Pack(4, device, metric, specs[s].index, start_obj);
            Py_DECREF(start_obj);
            if (key == NULL) return -1;
            PyObject_GC_UnTrack(key); /* strs and ints: see UNTRACKED */
            PyObject *state = PyDict_GetItemWithError(windows, key);
            int failed = 0;
            if (state == NULL) {
                if (PyErr_Occurred()) failed = 1;
                PyObject *fresh = failed ? NULL : new_state(st, t, value, tags);
                if (fresh == NULL || PyDict_SetItem(windows, key, fresh) < 0) failed = 1;
                Py_XDECREF(fresh);
                if (!failed && on_open(context, key, end) < 0) failed = 1;
            } else if (add_reading(st, state, t, value, tags) < 0) {
                failed = 1;
            }
            if (!failed && PySet_Add(changed, key) < 0) failed = 1;
            Py_DECREF(key);
            if (failed) return -1;
            applied++;
        }
    }
    return applied;
}

/* apply_windows' on_open: (key, end) appended to the list *context (made at the first). */
static int collect_opened(void *context, PyObject *key, long long end) {
    PyObject **opened = context;
    if (*opened == NULL && (*opened = PyList_New(0)) == NULL) return -1;
    PyObject *pair = Py_BuildValue("(OL)", key, end);
    if (pair == NULL) return -1;
    int failed = PyList_Append(*opened, pair);
    Py_DECREF(pair);
    return failed;
}

/* PartitionState.apply's window part: the reading at event time t into every open window of
 * the tumbling and hopping specs ((index, size, step) each). Returns None when every window
 * it belongs to has closed (late), else the list of (key, end) of the windows it opened;
 * adds every window it changed to ``changed``. */
static PyObject *apply_windows(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    NEED_CONFIGURED(st);
    if (nargs != 9 || !PyDict_Check(args[0]) || !PySet_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError,
                        "apply_windows(windows: dict, changed: set, specs, device, metric, "
                        "value, t, tags, watermark)");
        return NULL;
    }
    WindowMath specs[MAX_SPECS];
    Py_ssize_t n = window_math(args[2], specs);
    if (n < 0) return NULL;
    long long t_us = PyLong_AsLongLong(args[6]);
    long long watermark = PyLong_AsLongLong(args[8]);
    if (PyErr_Occurred()) return NULL;
    PyObject *opened = NULL;
    int applied = apply_to_windows(st, args[0], args[1], specs, n, args[3], args[4], args[5],
                                   args[6], t_us, args[7], watermark, collect_opened, &opened);
    if (applied <= 0) {
        Py_XDECREF(opened);
        if (applied < 0) return NULL;
        Py_RETURN_NONE;
    }
    return opened != NULL ? opened : PyList_New(0);
}

/* QuantileSketch._order: a sort key putting bucket keys in the order of their values. */
static long long order_of(const ModuleState *st, long long key) {
    if (key <= st->last_positive) return key;
    if (key == st->zero_key) return -(1LL << 20);
    return -(1LL << 21) - (key - st->negative_key);
}

/* QuantileSketch.value: the representative value of a bucket. */
static double representative(const ModuleState *st, long long key) {
    if (key == st->zero_key) return 0.0;
    if (key > st->last_positive)
        return -2 * pow(st->gamma, (double)(key - st->negative_key)) / (st->gamma + 1);
    return 2 * pow(st->gamma, (double)key) / (st->gamma + 1);
}

typedef struct {
    long long key;
    long long order; /* order_of(key), for sorting by value */
    long long count;
} bucket;

static int by_key(const void *a, const void *b) {
    long long x = ((const bucket *)a)->key, y = ((const bucket *)b)->key;
    return (x > y) - (x < y);
}

static int by_order(const void *a, const void *b) {
    long long x = ((const bucket *)a)->order, y = ((const bucket *)b)->order;
    return (x > y) - (x < y);
}

/* QuantileSketch.quantiles for (0.50, 0.95, 0.99); returns -1 with an exception set. */
static int quantiles(const ModuleState *st, PyObject *sketch, long long count, double out[3]) {
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
        buckets[i].order = order_of(st, buckets[i].key);
        buckets[i].count = PyLong_AsLongLong(value);
        if (PyErr_Occurred()) {
            failed = 1;
            break;
        }
        i++;
    }
    if (!failed) {
        if (n == 1) {
            out[0] = out[1] = out[2] = representative(st, buckets[0].key);
        } else {
            qsort(buckets, (size_t)n, sizeof(bucket), by_key);
            if (buckets[n - 1].key > st->last_positive) /* negative values or zero */
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
                out[q] = representative(st, buckets[j].key);
            }
        }
    }
    if (buckets != small) PyMem_Free(buckets);
    return failed ? -1 : 0;
}

static char *put_digits(char *at, Py_ssize_t n);

/* repr(x) for 1e-3 <= |x| < 1e15, written to ``out`` (at least 40 bytes); returns its length,
 * or 0 for any other x (the caller then uses PyOS_double_to_string, Python's own repr).
 *
 * The shortest decimal that reads back as x, and of those the closest to x, ties to an even
 * last digit: what repr gives (David Gay's dtoa, mode 0), which spends about 4,600
 * instructions on a 17-digit value (callgrind) such as the sum of a window's readings.
 * In this range it needs no big numbers: x = m / 2^s with m < 2^53 and 3 <= s <= 62, so
 * with d decimal places every bound scaled by 10^d (at most 10^21) fits 128 bits, and
 * dividing by 2^s is a shift. For d = 0, 1, ... it looks for an integer k with
 * k / 10^d inside x's rounding interval (the reals that read back as x: half an ulp either
 * side, a quarter below a power of two, the ends included when m is even, as strtod rounds
 * half to even); the first d that has one is the shortest. repr prints this range in fixed
 * notation (exponents from -4 to 16), as done here. tests/tables/test_aggregators.py holds it
 * to repr over millions of values. */
static Py_ssize_t short_repr(double x, char *out) {
#ifndef __SIZEOF_INT128__
    return 0; /* no 128-bit integers (a 32-bit build): Python's repr does it all */
#else
    double magnitude = fabs(x);
    if (!(magnitude >= 1e-3 && magnitude < 1e15)) return 0;
    uint64_t bits;
    memcpy(&bits, &x, sizeof bits);
    uint64_t fraction = bits & ((1ull << 52) - 1);
    int biased = (int)((bits >> 52) & 0x7ff);
    uint64_t m = fraction | (1ull << 52);
    int shift = 1075 - biased + 2; /* x = 4m / 2^shift; the bounds below are in quarters */
    typedef unsigned __int128 u128;
    u128 x4 = (u128)m << 2;
    u128 low = fraction == 0 ? x4 - 1 : x4 - 2, high = x4 + 2;
    int inclusive = (m & 1) == 0;
    u128 mask = ((u128)1 << shift) - 1;
    u128 power = 1;
    for (int d = 0; d <= 21; d++, power *= 10) {
        u128 lo = low * power, hi = high * power;
        uint64_t k_min = (uint64_t)(lo >> shift), k_max = (uint64_t)(hi >> shift);
        if ((lo & mask) != 0 || !inclusive) k_min++;
        if ((hi & mask) == 0 && !inclusive) k_max--;
        if (k_min > k_max) continue;
        /* the candidate closest to x, ties to even */
        u128 scaled = x4 * power;
        uint64_t k = (uint64_t)(scaled >> shift);
        u128 rest = scaled & mask, half = (u128)1 << (shift - 1);
        if (rest > half || (rest == half && (k & 1))) k++;
        if (k < k_min) k = k_min;
        if (k > k_max) k = k_max;
        char digits[24]; /* k: at most 17 digits, the most a shortest repr needs */
        int n = (int)(put_digits(digits, (Py_ssize_t)k) - digits);
        char *at = out;
        if (x < 0) *at++ = '-';
        if (n <= d) { /* 0.00ddd */
            *at++ = '0';
            *at++ = '.';
            for (int z = n; z < d; z++) *at++ = '0';
            memcpy(at, digits, (size_t)n);
            at += n;
        } else { /* ddd.ddd, or ddd.0 */
            memcpy(at, digits, (size_t)(n - d));
            at += n - d;
            *at++ = '.';
            if (d == 0) *at++ = '0';
            memcpy(at, digits + n - d, (size_t)d);
            at += d;
        }
        return at - out;
    }
    return 0;
#endif
}

static PyObject *float_text(double x) {
    char fast[40];
    Py_ssize_t size = short_repr(x, fast);
    if (size > 0) return PyUnicode_FromStringAndSize(fast, size);
    char *text = PyOS_double_to_string(x, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (text == NULL) return NULL;
    PyObject *out = PyUnicode_FromString(text);
    PyMem_Free(text);
    return out;
}

/* Epoch microseconds as epoch seconds in text, an integer when whole, else repr of the
 * nearest float (seconds_text in tables/_speedups_py.py). Below 2^53 in magnitude t_us is
 * exact as a double, so t_us / 1e6 is the correctly rounded quotient Python's int division
 * gives; beyond, Python's own arithmetic does it. */
static PyObject *seconds_of(PyObject *t) {
    int overflow = 0;
    long long us = PyLong_Check(t) ? PyLong_AsLongLongAndOverflow(t, &overflow) : 0;
    if (us == -1 && PyErr_Occurred()) return NULL;
    if (!PyLong_Check(t) || overflow || us > (1ll << 53) || us < -(1ll << 53)) {
        PyObject *million = PyLong_FromLong(1000000);
        PyObject *parts = million ? PyNumber_Divmod(t, million) : NULL;
        PyObject *out = NULL;
        if (parts != NULL && PyTuple_Check(parts) && PyTuple_GET_SIZE(parts) == 2) {
            int whole = PyObject_Not(PyTuple_GET_ITEM(parts, 1));
            if (whole > 0) {
                out = PyObject_Str(PyTuple_GET_ITEM(parts, 0));
            } else if (whole == 0) {
                PyObject *seconds = PyNumber_TrueDivide(t, million);
                out = seconds ? PyObject_Repr(seconds) : NULL;
                Py_XDECREF(seconds);
            }
        }
        Py_XDECREF(parts);
        Py_XDECREF(million);
        return out;
    }
    if (us % 1000000 == 0) {
        long long whole = us / 1000000;
        char digits[24], *at = digits;
        if (whole < 0) *at++ = '-';
        at = put_digits(at, whole < 0 ? -whole : whole);
        return PyUnicode_FromStringAndSize(digits, at - digits);
    }
    return float_text((double)us / 1e6);
}

static PyObject *seconds_text(PyObject *module, PyObject *t) {
    return seconds_of(t);
}

/* repr is most of the cost, and most values recur (readings' values, bucket representatives):
 * their text is remembered in a direct-mapped table keyed by the double's bits, so a hit
 * allocates nothing (a dict keyed by floats made a float object per lookup). A colliding
 * value replaces the slot's text: the table stays TEXT_CACHE_SLOTS entries (about 10 MB with
 * their texts), bounded. Zero is never remembered: 0.0 and -0.0 need different texts. */
static PyObject *remembered_text(const ModuleState *st, double x) {
    if (x == 0.0) return float_text(x);
    uint64_t bits;
    memcpy(&bits, &x, sizeof bits);
    /* Fibonacci hashing: the low bits of nearby doubles differ, their high bits don't. */
    TextSlot *slot = &st->text_cache[(bits * 0x9E3779B97F4A7C15ull) >> (64 - TEXT_CACHE_BITS)];
    if (slot->text != NULL && slot->bits == bits) return Py_NewRef(slot->text);
    PyObject *text = float_text(x);
    if (text == NULL) return NULL;
    PyObject *replaced = slot->text;
    slot->text = Py_NewRef(text);
    slot->bits = bits;
    Py_XDECREF(replaced);
    return text;
}

/* The decimal text of a count n >= 0; counts below SMALL_COUNTS are made once. */
static PyObject *count_text(ModuleState *st, long long n) {
    PyObject **known = n >= 0 && n < SMALL_COUNTS ? &st->small_count_text[n] : NULL;
    if (known != NULL && *known != NULL) return Py_NewRef(*known);
    char digits[24];
    PyObject *text = n >= 0 ? PyUnicode_FromStringAndSize(digits, put_digits(digits, n) - digits)
                            : PyUnicode_FromFormat("%lld", n);
    if (text != NULL && known != NULL) *known = Py_NewRef(text);
    return text;
}

static double clamp(double p, double low, double high) {
    return p < low ? low : p > high ? high : p;
}

/* Summary.text of a window's state: a tuple of 10 str, or NULL with an exception. */
static PyObject *state_text(ModuleState *st, PyObject *state) {
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
        PyObject *count_digits = count_text(st, 1);
        PyObject *value = count_digits == NULL ? NULL : remembered_text(st, total);
        if (value == NULL) {
            Py_XDECREF(count_digits);
            goto fail;
        }
        PyTuple_SET_ITEM(out, 0, count_digits);
        for (int i = 1; i < 10; i++) PyTuple_SET_ITEM(out, i, Py_NewRef(value));
        Py_DECREF(value);
        PyObject_GC_UnTrack(out); /* strs only: see UNTRACKED */
        return out;
    }
    double p[3];
    if (quantiles(st, PyList_GET_ITEM(state, SKETCH), count, p) < 0) goto fail;
    double mean = total / (double)count;
    double values[9] = {total, low, high, mean, first, last, clamp(p[0], low, high),
                        clamp(p[1], low, high), clamp(p[2], low, high)};
    PyObject *count_digits = count_text(st, count);
    if (count_digits == NULL) goto fail;
    PyTuple_SET_ITEM(out, 0, count_digits);
    for (int i = 0; i < 9; i++) {
        /* sum and mean (0 and 3 here): new numbers each time (not remembered); the rest
         * recur. All finite: see summary_text in tables/_speedups_py.py. */
        PyObject *text = (i == 0 || i == 3) ? float_text(values[i])
                                            : remembered_text(st, values[i]);
        if (text == NULL) goto fail;
        PyTuple_SET_ITEM(out, i + 1, text);
    }
    PyObject_GC_UnTrack(out); /* strs only: see UNTRACKED */
    return out;
fail:
    Py_DECREF(out);
    return NULL;
}

static PyObject *summary_text(PyObject *module, PyObject *state) {
    NEED_CONFIGURED(st);
    return state_text(st, state);
}

/* Appends the decimal digits of n (sprintf cost more than the rest of a write). */
static char *put_ull(char *at, unsigned long long n) {
    char digits[24];
    int count = 0;
    do {
        digits[count++] = (char)('0' + n % 10);
        n /= 10;
    } while (n > 0);
    while (count > 0) *at++ = digits[--count];
    return at;
}

/* Appends the decimal digits of n >= 0. */
static char *put_digits(char *at, Py_ssize_t n) { return put_ull(at, (unsigned long long)n); }

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

/* The number of decimal digits of n >= 0. */
static Py_ssize_t digit_count(Py_ssize_t n) {
    Py_ssize_t count = 1;
    for (; n >= 10; n /= 10) count++;
    return count;
}

/* The RESP bulk strings of texts [0, argc), sized exactly before they are written. */
static PyObject *bulk_texts(Py_ssize_t argc, const char *const *texts, const Py_ssize_t *sizes) {
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; i < argc; i++)
        total += 5 + digit_count(sizes[i]) + sizes[i]; /* "$<len>\r\n<text>\r\n" */
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL) return NULL;
    char *at = PyBytes_AS_STRING(out);
    for (Py_ssize_t i = 0; i < argc; i++) at = put_bulk(at, texts[i], sizes[i]);
    return out;
}

#define MAX_FIELDS 64

/* OpenView's fields (tables/partition_state.py). */
enum { VIEW_DEVICE = 0, VIEW_METRIC, VIEW_WINDOW, VIEW_START, VIEW_END, VIEW_STATE, VIEW_TEXT,
       VIEW_LEN };

/* Appends a str's UTF-8 at "at" (room up to "end"); the new end, or NULL if it does not fit. */
static char *put_str(char *at, char *end, PyObject *text) {
    Py_ssize_t size;
    const char *utf8 = PyUnicode_AsUTF8AndSize(text, &size);
    if (utf8 == NULL || at + size > end) return NULL;
    memcpy(at, utf8, (size_t)size);
    return at + size;
}


/* Appends str(n): an exact int in decimal, anything else as str() writes it. The new end, or
 * NULL: with an exception set, or none when it does not fit before "end". */
static char *put_int(char *at, char *end, PyObject *n) {
    if (PyLong_CheckExact(n)) {
        int overflow = 0;
        long long v = PyLong_AsLongLongAndOverflow(n, &overflow);
        if (v == -1 && PyErr_Occurred()) return NULL;
        if (!overflow) {
            char digits[24], *d = digits;
            if (v < 0) *d++ = '-';
            d = put_ull(d, v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v);
            if (at + (d - digits) > end) return NULL;
            memcpy(at, digits, (size_t)(d - digits));
            return at + (d - digits);
        }
    }
    PyObject *text = PyObject_Str(n);
    if (text == NULL) return NULL;
    char *out = put_str(at, end, text);
    Py_DECREF(text);
    return out;
}

/* The per-key fenced writes (see "Redis writes" in tables/_speedups_py.py): each is a tuple
 * (keys, args, argc): keys the RESP bulk strings of the key and "{key}:v" (the hash beside
 * it: a top key's versions, an open window's tombstone), args those of
 *     {kind} {refresh} {n} {arg} ...
 * (the version first among the args) and argc = 3 + n, the bulk strings in args. The sink
 * packs many into one call of the fence script. */
#define KEY_BYTES 1024
#define VERSION_BYTES 128
#define WRITE_HEAD 3 /* kind, refresh, n */

/* The version "{first}:{second}" (second: a str as it is, NULL for "inf", else as put_int
 * writes it) in out (VERSION_BYTES bytes): its size, or -1 with an exception. */
static Py_ssize_t version_text(char *out, PyObject *first, PyObject *second) {
    char *end = out + VERSION_BYTES, *at = put_int(out, end, first);
    if (at != NULL && at < end) {
        *at++ = ':';
        if (second == NULL) {
            if (end - at >= 3) {
                memcpy(at, "inf", 3);
                at += 3;
            } else {
                at = NULL;
            }
        } else {
            at = PyUnicode_Check(second) ? put_str(at, end, second) : put_int(at, end, second);
        }
    } else {
        at = NULL;
    }
    if (at == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "a version longer than 128 bytes");
        return -1;
    }
    return at - out;
}

/* The head of a write in texts and sizes [0, WRITE_HEAD): the kind, refresh and n, written
 * to n_text (24 bytes). */
static void write_head(const char **texts, Py_ssize_t *sizes, char *n_text, const char *kind,
                       int refresh, Py_ssize_t n) {
    texts[0] = kind, sizes[0] = 1;
    texts[1] = refresh ? "1" : "0", sizes[1] = 1;
    texts[2] = n_text, sizes[2] = put_digits(n_text, n) - n_text;
}

/* The write (keys, args, argc) of key whose args are texts [0, argc), a head first; NULL
 * with an exception. Untracked: it holds two bytes and an int. */
static PyObject *pack_write(const char *key, Py_ssize_t key_size, Py_ssize_t argc,
                            const char *const *texts, const Py_ssize_t *sizes) {
    /* "$<len>\r\n<key>\r\n$<len + 4>\r\n{<key>}:v\r\n" */
    Py_ssize_t total = 14 + digit_count(key_size) + digit_count(key_size + 4) + 2 * key_size;
    PyObject *keys = PyBytes_FromStringAndSize(NULL, total);
    if (keys == NULL) return NULL;
    char *at = put_bulk(PyBytes_AS_STRING(keys), key, key_size);
    *at++ = '$';
    at = put_digits(at, key_size + 4);
    memcpy(at, "\r\n{", 3);
    memcpy(at + 3, key, (size_t)key_size);
    memcpy(at + 3 + key_size, "}:v\r\n", 5);
    PyObject *args = bulk_texts(argc, texts, sizes);
    PyObject *count = args == NULL ? NULL : PyLong_FromSsize_t(argc);
    PyObject *out = count == NULL ? NULL : PyTuple_New(3);
    if (out == NULL) {
        Py_DECREF(keys);
        Py_XDECREF(args);
        Py_XDECREF(count);
        return NULL;
    }
    PyTuple_SET_ITEM(out, 0, keys);
    PyTuple_SET_ITEM(out, 1, args);
    PyTuple_SET_ITEM(out, 2, count);
    PyObject_GC_UnTrack(out);
    return out;
}

/* The write of a window's hash (kind w): the version, then n str names and values (n = 0:
 * the key's removal). NULL with an exception. */
static PyObject *pack_window(const char *key, Py_ssize_t key_size, int refresh,
                             const char *version, Py_ssize_t version_size, PyObject *names,
                             PyObject *const *values, Py_ssize_t n) {
    if (n > MAX_FIELDS) {
        PyErr_SetString(PyExc_ValueError, "at most 64 fields");
        return NULL;
    }
    const char *texts[WRITE_HEAD + 1 + 2 * MAX_FIELDS];
    Py_ssize_t sizes[WRITE_HEAD + 1 + 2 * MAX_FIELDS];
    char n_text[24];
    write_head(texts, sizes, n_text, "w", refresh, 1 + 2 * n);
    texts[WRITE_HEAD] = version;
    sizes[WRITE_HEAD] = version_size;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name = PyTuple_GET_ITEM(names, i), *value = values[i];
        if (!PyUnicode_Check(name) || !PyUnicode_Check(value)) {
            PyErr_SetString(PyExc_TypeError, "window_write takes str names and values");
            return NULL;
        }
        Py_ssize_t at = WRITE_HEAD + 1 + 2 * i;
        texts[at] = PyUnicode_AsUTF8AndSize(name, &sizes[at]);
        texts[at + 1] = PyUnicode_AsUTF8AndSize(value, &sizes[at + 1]);
        if (texts[at] == NULL || texts[at + 1] == NULL) return NULL;
    }
    return pack_write(key, key_size, WRITE_HEAD + 1 + 2 * n, texts, sizes);
}

/* The write of a window's hash (kind w) as the sinks write it: the version, then one field,
 * ``field``, whose value is the window's 12 str values (the 10 aggregates' text, start, end)
 * joined by single spaces (one field per key costs Redis a sixth of twelve). NULL with an
 * exception. */
static PyObject *pack_window_joined(const char *key, Py_ssize_t key_size, int refresh,
                                   const char *version, Py_ssize_t version_size,
                                   PyObject *field, PyObject *const *values) {
    const char *parts[12];
    Py_ssize_t part_sizes[12], total = 11;
    if (!PyUnicode_Check(field)) {
        PyErr_SetString(PyExc_TypeError, "the window's field must be a str");
        return NULL;
    }
    for (int i = 0; i < 12; i++) {
        if (!PyUnicode_Check(values[i])) {
            PyErr_SetString(PyExc_TypeError, "a window's values are str");
            return NULL;
        }
        parts[i] = PyUnicode_AsUTF8AndSize(values[i], &part_sizes[i]);
        if (parts[i] == NULL) return NULL;
        total += part_sizes[i];
    }
    char stack[1024], *joined = total <= (Py_ssize_t)sizeof stack ? stack : PyMem_Malloc(total);
    if (joined == NULL) return PyErr_NoMemory();
    char *at = joined;
    for (int i = 0; i < 12; i++) {
        if (i) *at++ = ' ';
        memcpy(at, parts[i], (size_t)part_sizes[i]);
        at += part_sizes[i];
    }
    const char *texts[WRITE_HEAD + 3];
    Py_ssize_t sizes[WRITE_HEAD + 3];
    char n_text[24];
    write_head(texts, sizes, n_text, "w", refresh, 3);
    texts[WRITE_HEAD] = version, sizes[WRITE_HEAD] = version_size;
    texts[WRITE_HEAD + 1] = PyUnicode_AsUTF8AndSize(field, &sizes[WRITE_HEAD + 1]);
    texts[WRITE_HEAD + 2] = joined, sizes[WRITE_HEAD + 2] = total;
    PyObject *out = texts[WRITE_HEAD + 1] == NULL
                        ? NULL
                        : pack_write(key, key_size, WRITE_HEAD + 3, texts, sizes);
    if (joined != stack) PyMem_Free(joined);
    return out;
}

static PyObject *window_write(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "window_write(key, version, names, values)");
        return NULL;
    }
    PyObject *key = args[0], *version = args[1], *names = args[2], *values = args[3];
    if (!PyUnicode_Check(key) || !PyUnicode_Check(version)) {
        PyErr_SetString(PyExc_TypeError, "window_write() arguments 1 and 2 must be str");
        return NULL;
    }
    if (!PyTuple_Check(names) || !PyTuple_Check(values)) {
        PyErr_SetString(PyExc_TypeError, "window_write() arguments 3 and 4 must be tuples");
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(names);
    if (PyTuple_GET_SIZE(values) != n) {
        PyErr_SetString(PyExc_ValueError, "names and values differ in length");
        return NULL;
    }
    Py_ssize_t key_size, version_size;
    const char *key_text = PyUnicode_AsUTF8AndSize(key, &key_size);
    if (key_text == NULL) return NULL;
    if (key_size > KEY_BYTES) {
        PyErr_SetString(PyExc_ValueError, "a key longer than 1024 bytes");
        return NULL;
    }
    const char *version_bytes = PyUnicode_AsUTF8AndSize(version, &version_size);
    if (version_bytes == NULL) return NULL;
    if (version_size > VERSION_BYTES) {
        PyErr_SetString(PyExc_ValueError, "a version longer than 128 bytes");
        return NULL;
    }
    return pack_window(key_text, key_size, 1, version_bytes, version_size, names,
                       &PyTuple_GET_ITEM(values, 0), n);
}

/* "{prefix}{window}:{device}:{metric}" of an OpenView or ClosedWindow, written to ``key``
 * (KEY_BYTES); returns its end, or NULL with an exception set (a name not a str, or a key
 * longer than KEY_BYTES bytes). */
static char *put_series_key(char *key, PyObject *prefix, PyObject *window) {
    char *end = key + KEY_BYTES, *at = key;
    if ((at = put_str(at, end, prefix)) == NULL ||
        (at = put_str(at, end, PyTuple_GET_ITEM(window, VIEW_WINDOW))) == NULL || at >= end)
        goto too_long;
    *at++ = ':';
    if ((at = put_str(at, end, PyTuple_GET_ITEM(window, VIEW_DEVICE))) == NULL || at >= end)
        goto too_long;
    *at++ = ':';
    if ((at = put_str(at, end, PyTuple_GET_ITEM(window, VIEW_METRIC))) == NULL) goto too_long;
    return at;
too_long:
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "a key longer than 1024 bytes");
    return NULL;
}

/* The RedisSink's writes of open views (open_view_writes in tables/_speedups_py.py). */
static PyObject *open_view_writes(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    NEED_CONFIGURED(st);
    if (nargs != 6 || !PyUnicode_Check(args[1]) || !PyDict_Check(args[2]) ||
        !PyUnicode_Check(args[5])) {
        PyErr_SetString(PyExc_TypeError,
                        "open_view_writes(views, key_prefix: str, ttl_set: dict, now: float, "
                        "ttl: int, field: str)");
        return NULL;
    }
    PyObject *views = args[0], *prefix = args[1], *ttl_set = args[2], *field = args[5];
    double now = PyFloat_AsDouble(args[3]);
    if (now == -1.0 && PyErr_Occurred()) return NULL;
    long long ttl = PyLong_AsLongLong(args[4]);
    if (ttl == -1 && PyErr_Occurred()) return NULL;
    PyObject *out = PyList_New(0);
    PyObject *iterator = PyObject_GetIter(views);
    if (out == NULL || iterator == NULL) goto fail;
    PyObject *view;
    while ((view = PyIter_Next(iterator)) != NULL) {
        PyObject *key = NULL, *text = NULL, *start_text = NULL, *end_text = NULL;
        PyObject *made = NULL;
        int failed = 1;
        if (!PyTuple_Check(view) || PyTuple_GET_SIZE(view) < VIEW_LEN) {
            PyErr_SetString(PyExc_TypeError, "an OpenView is expected");
            goto view_done;
        }
        char buffer[KEY_BYTES], *at = put_series_key(buffer, prefix, view);
        if (at == NULL) goto view_done;
        Py_ssize_t key_size = at - buffer;
        key = PyUnicode_DecodeUTF8(buffer, key_size, NULL);
        if (key == NULL) goto view_done;
        PyObject *state = PyTuple_GET_ITEM(view, VIEW_STATE);
        PyObject *start = PyTuple_GET_ITEM(view, VIEW_START);
        char version[VERSION_BYTES];
        Py_ssize_t version_size;
        if (state == Py_None) {
            /* the key's removal: the series has no open window any more */
            if ((version_size = version_text(version, start, NULL)) < 0) goto view_done;
            made = pack_window(buffer, key_size, 1, version, version_size, NULL, NULL, 0);
            if (made == NULL || PyList_Append(out, made) < 0) goto view_done;
            if (PyDict_DelItem(ttl_set, key) < 0) {
                if (!PyErr_ExceptionMatches(PyExc_KeyError)) goto view_done;
                PyErr_Clear();
            }
            failed = 0;
            goto view_done;
        }
        text = PyTuple_GET_ITEM(view, VIEW_TEXT);
        if (text == Py_None) text = state_text(st, state); /* not drained: format now */
        else Py_INCREF(text);
        if (text == NULL) goto view_done;
        if (!PyTuple_Check(text) || PyTuple_GET_SIZE(text) != 10) {
            PyErr_SetString(PyExc_TypeError, "an aggregate text of 10 str is expected");
            goto view_done;
        }
        start_text = seconds_of(start);
        end_text = start_text ? seconds_of(PyTuple_GET_ITEM(view, VIEW_END)) : NULL;
        if (end_text == NULL) goto view_done;
        PyObject *values[12];
        for (int i = 0; i < 10; i++) values[i] = PyTuple_GET_ITEM(text, i);
        values[10] = start_text;
        values[11] = end_text;
        /* TTLs only when a new window starts at the key, or half a TTL after the last. */
        PyObject *known = PyDict_GetItemWithError(ttl_set, key);
        if (known == NULL && PyErr_Occurred()) goto view_done;
        int refresh = 1;
        if (known != NULL && PyTuple_Check(known) && PyTuple_GET_SIZE(known) == 2) {
            int same_start = PyObject_RichCompareBool(PyTuple_GET_ITEM(known, 0), start, Py_EQ);
            if (same_start < 0) goto view_done;
            if (same_start) {
                double set_at = PyFloat_AsDouble(PyTuple_GET_ITEM(known, 1));
                if (set_at == -1.0 && PyErr_Occurred()) goto view_done;
                refresh = now - set_at > (double)ttl / 2;
            }
        }
        if ((version_size = version_text(version, start, PyTuple_GET_ITEM(text, 0))) < 0)
            goto view_done;
        made = pack_window_joined(buffer, key_size, refresh, version, version_size, field, values);
        if (made == NULL || PyList_Append(out, made) < 0) goto view_done;
        if (refresh) {
            PyObject *entry = Py_BuildValue("(Od)", start, now);
            if (entry != NULL) PyObject_GC_UnTrack(entry); /* an int and a float: UNTRACKED */
            if (entry == NULL) goto view_done;
            int stored = PyDict_SetItem(ttl_set, key, entry);
            Py_DECREF(entry);
            if (stored < 0) goto view_done;
        }
        failed = 0;
    view_done:
        Py_XDECREF(made);
        Py_XDECREF(start_text);
        Py_XDECREF(end_text);
        Py_XDECREF(text);
        Py_XDECREF(key);
        Py_DECREF(view);
        if (failed) goto fail;
    }
    if (PyErr_Occurred()) goto fail;
    Py_DECREF(iterator);
    return out;
fail:
    Py_XDECREF(iterator);
    Py_XDECREF(out);
    return NULL;
}

/* The common case of models.reading.parse_reading, or None for anything else (which the
 * Python definition then parses, accepts or rejects with its reason): a record with a
 * timestamp whose value, at most max_bytes, is a JSON object (read by scan_common when it has
 * the compact shape of Pulse's own producers, else loaded by ``loads``, orjson, and then with
 * as many ':' as members) with a device and a metric among the keys of ``valid_names`` (so
 * validated before), the device equal to the key, a float value within +-MAX_ABS_VALUE, a
 * float ts with t_us = round(ts * 1e6) from 0 to 4e15 (year 2096) and at most max_future_us
 * after the record's timestamp, and no tags. Returns reading_type(device, metric, value,
 * t_us, None) with the names as ``valid_names`` holds them, what the Python definition
 * returns for such a record; tests/models/test_reading.py holds it to that. */

/* models.reading.MAX_ABS_VALUE: beyond it, a value is not the common reading. */
#define MAX_ABS_VALUE 1e290

/* The record's timestamp as common_reading takes it (the Python definition: an int from 0 up,
 * compared exactly): NO_TIMESTAMP_MS when there is none (not an int, or negative); a
 * timestamp beyond 4e12 ms (year 2096) bounds no common reading, and is LATE_TIMESTAMP_MS. */
#define NO_TIMESTAMP_MS (-1LL)
#define LATE_TIMESTAMP_MS 4000000000001LL

/* Whether a common reading at t_us may be applied: at most max_future_us after its record's
 * timestamp (see timestamp_ms). t_us is at most 4e15, so nothing here overflows. */
static inline int within_future(long long t_us, long long timestamp_ms, long long max_future_us) {
    if (timestamp_ms == NO_TIMESTAMP_MS) return 0;
    if (timestamp_ms >= LATE_TIMESTAMP_MS) return 1;
    return t_us - timestamp_ms * 1000 <= max_future_us;
}
/* The JSON number at *at (JSON's grammar: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?)
 * when it has a fraction or an exponent, which makes it a float for orjson: its value in
 * *out and *at moved past it; 1, or 0 if there is no such number there (an int, not JSON).
 * Rounded correctly, as orjson's parser rounds: with at most 15 digits and a power of ten up
 * to 22, both operands are exact doubles and one IEEE multiplication or division rounds the
 * result correctly (Clinger's fast path; "21.37" is 2137 / 100); any other number goes to
 * PyOS_string_to_double, Python's float(). */
static int scan_float(const char **at, const char *end, double *out) {
    static const double powers[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                      1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                      1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
    const char *p = *at, *begin = p;
    int negative = 0, is_float = 0, digits = 0, exponent = 0, exponent_digits = 0;
    long long mantissa = 0;
    if (p < end && *p == '-') {
        negative = 1;
        p++;
    }
    if (p < end && *p == '0') {
        p++;
    } else if (p < end && *p >= '1' && *p <= '9') {
        for (; p < end && *p >= '0' && *p <= '9'; p++, digits++)
            if (digits < 18) mantissa = mantissa * 10 + (*p - '0');
    } else {
        return 0;
    }
    if (p < end && *p == '.') {
        p++;
        if (!(p < end && *p >= '0' && *p <= '9')) return 0;
        for (; p < end && *p >= '0' && *p <= '9'; p++) {
            if (digits == 0 && *p == '0') { /* leading zeros of 0.00x count for nothing */
                exponent--;
                continue;
            }
            if (digits++ < 18) {
                mantissa = mantissa * 10 + (*p - '0');
                exponent--;
            }
        }
        is_float = 1;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        int exponent_negative = 0;
        if (p < end && (*p == '+' || *p == '-')) exponent_negative = *p++ == '-';
        if (!(p < end && *p >= '0' && *p <= '9')) return 0;
        int e = 0;
        for (; p < end && *p >= '0' && *p <= '9'; p++, exponent_digits++)
            if (e < 100000) e = e * 10 + (*p - '0');
        exponent += exponent_negative ? -e : e;
        is_float = 1;
    }
    /* The text always continues (the closing brace at least), so strtod stops at p. */
    if (!is_float || p >= end || p - begin > 64) return 0;
    double value;
    if (digits <= 15 && exponent >= -22 && exponent <= 22 && exponent_digits <= 5) {
        value = exponent < 0 ? (double)mantissa / powers[-exponent]
                             : (double)mantissa * powers[exponent];
        if (negative) value = -value;
    } else {
        char text[65];
        memcpy(text, begin, (size_t)(p - begin));
        text[p - begin] = '\0';
        char *stop;
        value = PyOS_string_to_double(text, &stop, NULL);
        if (value == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            return 0;
        }
        if (stop != text + (p - begin)) return 0;
    }
    *out = value;
    *at = p;
    return 1;
}

/* Whether c is a character of names ([A-Za-z0-9_.-], models.reading.NAME_PATTERN), which
 * JSON strings hold without escapes. */
static inline int is_name_char(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '_' || c == '.' || c == '-';
}

/* The bytes of a JSON string at *at holding only name characters: *name and *size, and *at
 * moved past its closing quote; 1, or 0 if the string is anything else. */
static int scan_name(const char **at, const char *end, const char **name, Py_ssize_t *size) {
    const char *p = *at;
    if (p >= end || *p != '"') return 0;
    const char *begin = ++p;
    while (p < end && is_name_char((unsigned char)*p)) p++;
    if (p >= end || *p != '"' || p == begin || p - begin > 128) return 0;
    *name = begin;
    *size = p - begin;
    *at = p + 1;
    return 1;
}

/* The name's shared str (see VALID_NAMES): a borrowed reference, NULL if the name is not in
 * valid_names (not validated yet), or NULL with an exception. */
static PyObject *known_name(PyObject *valid_names, const char *name, Py_ssize_t size) {
    PyObject *text = PyUnicode_New(size, 127);
    if (text == NULL) return NULL;
    memcpy(PyUnicode_DATA(text), name, (size_t)size);
    PyObject *known = PyDict_GetItemWithError(valid_names, text);
    Py_DECREF(text);
    return known;
}

#define SCAN_UNSURE 2

/* common_reading without orjson for the shape a producer like Pulse's own writes: a JSON
 * object with no whitespace whose members are exactly "device" and "metric" (name strings)
 * and "value" and "ts" (floats), each once, in any order. Returns what common_reading returns
 * for such a record (the same outputs: tests/models/test_reading.py compares the two), or
 * SCAN_UNSURE for any other text, which orjson then parses: this only has to recognise its
 * shape exactly, not to reject anything. */
static int scan_common(PyObject *key, PyObject *value, long long timestamp_ms,
                       long long max_future_us, PyObject *valid_names, PyObject **device_out,
                       PyObject **metric_out, PyObject **number_out, long long *t_us) {
    const char *p = PyBytes_AS_STRING(value), *end = p + PyBytes_GET_SIZE(value);
    const char *names[2] = {NULL, NULL};
    Py_ssize_t sizes[2] = {0, 0};
    double numbers[2] = {0.0, 0.0};
    int seen = 0; /* bits: device, metric, value, ts */
    if (p >= end || *p++ != '{') return SCAN_UNSURE;
    for (;;) {
        const char *member;
        Py_ssize_t member_size;
        if (!scan_name(&p, end, &member, &member_size) || p >= end || *p++ != ':')
            return SCAN_UNSURE;
        int index;
        if (member_size == 6 && memcmp(member, "device", 6) == 0) index = 0;
        else if (member_size == 6 && memcmp(member, "metric", 6) == 0) index = 1;
        else if (member_size == 5 && memcmp(member, "value", 5) == 0) index = 2;
        else if (member_size == 2 && memcmp(member, "ts", 2) == 0) index = 3;
        else return SCAN_UNSURE;
        if (seen & (1 << index)) return SCAN_UNSURE; /* a repeated member: orjson's rules */
        seen |= 1 << index;
        if (index < 2) {
            if (!scan_name(&p, end, &names[index], &sizes[index])) return SCAN_UNSURE;
        } else if (!scan_float(&p, end, &numbers[index - 2])) {
            return SCAN_UNSURE;
        }
        if (p >= end) return SCAN_UNSURE;
        char next = *p++;
        if (next == '}') break;
        if (next != ',') return SCAN_UNSURE;
    }
    if (p != end || seen != 15) return SCAN_UNSURE;
    /* From here the text is known: the outcomes are common_reading's own. */
    if (sizes[0] != PyBytes_GET_SIZE(key) ||
        memcmp(names[0], PyBytes_AS_STRING(key), (size_t)sizes[0]) != 0)
        return 0;
    double v = numbers[0];
    if (!(v >= -MAX_ABS_VALUE && v <= MAX_ABS_VALUE)) return 0;
    double t = nearbyint(numbers[1] * 1e6);
    if (!(t >= 0.0 && t <= 4e15) || !within_future((long long)t, timestamp_ms, max_future_us))
        return 0;
    PyObject *device = known_name(valid_names, names[0], sizes[0]);
    PyObject *metric = device == NULL ? NULL : known_name(valid_names, names[1], sizes[1]);
    if (metric == NULL) return PyErr_Occurred() ? -1 : 0;
    if (!PyUnicode_CheckExact(device) || !PyUnicode_CheckExact(metric)) return 0;
    PyObject *number = PyFloat_FromDouble(v);
    if (number == NULL) return -1;
    *t_us = (long long)t;
    *device_out = Py_NewRef(device);
    *metric_out = Py_NewRef(metric);
    *number_out = number;
    return 1;
}

/* The common reading (parse_common in tables/_speedups_py.py): 1 with new references in *device, *metric and *number and the event
 * time in *t_us if the record is the common reading, 0 if it is not, -1 with an exception. */
static int common_reading(const ModuleState *st, PyObject *key, PyObject *value,
                          long long timestamp_ms, Py_ssize_t max_bytes, long long max_future_us,
                          PyObject *valid_names, PyObject *loads, PyObject **device_out,
                          PyObject **metric_out, PyObject **number_out, long long *t_us) {
    if (!PyBytes_CheckExact(key) || !PyBytes_CheckExact(value) ||
        PyBytes_GET_SIZE(value) > max_bytes || timestamp_ms == NO_TIMESTAMP_MS)
        return 0;
    int scanned = scan_common(key, value, timestamp_ms, max_future_us, valid_names, device_out,
                              metric_out, number_out, t_us);
    if (scanned != SCAN_UNSURE) return scanned;
    PyObject *doc = PyObject_CallOneArg(loads, value);
    if (doc == NULL) { /* not JSON: the Python definition says why */
        PyErr_Clear();
        return 0;
    }
    int common = 0;
    if (!PyDict_CheckExact(doc)) goto done;
    /* As many ':' as members: no nested object, no ':' in a string, no member name repeated
     * (parse_reading rejects a repeated one; a record with the others it parses itself). */
    {
        const char *p = PyBytes_AS_STRING(value), *end = p + PyBytes_GET_SIZE(value);
        Py_ssize_t colons = 0;
        while ((p = memchr(p, ':', (size_t)(end - p))) != NULL) {
            colons++;
            p++;
        }
        if (colons != PyDict_GET_SIZE(doc)) goto done;
    }
    /* (str keys: a lookup cannot fail) */
    PyObject *device = PyDict_GetItemWithError(doc, st->field_device);
    PyObject *metric = PyDict_GetItemWithError(doc, st->field_metric);
    PyObject *number = PyDict_GetItemWithError(doc, st->field_value);
    PyObject *ts = PyDict_GetItemWithError(doc, st->field_ts);
    if (device == NULL || metric == NULL || number == NULL || ts == NULL ||
        PyDict_GetItemWithError(doc, st->field_tags) != NULL || !PyUnicode_CheckExact(device) ||
        !PyUnicode_CheckExact(metric) || !PyFloat_CheckExact(number) || !PyFloat_CheckExact(ts))
        goto done;
    /* the names' shared objects (see VALID_NAMES) */
    device = PyDict_GetItemWithError(valid_names, device);
    metric = device == NULL ? NULL : PyDict_GetItemWithError(valid_names, metric);
    if (metric == NULL || !PyUnicode_CheckExact(device) || !PyUnicode_CheckExact(metric)) {
        PyErr_Clear();
        goto done;
    }
    Py_ssize_t device_size;
    const char *device_utf8 = PyUnicode_AsUTF8AndSize(device, &device_size);
    if (device_utf8 == NULL) {
        PyErr_Clear();
        goto done;
    }
    if (device_size != PyBytes_GET_SIZE(key) ||
        memcmp(device_utf8, PyBytes_AS_STRING(key), (size_t)device_size) != 0)
        goto done;
    double v = PyFloat_AS_DOUBLE(number);
    if (!(v >= -MAX_ABS_VALUE && v <= MAX_ABS_VALUE)) goto done;
    /* round(ts * 1_000_000): Python rounds a float half to even, as nearbyint does in the
     * default rounding mode */
    double t = nearbyint(PyFloat_AS_DOUBLE(ts) * 1e6);
    if (!(t >= 0.0 && t <= 4e15) || !within_future((long long)t, timestamp_ms, max_future_us))
        goto done;
    *t_us = (long long)t;
    *device_out = Py_NewRef(device);
    *metric_out = Py_NewRef(metric);
    *number_out = Py_NewRef(number);
    common = 1;
done:
    Py_DECREF(doc);
    return common;
}

/* [each(item, context) for item in iterable]: each returns a new reference, or NULL with an
 * exception set, which ends the loop. */
static PyObject *map_list(PyObject *iterable, PyObject *(*each)(PyObject *, void *),
                          void *context) {
    PyObject *out = PyList_New(0);
    PyObject *iterator = out == NULL ? NULL : PyObject_GetIter(iterable);
    if (iterator == NULL) {
        Py_XDECREF(out);
        return NULL;
    }
    PyObject *item;
    while ((item = PyIter_Next(iterator)) != NULL) {
        PyObject *made = each(item, context);
        Py_DECREF(item);
        if (made == NULL || PyList_Append(out, made) < 0) {
            Py_XDECREF(made);
            Py_DECREF(iterator);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(made);
    }
    Py_DECREF(iterator);
    if (PyErr_Occurred()) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

/* Writes the aggregates record (JSON) or the line-protocol line of a tag-less closed window:
 * returns a new bytes (json) or str (line), or NULL with an exception set. */
static PyObject *window_line(ModuleState *st, PyObject *window, int json) {
    if (!PyTuple_Check(window) || PyTuple_GET_SIZE(window) < VIEW_LEN) {
        PyErr_SetString(PyExc_TypeError, "a ClosedWindow is expected");
        return NULL;
    }
    PyObject *text = PyTuple_GET_ITEM(window, VIEW_TEXT);
    if (text == Py_None) text = state_text(st, PyTuple_GET_ITEM(window, VIEW_STATE));
    else Py_INCREF(text);
    if (text == NULL) return NULL;
    PyObject *start = NULL, *end = NULL, *out = NULL;
    if (!PyTuple_Check(text) || PyTuple_GET_SIZE(text) != 10) {
        PyErr_SetString(PyExc_TypeError, "an aggregate text of 10 str is expected");
        goto done;
    }
    long long start_us = PyLong_AsLongLong(PyTuple_GET_ITEM(window, VIEW_START));
    if (start_us == -1 && PyErr_Occurred()) goto done;
    if (json) {
        start = seconds_of(PyTuple_GET_ITEM(window, VIEW_START));
        end = start == NULL ? NULL : seconds_of(PyTuple_GET_ITEM(window, VIEW_END));
        if (end == NULL) goto done;
    }
    /* {"device":"D","metric":"M","window":"W","start":S,"end":E,"count":..,"tags":{}}
     * M,device=D,window=W count=Ci,sum=..,p99=P T */
    static const char *const json_names[10] = {
        ",\"count\":", ",\"sum\":",  ",\"min\":",   ",\"max\":", ",\"mean\":",
        ",\"first\":", ",\"last\":", ",\"p50\":", ",\"p95\":", ",\"p99\":"};
    static const char *const line_names[10] = {" count=", ",sum=",  ",min=", ",max=",
                                               ",mean=",  ",first=", ",last=", ",p50=",
                                               ",p95=",   ",p99="};
    PyObject *device = PyTuple_GET_ITEM(window, VIEW_DEVICE);
    PyObject *metric = PyTuple_GET_ITEM(window, VIEW_METRIC);
    PyObject *label = PyTuple_GET_ITEM(window, VIEW_WINDOW);
    char buffer[2048], *at = buffer, *limit = buffer + sizeof buffer - 64;
#define PUT_LITERAL(literal)                                \
    do {                                                    \
        size_t size_ = strlen(literal);                     \
        if (at + size_ > limit) goto too_long;              \
        memcpy(at, literal, size_);                         \
        at += size_;                                        \
    } while (0)
#define PUT_OBJECT(object)                                  \
    do {                                                    \
        if ((at = put_str(at, limit, object)) == NULL) {    \
            if (PyErr_Occurred()) goto done;                \
            goto too_long;                                  \
        }                                                   \
    } while (0)
    if (json) {
        PUT_LITERAL("{\"device\":\"");
        PUT_OBJECT(device);
        PUT_LITERAL("\",\"metric\":\"");
        PUT_OBJECT(metric);
        PUT_LITERAL("\",\"window\":\"");
        PUT_OBJECT(label);
        PUT_LITERAL("\",\"start\":");
        PUT_OBJECT(start);
        PUT_LITERAL(",\"end\":");
        PUT_OBJECT(end);
    } else {
        PUT_OBJECT(metric);
        PUT_LITERAL(",device=");
        PUT_OBJECT(device);
        PUT_LITERAL(",window=");
        PUT_OBJECT(label);
    }
    for (int i = 0; i < 10; i++) {
        PUT_LITERAL(json ? json_names[i] : line_names[i]);
        PUT_OBJECT(PyTuple_GET_ITEM(text, i));
        if (i == 0 && !json) PUT_LITERAL("i");
    }
    if (json) {
        PUT_LITERAL(",\"tags\":{}}");
        out = PyBytes_FromStringAndSize(buffer, at - buffer);
    } else {
        /* time: the window start in milliseconds, floored as Python's // */
        long long ms = start_us / 1000 - (start_us % 1000 < 0 ? 1 : 0);
        *at++ = ' ';
        if (ms < 0) {
            *at++ = '-';
            ms = -ms;
        }
        at = put_digits(at, (Py_ssize_t)ms);
        out = PyUnicode_FromStringAndSize(buffer, at - buffer);
    }
    goto done;
too_long:
    PyErr_SetString(PyExc_ValueError, "a closed window's output longer than 2 KB");
done:
#undef PUT_LITERAL
#undef PUT_OBJECT
    Py_XDECREF(start);
    Py_XDECREF(end);
    Py_DECREF(text);
    return out;
}

struct lines_context {
    ModuleState *st;
    PyObject *with_tags; /* the Python definition, for a window with tags */
    int json;            /* the aggregates record, else the line-protocol line */
    int keyed;           /* (device.encode(), line) */
};

/* A closed window's output: for a window with tags, ``with_tags`` (the Python definition: a
 * tag's value needs escaping); else window_line. */
static PyObject *window_output(PyObject *window, void *context) {
    struct lines_context *lines = context;
    PyObject *state = PyTuple_Check(window) && PyTuple_GET_SIZE(window) >= VIEW_LEN
                          ? PyTuple_GET_ITEM(window, VIEW_STATE)
                          : NULL;
    if (state == NULL || !PyList_Check(state) || PyList_GET_SIZE(state) < STATE_LEN) {
        PyErr_SetString(PyExc_TypeError, "a ClosedWindow with a Summary state is expected");
        return NULL;
    }
    int tagged = PyObject_IsTrue(PyList_GET_ITEM(state, LAST_TAGS));
    if (tagged < 0) return NULL;
    PyObject *line = tagged ? PyObject_CallOneArg(lines->with_tags, window)
                            : window_line(lines->st, window, lines->json);
    if (line == NULL || !lines->keyed) return line;
    PyObject *key = PyUnicode_AsUTF8String(PyTuple_GET_ITEM(window, VIEW_DEVICE));
    PyObject *item = key == NULL ? NULL : PyTuple_Pack(2, key, line);
    Py_XDECREF(key);
    Py_DECREF(line);
    return item;
}

static PyObject *aggregate_records(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    NEED_CONFIGURED(st);
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "aggregate_records(closed, closed_window_json)");
        return NULL;
    }
    struct lines_context lines = {st, args[1], 1, 1};
    return map_list(args[0], window_output, &lines);
}

static PyObject *line_protocol_lines(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    NEED_CONFIGURED(st);
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "line_protocol_lines(closed, line_protocol)");
        return NULL;
    }
    struct lines_context lines = {st, args[1], 0, 0};
    return map_list(args[0], window_output, &lines);
}

/* -- Reading aggregates records back (aggregates_entry, aggregates_line in
 * tables/_speedups_py.py): the record's parts, checked as the Python definitions' patterns
 * check them. */

static PyObject *untracked_tuple(PyTypeObject *type, PyObject **items, Py_ssize_t n);

/* The aggregates of a record in its order, each with the text before its number. */
static const char *const AGGREGATE_KEYS[10] = {
    "\"count\":", ",\"sum\":", ",\"min\":", ",\"max\":", ",\"mean\":",
    ",\"first\":", ",\"last\":", ",\"p50\":", ",\"p95\":", ",\"p99\":"};

/* The length of the JSON number at p (an exponent only when ``exponent``), 0 for none. */
static Py_ssize_t json_number(const char *p, const char *end, int exponent) {
    const char *q = p;
    if (q < end && *q == '-') q++;
    if (q >= end) return 0;
    if (*q == '0') {
        q++;
    } else if (*q >= '1' && *q <= '9') {
        while (q < end && *q >= '0' && *q <= '9') q++;
    } else {
        return 0;
    }
    if (q < end && *q == '.') {
        const char *digits = ++q;
        while (q < end && *q >= '0' && *q <= '9') q++;
        if (q == digits) return 0;
    }
    if (exponent && q < end && (*q == 'e' || *q == 'E')) {
        q++;
        if (q < end && (*q == '+' || *q == '-')) q++;
        const char *digits = q;
        while (q < end && *q >= '0' && *q <= '9') q++;
        if (q == digits) return 0;
    }
    return q - p;
}

/* The length of a whole number of 1 to 18 digits at p, not starting with 0 (a minus sign
 * first when ``signed_``); 0 for none. */
static Py_ssize_t whole_number(const char *p, const char *end, int signed_) {
    const char *q = p;
    if (signed_ && q < end && *q == '-') q++;
    if (q >= end || *q < '1' || *q > '9') return 0;
    const char *first = q;
    while (q < end && *q >= '0' && *q <= '9' && q - first < 18) q++;
    return q - p;
}

/* Whether the text at *p is ``text``; moves *p past it if so. */
static int skip_text(const char **p, const char *end, const char *text) {
    size_t n = strlen(text);
    if ((size_t)(end - *p) < n || memcmp(*p, text, n) != 0) return 0;
    *p += n;
    return 1;
}

/* A record's parts: where its series text ends (``,"start":``), its start and end, its
 * count, and its aggregates from ``"count":`` to the end of p99. */
struct record_parts {
    const char *start, *end_, *count, *aggregates, *aggregates_end;
    Py_ssize_t start_n, end_n, count_n;
    const char *numbers[10];
    Py_ssize_t number_n[10];
};

/* Parses the text after the series (at ``,"start":``) to the end of ``value``: 1 when it is
 * ``,"start":S,"end":E,"count":C,"sum":N,...,"p99":N,"tags":{}}``, else 0. ``line``: the
 * start a whole number of seconds other than 0 and the numbers with exponents allowed (the
 * line's form), else the start and end and numbers without exponents (the entry's). */
static int record_rest(const char *p, const char *end, int line, struct record_parts *out) {
    if (!skip_text(&p, end, ",\"start\":")) return 0;
    out->start = p;
    out->start_n = line ? whole_number(p, end, 1) : json_number(p, end, 0);
    if (out->start_n == 0) return 0;
    p += out->start_n;
    if (!skip_text(&p, end, ",\"end\":")) return 0;
    out->end_ = p;
    out->end_n = json_number(p, end, line);
    if (out->end_n == 0) return 0;
    p += out->end_n;
    if (!skip_text(&p, end, ",")) return 0;
    out->aggregates = p;
    for (int i = 0; i < 10; i++) {
        if (!skip_text(&p, end, AGGREGATE_KEYS[i])) return 0;
        out->numbers[i] = p;
        out->number_n[i] = i == 0 ? whole_number(p, end, 0) : json_number(p, end, line);
        if (out->number_n[i] == 0) return 0;
        p += out->number_n[i];
    }
    out->count = out->numbers[0];
    out->count_n = out->number_n[0];
    out->aggregates_end = p;
    return skip_text(&p, end, ",\"tags\":{}}") && p == end;
}

/* The value of ``series_map``'s entry for the record's text before ``,"start":`` (borrowed),
 * the rest of the record parsed into ``parts`` in ``line``'s form (record_rest); NULL when
 * the series is unknown or the rest is not that form (and NULL with an exception on error). */
static PyObject *known_record(PyObject *value, PyObject *series_map, int line,
                              struct record_parts *parts) {
    const char *text = PyBytes_AS_STRING(value);
    Py_ssize_t n = PyBytes_GET_SIZE(value);
    const char *at = NULL;
    for (const char *p = text; p + 9 <= text + n; p++) {
        p = memchr(p, ',', (size_t)(text + n - p));
        if (p == NULL || p + 9 > text + n) break;
        if (memcmp(p, ",\"start\":", 9) == 0) {
            at = p;
            break;
        }
    }
    if (at == NULL) return NULL;
    PyObject *prefix = PyBytes_FromStringAndSize(text, at - text);
    if (prefix == NULL) return NULL;
    PyObject *found = PyDict_GetItemWithError(series_map, prefix);
    Py_DECREF(prefix);
    if (found == NULL || found == Py_None) return NULL; /* as dict.get: None is no entry */
    return record_rest(at, text + n, line, parts) ? found : NULL;
}

static PyObject *aggregates_entry(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyBytes_Check(args[0]) || !PyDict_Check(args[1]) ||
        !PyType_Check(args[2]) || !PyType_IsSubtype((PyTypeObject *)args[2], &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError,
                        "aggregates_entry(value: bytes, series: dict, entry_type: a tuple "
                        "subclass of 5 fields)");
        return NULL;
    }
    PyObject *value = args[0];
    struct record_parts parts;
    PyObject *key = known_record(value, args[1], 0, &parts);
    if (key == NULL) {
        if (PyErr_Occurred()) return NULL;
        Py_RETURN_NONE;
    }
    /* {"count":...,"p99":N,"start":S,"end":E} */
    Py_ssize_t aggregates_n = parts.aggregates_end - parts.aggregates;
    Py_ssize_t size = 1 + aggregates_n + 9 + parts.start_n + 7 + parts.end_n + 1;
    PyObject *member = PyBytes_FromStringAndSize(NULL, size);
    if (member == NULL) return NULL;
    char *out = PyBytes_AS_STRING(member);
    *out++ = '{';
    memcpy(out, parts.aggregates, (size_t)aggregates_n);
    out += aggregates_n;
    memcpy(out, ",\"start\":", 9);
    out += 9;
    memcpy(out, parts.start, (size_t)parts.start_n);
    out += parts.start_n;
    memcpy(out, ",\"end\":", 7);
    out += 7;
    memcpy(out, parts.end_, (size_t)parts.end_n);
    out += parts.end_n;
    *out = '}';
    PyObject *start_text = PyBytes_FromStringAndSize(parts.start, parts.start_n);
    PyObject *start = start_text == NULL ? NULL : PyFloat_FromString(start_text);
    Py_XDECREF(start_text);
    long long count = 0;
    for (Py_ssize_t i = 0; i < parts.count_n; i++) count = count * 10 + (parts.count[i] - '0');
    PyObject *readings = start == NULL ? NULL : PyLong_FromLongLong(count);
    if (readings == NULL) {
        Py_XDECREF(start);
        Py_DECREF(member);
        return NULL;
    }
    Py_INCREF(key);
    Py_INCREF(value);
    PyObject *items[5] = {key, start, readings, member, value};
    return untracked_tuple((PyTypeObject *)args[2], items, 5);
}

static PyObject *aggregates_line(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyBytes_Check(args[0]) || !PyDict_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "aggregates_line(value: bytes, heads: dict)");
        return NULL;
    }
    struct record_parts parts;
    PyObject *head = known_record(args[0], args[1], 1, &parts);
    if (head == NULL) {
        if (PyErr_Occurred()) return NULL;
        Py_RETURN_NONE;
    }
    if (!PyUnicode_Check(head) || !PyUnicode_IS_ASCII(head)) Py_RETURN_NONE;
    /* head, count=Ci, then ,name=N per aggregate, a space, the start and 000 */
    Py_ssize_t head_n = PyUnicode_GET_LENGTH(head);
    Py_ssize_t size = head_n + 6 + parts.count_n + 1;
    for (int i = 1; i < 10; i++) size += (Py_ssize_t)strlen(AGGREGATE_KEYS[i]) - 2 + parts.number_n[i];
    size += 1 + parts.start_n + 3;
    PyObject *line = PyUnicode_New(size, 127);
    if (line == NULL) return NULL;
    char *out = (char *)PyUnicode_1BYTE_DATA(line);
    memcpy(out, PyUnicode_1BYTE_DATA(head), (size_t)head_n);
    out += head_n;
    memcpy(out, "count=", 6);
    out += 6;
    memcpy(out, parts.count, (size_t)parts.count_n);
    out += parts.count_n;
    *out++ = 'i';
    for (int i = 1; i < 10; i++) {
        /* ,"name": -> ,name= */
        const char *name = AGGREGATE_KEYS[i] + 2;
        size_t name_n = strlen(name) - 2;
        *out++ = ',';
        memcpy(out, name, name_n);
        out += name_n;
        *out++ = '=';
        memcpy(out, parts.numbers[i], (size_t)parts.number_n[i]);
        out += parts.number_n[i];
    }
    *out++ = ' ';
    memcpy(out, parts.start, (size_t)parts.start_n);
    out += parts.start_n;
    memcpy(out, "000", 3);
    return line;
}

/* The RedisSink's writes of closed windows (closed_window_writes in
 * tables/_speedups_py.py). */
static PyObject *closed_window_writes(PyObject *module, PyObject *const *args,
                                      Py_ssize_t nargs) {
    NEED_CONFIGURED(st);
    if (nargs != 4 || !PyUnicode_Check(args[1]) || !PyUnicode_Check(args[2]) ||
        !PyUnicode_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError,
                        "closed_window_writes(closed, closed_prefix: str, top_prefix: str, "
                        "field: str)");
        return NULL;
    }
    PyObject *closed_prefix = args[1], *top_prefix = args[2], *field = args[3];
    PyObject *out = PyList_New(0);
    PyObject *newest = PyDict_New(); /* (window, device, metric) -> its newest ClosedWindow */
    PyObject *tops = PyDict_New();   /* (window, metric) -> [version, mean, device, ...] */
    PyObject *iterator = newest == NULL || tops == NULL ? NULL : PyObject_GetIter(args[0]);
    const char **parts = NULL;
    Py_ssize_t *sizes = NULL;
    if (out == NULL || iterator == NULL) goto fail;
    PyObject *window;
    while ((window = PyIter_Next(iterator)) != NULL) {
        int failed = 1;
        if (!PyTuple_Check(window) || PyTuple_GET_SIZE(window) < VIEW_LEN) {
            PyErr_SetString(PyExc_TypeError, "a ClosedWindow is expected");
        } else {
            PyObject *series = PyTuple_Pack(3, PyTuple_GET_ITEM(window, VIEW_WINDOW),
                                            PyTuple_GET_ITEM(window, VIEW_DEVICE),
                                            PyTuple_GET_ITEM(window, VIEW_METRIC));
            PyObject *seen = series == NULL ? NULL : PyDict_GetItemWithError(newest, series);
            int newer = 1;
            if (seen != NULL)
                newer = PyObject_RichCompareBool(PyTuple_GET_ITEM(seen, VIEW_START),
                                                 PyTuple_GET_ITEM(window, VIEW_START), Py_LT);
            if (series != NULL && !PyErr_Occurred())
                failed = newer < 0 || (newer && PyDict_SetItem(newest, series, window) < 0);
            Py_XDECREF(series);
        }
        Py_DECREF(window);
        if (failed) goto fail;
    }
    if (PyErr_Occurred()) goto fail;
    Py_ssize_t position = 0;
    PyObject *series;
    while (PyDict_Next(newest, &position, &series, &window)) {
        PyObject *label = PyTuple_GET_ITEM(window, VIEW_WINDOW);
        PyObject *device = PyTuple_GET_ITEM(window, VIEW_DEVICE);
        PyObject *metric = PyTuple_GET_ITEM(window, VIEW_METRIC);
        char key[KEY_BYTES], *at = put_series_key(key, closed_prefix, window);
        if (at == NULL) goto fail;
        PyObject *text = PyTuple_GET_ITEM(window, VIEW_TEXT);
        if (text == Py_None) text = state_text(st, PyTuple_GET_ITEM(window, VIEW_STATE));
        else Py_INCREF(text);
        if (text == NULL) goto fail;
        PyObject *start = NULL, *stop = NULL, *made = NULL, *pair = NULL, *version = NULL;
        int failed = 1;
        if (!PyTuple_Check(text) || PyTuple_GET_SIZE(text) != 10) {
            PyErr_SetString(PyExc_TypeError, "an aggregate text of 10 str is expected");
            goto window_done;
        }
        start = seconds_of(PyTuple_GET_ITEM(window, VIEW_START));
        stop = start == NULL ? NULL : seconds_of(PyTuple_GET_ITEM(window, VIEW_END));
        if (stop == NULL) goto window_done;
        PyObject *values[12];
        for (int i = 0; i < 10; i++) values[i] = PyTuple_GET_ITEM(text, i);
        values[10] = start;
        values[11] = stop;
        char version_bytes[VERSION_BYTES];
        Py_ssize_t version_size =
            version_text(version_bytes, PyTuple_GET_ITEM(window, VIEW_START),
                         PyTuple_GET_ITEM(text, 0));
        if (version_size < 0) goto window_done;
        made = pack_window_joined(key, at - key, 1, version_bytes, version_size, field, values);
        if (made == NULL || PyList_Append(out, made) < 0) goto window_done;
        PyObject *mean = PyTuple_GET_ITEM(text, 4);
        {
            pair = PyTuple_Pack(2, label, metric);
            PyObject *members = pair == NULL ? NULL : PyDict_GetItemWithError(tops, pair);
            if (members == NULL && pair != NULL && !PyErr_Occurred()) {
                members = PyList_New(0);
                if (members != NULL && PyDict_SetItem(tops, pair, members) < 0)
                    Py_CLEAR(members);
                Py_XDECREF(members); /* tops holds it */
            }
            version = members == NULL ? NULL : PyUnicode_DecodeUTF8(version_bytes, version_size,
                                                                    NULL);
            if (version == NULL || PyList_Append(members, version) < 0 ||
                PyList_Append(members, mean) < 0 || PyList_Append(members, device) < 0)
                goto window_done;
        }
        failed = 0;
    window_done:
        Py_XDECREF(version);
        Py_XDECREF(pair);
        Py_XDECREF(made);
        Py_XDECREF(start);
        Py_XDECREF(stop);
        Py_DECREF(text);
        if (failed) goto fail;
    }
    /* the fenced members of {top_prefix}{window}:{metric}: version, mean, device ... */
    position = 0;
    PyObject *pair, *members;
    while (PyDict_Next(tops, &position, &pair, &members)) {
        char key[KEY_BYTES], *end = key + sizeof key, *at = key;
        if ((at = put_str(at, end, top_prefix)) == NULL ||
            (at = put_str(at, end, PyTuple_GET_ITEM(pair, 0))) == NULL || at >= end) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "a top key longer than 1024 bytes");
            goto fail;
        }
        *at++ = ':';
        if ((at = put_str(at, end, PyTuple_GET_ITEM(pair, 1))) == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "a top key longer than 1024 bytes");
            goto fail;
        }
        Py_ssize_t n = PyList_GET_SIZE(members), argc = WRITE_HEAD + n;
        parts = PyMem_Malloc(sizeof(char *) * (size_t)argc);
        sizes = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)argc);
        if (parts == NULL || sizes == NULL) {
            PyErr_NoMemory();
            goto fail;
        }
        char n_text[24];
        write_head(parts, sizes, n_text, "z", 1, n);
        for (Py_ssize_t i = 0; i < n; i++) {
            parts[WRITE_HEAD + i] =
                PyUnicode_AsUTF8AndSize(PyList_GET_ITEM(members, i), &sizes[WRITE_HEAD + i]);
            if (parts[WRITE_HEAD + i] == NULL) goto fail;
        }
        PyObject *made = pack_write(key, at - key, argc, parts, sizes);
        int appended = made == NULL ? -1 : PyList_Append(out, made);
        Py_XDECREF(made);
        PyMem_Free(parts);
        PyMem_Free(sizes);
        parts = NULL, sizes = NULL;
        if (appended < 0) goto fail;
    }
    Py_DECREF(iterator);
    Py_DECREF(newest);
    Py_DECREF(tops);
    return out;
fail:
    PyMem_Free(parts);
    PyMem_Free(sizes);
    Py_XDECREF(iterator);
    Py_XDECREF(newest);
    Py_XDECREF(tops);
    Py_XDECREF(out);
    return NULL;
}

/* The RedisSink's writes of latest values (latest_writes in tables/_speedups_py.py). Per
 * device, in the order its first value comes, one fenced write (kind f): per metric
 * (the newest value of each: a merged batch may hold several) its version, the metric, the
 * value, "{metric}:ts" and the time; refresh as ttl_set says. */
#define LATEST_ARGS 5 /* per metric: version, metric, value, metric:ts, seconds */
static PyObject *latest_writes(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    NEED_CONFIGURED(st);
    if (nargs != 5 || !PyUnicode_Check(args[1]) || !PyDict_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError,
                        "latest_writes(latest, key_prefix: str, ttl_set: dict, now: float, "
                        "ttl: int)");
        return NULL;
    }
    PyObject *prefix = args[1], *ttl_set = args[2];
    double now = PyFloat_AsDouble(args[3]);
    if (now == -1.0 && PyErr_Occurred()) return NULL;
    long long ttl = PyLong_AsLongLong(args[4]);
    if (ttl == -1 && PyErr_Occurred()) return NULL;
    PyObject *out = PyList_New(0), *now_object = PyFloat_FromDouble(now);
    PyObject *by_device = PyDict_New(); /* device -> {metric: Latest}, both in first-seen order */
    PyObject *iterator = by_device == NULL ? NULL : PyObject_GetIter(args[0]);
    PyObject **texts = NULL; /* per metric of one write: value and ts texts (owned) */
    const char **parts = NULL;
    Py_ssize_t *sizes = NULL;
    char *names = NULL; /* per metric: "{metric}:ts" (names <= 128 bytes), then its version */
    Py_ssize_t n_texts = 0;
    PyObject *device, *metrics;
    if (out == NULL || now_object == NULL || iterator == NULL) goto fail;
    PyObject *latest;
    while ((latest = PyIter_Next(iterator)) != NULL) {
        int failed = 1;
        if (!PyTuple_Check(latest) || PyTuple_GET_SIZE(latest) != 5) {
            PyErr_SetString(PyExc_TypeError,
                            "a Latest (device, metric, t_us, value, offset) is expected");
        } else {
            device = PyTuple_GET_ITEM(latest, 0);
            metrics = PyDict_GetItemWithError(by_device, device);
            if (metrics == NULL && !PyErr_Occurred()) {
                metrics = PyDict_New();
                if (metrics != NULL && PyDict_SetItem(by_device, device, metrics) < 0)
                    Py_CLEAR(metrics);
                Py_XDECREF(metrics); /* by_device holds it */
            }
            failed = metrics == NULL ||
                     PyDict_SetItem(metrics, PyTuple_GET_ITEM(latest, 1), latest) < 0;
        }
        Py_DECREF(latest);
        if (failed) goto fail;
    }
    if (PyErr_Occurred()) goto fail;
    Py_ssize_t position = 0;
    while (PyDict_Next(by_device, &position, &device, &metrics)) {
        Py_ssize_t n = PyDict_GET_SIZE(metrics), argc = WRITE_HEAD + LATEST_ARGS * n;
        n_texts = 2 * n;
        texts = PyMem_Calloc((size_t)n_texts, sizeof(PyObject *));
        parts = PyMem_Malloc(sizeof(char *) * (size_t)argc);
        sizes = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)argc);
        names = PyMem_Malloc((size_t)(n * (132 + VERSION_BYTES)));
        if (texts == NULL || parts == NULL || sizes == NULL || names == NULL) {
            PyErr_NoMemory();
            goto fail;
        }
        char key[KEY_BYTES], *at = key;
        if ((at = put_str(at, key + sizeof key, prefix)) == NULL ||
            (at = put_str(at, key + sizeof key, device)) == NULL)
            goto too_long;
        /* TTLs when the device's were never set, or more than half a TTL ago */
        PyObject *set_at = PyDict_GetItemWithError(ttl_set, device);
        if (set_at == NULL && PyErr_Occurred()) goto fail;
        double at_time = set_at == NULL ? 0.0 : PyFloat_AsDouble(set_at);
        if (at_time == -1.0 && PyErr_Occurred()) goto fail;
        int refresh = set_at == NULL || now - at_time > (double)ttl / 2;
        char n_text[24];
        write_head(parts, sizes, n_text, "f", refresh, LATEST_ARGS * n);
        Py_ssize_t metric_position = 0, i = 0;
        PyObject *metric, *entry;
        char *names_at = names;
        while (PyDict_Next(metrics, &metric_position, &metric, &entry)) {
            PyObject *value = PyTuple_GET_ITEM(entry, 3);
            if (!PyFloat_Check(value)) {
                PyErr_SetString(PyExc_TypeError, "a latest value is a float");
                goto fail;
            }
            Py_ssize_t name_size;
            const char *name = PyUnicode_AsUTF8AndSize(metric, &name_size);
            if (name == NULL) goto fail;
            if (name_size > 128) {
                PyErr_SetString(PyExc_ValueError, "a metric name longer than 128 bytes");
                goto fail;
            }
            Py_ssize_t base = WRITE_HEAD + LATEST_ARGS * i;
            Py_ssize_t version_size = version_text(names_at, PyTuple_GET_ITEM(entry, 2),
                                                   PyTuple_GET_ITEM(entry, 4));
            if (version_size < 0) goto fail;
            parts[base] = names_at;
            sizes[base] = version_size;
            names_at += version_size;
            texts[2 * i] = remembered_text(st, PyFloat_AS_DOUBLE(value));
            if (texts[2 * i] == NULL) goto fail;
            texts[2 * i + 1] = seconds_of(PyTuple_GET_ITEM(entry, 2));
            if (texts[2 * i + 1] == NULL) goto fail;
            memcpy(names_at, name, (size_t)name_size);
            memcpy(names_at + name_size, ":ts", 3);
            parts[base + 1] = name;
            sizes[base + 1] = name_size;
            parts[base + 3] = names_at;
            sizes[base + 3] = name_size + 3;
            names_at += name_size + 3;
            for (int t = 0; t < 2; t++) {
                const char *utf8 = PyUnicode_AsUTF8AndSize(texts[2 * i + t], &sizes[base + 2 + 2 * t]);
                if (utf8 == NULL) goto fail;
                parts[base + 2 + 2 * t] = utf8;
            }
            i++;
        }
        PyObject *made = pack_write(key, at - key, argc, parts, sizes);
        int appended = made == NULL ? -1 : PyList_Append(out, made);
        Py_XDECREF(made);
        if (appended < 0) goto fail;
        for (Py_ssize_t t = 0; t < n_texts; t++) Py_CLEAR(texts[t]);
        PyMem_Free(texts);
        PyMem_Free(parts);
        PyMem_Free(sizes);
        PyMem_Free(names);
        texts = NULL, parts = NULL, sizes = NULL, names = NULL;
        if (refresh && PyDict_SetItem(ttl_set, device, now_object) < 0) goto fail;
        continue;
    too_long:
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "a device key longer than 1024 bytes");
        goto fail;
    }
    Py_DECREF(iterator);
    Py_DECREF(by_device);
    Py_DECREF(now_object);
    return out;
fail:
    /* the texts of the device being packed; unset ones are NULL (calloc) */
    for (Py_ssize_t t = 0; texts != NULL && t < n_texts; t++) Py_XDECREF(texts[t]);
    PyMem_Free(texts);
    PyMem_Free(parts);
    PyMem_Free(sizes);
    PyMem_Free(names);
    Py_XDECREF(iterator);
    Py_XDECREF(by_device);
    Py_XDECREF(now_object);
    Py_XDECREF(out);
    return NULL;
}

/* A tuple of type ``type`` (a tuple subclass, such as a NamedTuple) holding ``n`` items; steals
 * the references in ``items``, untracked (see UNTRACKED). */
static PyObject *untracked_tuple(PyTypeObject *type, PyObject **items, Py_ssize_t n) {
    PyObject *out = type->tp_alloc(type, n);
    if (out == NULL) {
        for (Py_ssize_t i = 0; i < n; i++) Py_DECREF(items[i]);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) PyTuple_SET_ITEM(out, i, items[i]);
    PyObject_GC_UnTrack(out);
    return out;
}

/* One piece of a RESP command: a text and its size (pointing into a str's UTF-8, a bytes or
 * history_calls' number buffer, all alive for the call). */
typedef struct {
    const char *text;
    Py_ssize_t size;
} Piece;

#define NUMBER_TEXT 40 /* room for any long long, and for repr of any double (short_repr) */
#define MAX_PER_CALL 100000

/* Appends the decimal text of a long long to *numbers (NUMBER_TEXT bytes each) as a piece. */
static void number_piece(Piece *piece, char **numbers, long long n) {
    char *at = *numbers, *d = at;
    if (n < 0) *d++ = '-';
    d = put_ull(d, n < 0 ? 0ull - (unsigned long long)n : (unsigned long long)n);
    piece->text = at;
    piece->size = d - at;
    *numbers += NUMBER_TEXT;
}

/* The RESP array of pieces [0, n). */
static PyObject *resp_array(const Piece *pieces, Py_ssize_t n) {
    Py_ssize_t total = 3 + digit_count(n);
    for (Py_ssize_t i = 0; i < n; i++) total += 5 + digit_count(pieces[i].size) + pieces[i].size;
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL) return NULL;
    char *at = PyBytes_AS_STRING(out);
    *at++ = '*';
    at = put_digits(at, n);
    *at++ = '\r';
    *at++ = '\n';
    for (Py_ssize_t i = 0; i < n; i++) at = put_bulk(at, pieces[i].text, pieces[i].size);
    return out;
}

/* The history script's calls of entries (see history_calls in tables/_speedups_py.py): for
 * each run of per_call entries, the RESP of EVALSHA sha numkeys first-key keys... tail...
 * then position, repr(start), readings, member, event per entry. */
static PyObject *history_calls(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5 || !(PyList_Check(args[0]) || PyTuple_Check(args[0])) ||
        !PyLong_CheckExact(args[1]) || !PyUnicode_CheckExact(args[2]) ||
        !(args[3] == Py_None || PyUnicode_CheckExact(args[3])) || !PyTuple_Check(args[4])) {
        PyErr_SetString(PyExc_TypeError,
                        "history_calls(entries: list | tuple, per_call: int, sha: str, "
                        "first_key: str | None, tail: tuple of ints)");
        return NULL;
    }
    PyObject *entries = args[0], *tail = args[4];
    int overflow = 0;
    long long per_call = PyLong_AsLongLongAndOverflow(args[1], &overflow);
    if (per_call == -1 && PyErr_Occurred()) return NULL;
    if (overflow || per_call < 1 || per_call > MAX_PER_CALL) {
        PyErr_SetString(PyExc_ValueError, "history_calls: per_call is from 1 to 100000");
        return NULL;
    }
    Py_ssize_t tail_n = PyTuple_GET_SIZE(tail);
    long long tail_values[8];
    if (tail_n > 8) {
        PyErr_SetString(PyExc_ValueError, "history_calls: at most 8 tail numbers");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < tail_n; i++) {
        PyObject *item = PyTuple_GET_ITEM(tail, i);
        if (!PyLong_CheckExact(item)) {
            PyErr_SetString(PyExc_TypeError, "history_calls: the tail holds ints");
            return NULL;
        }
        tail_values[i] = PyLong_AsLongLong(item);
        if (tail_values[i] == -1 && PyErr_Occurred()) return NULL;
    }
    Py_ssize_t sha_n, first_n = 0;
    const char *sha = PyUnicode_AsUTF8AndSize(args[2], &sha_n);
    if (sha == NULL) return NULL;
    const char *first = NULL;
    if (args[3] != Py_None && (first = PyUnicode_AsUTF8AndSize(args[3], &first_n)) == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(entries);
    PyObject **items = PySequence_Fast_ITEMS(entries);
    Py_ssize_t most = 4 + tail_n + 6 * per_call;
    Piece *head = PyMem_New(Piece, most), *rest = PyMem_New(Piece, 5 * per_call);
    char *number_buffer = PyMem_Malloc((size_t)(3 * per_call + 1 + tail_n) * NUMBER_TEXT);
    PyObject *index = PyDict_New(), *out = PyList_New(0);
    if (head == NULL || rest == NULL || number_buffer == NULL || index == NULL || out == NULL) {
        if (!PyErr_Occurred()) PyErr_NoMemory();
        Py_CLEAR(out);
        goto done;
    }
    for (Py_ssize_t begin = 0; begin < n; begin += (Py_ssize_t)per_call) {
        Py_ssize_t end = n - begin > per_call ? begin + (Py_ssize_t)per_call : n;
        Py_ssize_t head_n = 4, rest_n = 0;
        char *numbers = number_buffer + NUMBER_TEXT; /* the first slot: numkeys */
        PyDict_Clear(index);
        for (Py_ssize_t i = begin; i < end; i++) {
            PyObject *entry = items[i];
            if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 5 ||
                !PyUnicode_CheckExact(PyTuple_GET_ITEM(entry, 0)) ||
                !PyFloat_CheckExact(PyTuple_GET_ITEM(entry, 1)) ||
                !PyLong_CheckExact(PyTuple_GET_ITEM(entry, 2)) ||
                !PyBytes_CheckExact(PyTuple_GET_ITEM(entry, 3)) ||
                !PyBytes_CheckExact(PyTuple_GET_ITEM(entry, 4))) {
                PyErr_SetString(PyExc_TypeError,
                                "history_calls: an entry is (key: str, start: float, readings: "
                                "int, member: bytes, event: bytes)");
                Py_CLEAR(out);
                goto done;
            }
            PyObject *key = PyTuple_GET_ITEM(entry, 0);
            Py_ssize_t key_n;
            const char *key_text = PyUnicode_AsUTF8AndSize(key, &key_n);
            PyObject *readings_obj = PyTuple_GET_ITEM(entry, 2);
            long long readings = key_text == NULL ? -1 : PyLong_AsLongLong(readings_obj);
            if (key_text == NULL || (readings == -1 && PyErr_Occurred())) {
                Py_CLEAR(out);
                goto done;
            }
            PyObject *position = PyDict_GetItemWithError(index, key);
            if (position == NULL) {
                if (PyErr_Occurred()) {
                    Py_CLEAR(out);
                    goto done;
                }
                position = PyLong_FromSsize_t(PyDict_GET_SIZE(index) + 2);
                int failed = position == NULL || PyDict_SetItem(index, key, position) < 0;
                Py_XDECREF(position); /* the dict holds it */
                if (failed) {
                    Py_CLEAR(out);
                    goto done;
                }
                head[head_n].text = key_text; /* after the first key, in order of first use */
                head[head_n++].size = key_n;
            }
            if (i == begin && first == NULL) {
                head[3].text = key_text;
                head[3].size = key_n;
            }
            number_piece(&rest[rest_n++], &numbers, PyLong_AsLongLong(position));
            double start = PyFloat_AS_DOUBLE(PyTuple_GET_ITEM(entry, 1));
            Py_ssize_t start_n = short_repr(start, numbers); /* repr(start) */
            if (start_n == 0) {
                char *text = PyOS_double_to_string(start, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
                if (text == NULL) {
                    Py_CLEAR(out);
                    goto done;
                }
                start_n = (Py_ssize_t)strlen(text); /* at most 24: "-1.2345678901234567e-308" */
                memcpy(numbers, text, (size_t)start_n);
                PyMem_Free(text);
            }
            rest[rest_n].text = numbers;
            rest[rest_n++].size = start_n;
            numbers += NUMBER_TEXT;
            number_piece(&rest[rest_n++], &numbers, readings);
            for (int f = 3; f < 5; f++) {
                PyObject *data = PyTuple_GET_ITEM(entry, f);
                rest[rest_n].text = PyBytes_AS_STRING(data);
                rest[rest_n++].size = PyBytes_GET_SIZE(data);
            }
        }
        head[0].text = "EVALSHA";
        head[0].size = 7;
        head[1].text = sha;
        head[1].size = sha_n;
        char *numkeys = number_buffer;
        number_piece(&head[2], &numkeys, (long long)PyDict_GET_SIZE(index) + 1);
        if (first != NULL) {
            head[3].text = first;
            head[3].size = first_n;
        }
        for (Py_ssize_t t = 0; t < tail_n; t++)
            number_piece(&head[head_n++], &numbers, tail_values[t]);
        memcpy(head + head_n, rest, (size_t)rest_n * sizeof(Piece));
        PyObject *call = resp_array(head, head_n + rest_n);
        if (call == NULL || PyList_Append(out, call) < 0) Py_CLEAR(out);
        Py_XDECREF(call);
        if (out == NULL) goto done;
    }
done:
    PyMem_Free(head);
    PyMem_Free(rest);
    PyMem_Free(number_buffer);
    Py_XDECREF(index);
    return out;
}

/* The size aiokafka gives a record's key or value: -1 for None, else its length. */
static PyObject *serialized_size(PyObject *data) {
    if (data == Py_None) return PyLong_FromLong(-1);
    Py_ssize_t n = PyObject_Length(data);
    return n < 0 ? NULL : PyLong_FromSsize_t(n);
}

/* The consumer records of one record batch from ``first_offset`` on, as a list of
 * ``record_type`` (a tuple subclass of ConsumerRecord's 11 fields, in its order), untracked
 * (their items are ints, strs, bytes, None and a tuple of header pairs: no cycle). See
 * batch_records in tables/_speedups_py.py. */
static PyObject *batch_records(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5 || !PyLong_Check(args[1]) || !PyUnicode_Check(args[2]) ||
        !PyLong_Check(args[3]) || !PyType_Check(args[4]) ||
        !PyType_IsSubtype((PyTypeObject *)args[4], &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError,
                        "batch_records(batch, first_offset: int, topic: str, partition: int, "
                        "record_type: a tuple subclass of 11 fields)");
        return NULL;
    }
    const ModuleState *st = state_of(module);
    long long first_offset = PyLong_AsLongLong(args[1]);
    if (first_offset == -1 && PyErr_Occurred()) return NULL;
    PyObject *topic = args[2], *partition = args[3];
    PyTypeObject *record_type = (PyTypeObject *)args[4];
    PyObject *iterator = PyObject_GetIter(args[0]);
    if (iterator == NULL) return NULL;
    PyObject *out = PyList_New(0);
    PyObject *record;
    while (out != NULL && (record = PyIter_Next(iterator)) != NULL) {
        PyObject *items[11] = {NULL};
        items[2] = PyObject_GetAttr(record, st->attr_offset);
        long long offset = items[2] == NULL ? -1 : PyLong_AsLongLong(items[2]);
        int failed = offset == -1 && PyErr_Occurred();
        if (!failed && offset < first_offset) { /* before the fetch position: skipped */
            Py_DECREF(items[2]);
            Py_DECREF(record);
            continue;
        }
        if (!failed) {
            items[3] = PyObject_GetAttr(record, st->attr_timestamp);
            items[4] = items[3] == NULL ? NULL : PyObject_GetAttr(record, st->attr_timestamp_type);
            items[5] = items[4] == NULL ? NULL : PyObject_GetAttr(record, st->attr_key);
            items[6] = items[5] == NULL ? NULL : PyObject_GetAttr(record, st->attr_value);
            items[7] = items[6] == NULL ? NULL : PyObject_GetAttr(record, st->attr_checksum);
            items[8] = items[7] == NULL ? NULL : serialized_size(items[5]);
            items[9] = items[8] == NULL ? NULL : serialized_size(items[6]);
            PyObject *headers = items[9] == NULL ? NULL : PyObject_GetAttr(record, st->attr_headers);
            items[10] = headers == NULL ? NULL : PySequence_Tuple(headers);
            Py_XDECREF(headers);
            failed = items[10] == NULL;
        }
        Py_DECREF(record);
        if (failed) {
            for (int i = 2; i < 11; i++) Py_XDECREF(items[i]);
            Py_CLEAR(out);
            break;
        }
        Py_INCREF(topic);
        Py_INCREF(partition);
        items[0] = topic;
        items[1] = partition;
        PyObject *made = untracked_tuple(record_type, items, 11);
        if (made == NULL || PyList_Append(out, made) < 0) Py_CLEAR(out);
        Py_XDECREF(made);
    }
    Py_DECREF(iterator);
    if (out != NULL && PyErr_Occurred()) Py_CLEAR(out); /* the iteration failed */
    return out;
}

/* The spec index of a window or series key, checked against ``labels`` (one label per spec):
 * -1 with an exception set if it is no int or out of range (a corrupt key). */
static Py_ssize_t spec_index(PyObject *labels, PyObject *index) {
    Py_ssize_t i = PyLong_AsSsize_t(index);
    if (i == -1 && PyErr_Occurred()) return -1;
    if (i < 0 || i >= PyTuple_GET_SIZE(labels)) {
        PyErr_SetString(PyExc_IndexError, "a key's spec index is out of range");
        return -1;
    }
    return i;
}

/* One step of PartitionState.close_ready: closes ``keys``, the windows (device, metric, index,
 * start) that end at ``end`` (close_windows in tables/_speedups_py.py). Returns the (device, metric) pairs
 * left with no open window, in the order their last window closed. */
static PyObject *close_windows(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    NEED_CONFIGURED(st);
    if (nargs != 11 || !PyList_Check(args[0]) || !PyDict_Check(args[2]) ||
        !PyList_Check(args[3]) || !PySet_Check(args[4]) || !PySet_Check(args[5]) ||
        !PyDict_Check(args[6]) || !PySet_Check(args[7]) || !PyDict_Check(args[8]) ||
        !PyTuple_Check(args[9]) || !PyType_Check(args[10]) ||
        !PyType_IsSubtype((PyTypeObject *)args[10], &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError,
                        "close_windows(keys: list, end, windows: dict, closed: list, "
                        "changed: set, removed: set, newest: dict, views_changed: set, "
                        "open_per_key: dict, labels: tuple, closed_type: a tuple subclass)");
        return NULL;
    }
    PyObject *keys = args[0], *end = args[1], *windows = args[2], *closed = args[3];
    PyObject *changed = args[4], *removed = args[5], *newest = args[6];
    PyObject *views_changed = args[7], *open_per_key = args[8], *labels = args[9];
    PyTypeObject *closed_type = (PyTypeObject *)args[10];
    PyObject *emptied = PyList_New(0);
    if (emptied == NULL) return NULL;
    for (Py_ssize_t k = 0; k < PyList_GET_SIZE(keys); k++) {
        PyObject *key = PyList_GET_ITEM(keys, k);
        if (!PyTuple_Check(key) || PyTuple_GET_SIZE(key) != 4) {
            PyErr_SetString(PyExc_TypeError, "a window key (device, metric, index, start)");
            goto fail;
        }
        PyObject *device = PyTuple_GET_ITEM(key, 0), *metric = PyTuple_GET_ITEM(key, 1);
        PyObject *index = PyTuple_GET_ITEM(key, 2), *start = PyTuple_GET_ITEM(key, 3);
        Py_ssize_t i = spec_index(labels, index);
        if (i < 0) goto fail;
        /* state = windows.pop(key) */
        PyObject *state = PyDict_GetItemWithError(windows, key);
        if (state == NULL) {
            if (!PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, key);
            goto fail;
        }
        Py_INCREF(state);
        if (PyDict_DelItem(windows, key) < 0) {
            Py_DECREF(state);
            goto fail;
        }
        /* closed.append(ClosedWindow(device, metric, label, start, end, state, text)) */
        PyObject *text = state_text(st, state);
        if (text == NULL) {
            Py_DECREF(state);
            goto fail;
        }
        PyObject *items[7] = {device, metric, PyTuple_GET_ITEM(labels, i), start, end};
        for (int f = 0; f < 5; f++) Py_INCREF(items[f]);
        items[5] = state; /* the references taken above */
        items[6] = text;
        PyObject *window = untracked_tuple(closed_type, items, 7);
        if (window == NULL) goto fail;
        int failed = PyList_Append(closed, window);
        Py_DECREF(window);
        if (failed < 0) goto fail;
        /* changed.discard(key); removed.add(key) */
        if (PySet_Discard(changed, key) < 0 || PySet_Add(removed, key) < 0) goto fail;
        /* if newest.get(series) == start: del newest[series]; views_changed.add(series) */
        PyObject *series = PyTuple_Pack(3, device, metric, index);
        if (series == NULL) goto fail;
        PyObject_GC_UnTrack(series); /* strs and an int: see UNTRACKED */
        PyObject *newest_start = PyDict_GetItemWithError(newest, series);
        int is_newest = 0;
        if (newest_start != NULL) {
            is_newest = PyObject_RichCompareBool(newest_start, start, Py_EQ);
        } else if (PyErr_Occurred()) {
            is_newest = -1;
        }
        if (is_newest > 0 &&
            (PyDict_DelItem(newest, series) < 0 || PySet_Add(views_changed, series) < 0))
            is_newest = -1;
        Py_DECREF(series);
        if (is_newest < 0) goto fail;
        /* open_per_key[pair] -= 1, deleted (and the pair returned) when it reaches 0 */
        PyObject *pair = PyTuple_Pack(2, device, metric);
        if (pair == NULL) goto fail;
        PyObject_GC_UnTrack(pair); /* strs: see UNTRACKED */
        PyObject *open_count = PyDict_GetItemWithError(open_per_key, pair);
        long long remaining = -1;
        if (open_count != NULL) {
            remaining = PyLong_AsLongLong(open_count) - 1;
        } else if (!PyErr_Occurred()) {
            PyErr_SetObject(PyExc_KeyError, pair);
        }
        failed = PyErr_Occurred() != NULL;
        if (!failed && remaining > 0) {
            PyObject *count = PyLong_FromLongLong(remaining);
            failed = count == NULL || PyDict_SetItem(open_per_key, pair, count) < 0;
            Py_XDECREF(count);
        } else if (!failed) {
            failed = PyDict_DelItem(open_per_key, pair) < 0 || PyList_Append(emptied, pair) < 0;
        }
        Py_DECREF(pair);
        if (failed) goto fail;
    }
    return emptied;
fail:
    Py_DECREF(emptied);
    return NULL;
}

/* PartitionState.drain's open views of the series that changed (open_views in
 * tables/_speedups_py.py). */
/* {(device, metric, label): window} of a list of closed windows, the last of each series
 * kept; NULL with an exception. */
static PyObject *last_closed_windows(PyObject *closed) {
    PyObject *out = PyDict_New();
    if (out == NULL) return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(closed); i++) {
        PyObject *window = PyList_GET_ITEM(closed, i);
        if (!PyTuple_Check(window) || PyTuple_GET_SIZE(window) < 5) {
            PyErr_SetString(PyExc_TypeError, "a ClosedWindow is expected");
            Py_DECREF(out);
            return NULL;
        }
        PyObject *series = PyTuple_Pack(3, PyTuple_GET_ITEM(window, VIEW_DEVICE),
                                        PyTuple_GET_ITEM(window, VIEW_METRIC),
                                        PyTuple_GET_ITEM(window, VIEW_WINDOW));
        int stored = series == NULL ? -1 : PyDict_SetItem(out, series, window);
        Py_XDECREF(series);
        if (stored < 0) {
            Py_DECREF(out);
            return NULL;
        }
    }
    return out;
}

static PyObject *open_views(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    NEED_CONFIGURED(st);
    if (nargs != 8 || !PySet_Check(args[0]) || !PySet_Check(args[1]) || !PyDict_Check(args[2]) ||
        !PyDict_Check(args[3]) || !PyTuple_Check(args[4]) || !PyTuple_Check(args[5]) ||
        !PyList_Check(args[6]) || !PyType_Check(args[7]) ||
        !PyType_IsSubtype((PyTypeObject *)args[7], &PyTuple_Type) ||
        PyTuple_GET_SIZE(args[4]) != PyTuple_GET_SIZE(args[5])) {
        PyErr_SetString(PyExc_TypeError,
                        "open_views(views_changed: set, changed: set, newest: dict, "
                        "windows: dict, labels: tuple, sizes: tuple, closed: list, view_type: "
                        "a tuple subclass)");
        return NULL;
    }
    PyObject *changed = args[1], *newest = args[2], *windows = args[3];
    PyObject *labels = args[4], *sizes = args[5], *closed = args[6];
    PyTypeObject *view_type = (PyTypeObject *)args[7];
    PyObject *last_closed = NULL; /* (device, metric, label) -> its last closed window */
    PyObject *zero = PyLong_FromLong(0);
    PyObject *out = PyList_New(0);
    PyObject *iterator = NULL;
    /* series_changed = set(views_changed) | the series of the changed windows that are their
     * series' newest */
    PyObject *series_changed = PySet_New(args[0]);
    if (zero == NULL || out == NULL || series_changed == NULL) goto fail;
    iterator = PyObject_GetIter(changed);
    if (iterator == NULL) goto fail;
    PyObject *changed_key;
    while ((changed_key = PyIter_Next(iterator)) != NULL) {
        PyObject *key_series = NULL;
        if (!PyTuple_Check(changed_key) || PyTuple_GET_SIZE(changed_key) != 4) {
            PyErr_SetString(PyExc_TypeError, "a window key (device, metric, index, start)");
        } else {
            key_series = PyTuple_GetSlice(changed_key, 0, 3);
        }
        if (key_series == NULL) {
            Py_DECREF(changed_key);
            goto fail;
        }
        PyObject_GC_UnTrack(key_series); /* strs and an int: see UNTRACKED */
        PyObject *newest_start = PyDict_GetItemWithError(newest, key_series);
        int is_newest = 0;
        if (newest_start != NULL) {
            is_newest =
                PyObject_RichCompareBool(newest_start, PyTuple_GET_ITEM(changed_key, 3), Py_EQ);
        } else if (PyErr_Occurred()) {
            is_newest = -1;
        }
        if (is_newest > 0 && PySet_Add(series_changed, key_series) < 0) is_newest = -1;
        Py_DECREF(key_series);
        Py_DECREF(changed_key);
        if (is_newest < 0) goto fail;
    }
    Py_DECREF(iterator);
    iterator = PyErr_Occurred() ? NULL : PyObject_GetIter(series_changed);
    if (iterator == NULL) goto fail;
    PyObject *series;
    while ((series = PyIter_Next(iterator)) != NULL) {
        PyObject *view = NULL;
        if (!PyTuple_Check(series) || PyTuple_GET_SIZE(series) != 3) {
            PyErr_SetString(PyExc_TypeError, "a series key (device, metric, index)");
            goto series_done;
        }
        PyObject *device = PyTuple_GET_ITEM(series, 0), *metric = PyTuple_GET_ITEM(series, 1);
        PyObject *index = PyTuple_GET_ITEM(series, 2);
        Py_ssize_t i = spec_index(labels, index);
        if (i < 0) goto series_done;
        PyObject *label = PyTuple_GET_ITEM(labels, i);
        PyObject *start = PyDict_GetItemWithError(newest, series);
        if (start == NULL) {
            if (PyErr_Occurred()) goto series_done;
            /* OpenView(device, metric, label, start, end, None) of its last closed window:
             * no open window any more */
            if (last_closed == NULL && (last_closed = last_closed_windows(closed)) == NULL)
                goto series_done;
            PyObject *wanted = PyTuple_Pack(3, device, metric, label);
            PyObject *window = wanted == NULL ? NULL : PyDict_GetItemWithError(last_closed, wanted);
            Py_XDECREF(wanted);
            if (window == NULL && PyErr_Occurred()) goto series_done;
            PyObject *first = window == NULL ? zero : PyTuple_GET_ITEM(window, VIEW_START);
            PyObject *last = window == NULL ? zero : PyTuple_GET_ITEM(window, VIEW_END);
            PyObject *items[7] = {device, metric, label, first, last, Py_None, Py_None};
            for (int f = 0; f < 7; f++) Py_INCREF(items[f]);
            view = untracked_tuple(view_type, items, 7);
            goto series_done;
        }
        PyObject *key = PyTuple_Pack(4, device, metric, index, start);
        if (key == NULL) goto series_done;
        PyObject *state = PyDict_GetItemWithError(windows, key);
        if (state == NULL && !PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, key);
        Py_DECREF(key);
        if (state == NULL) goto series_done;
        PyObject *end = PyNumber_Add(start, PyTuple_GET_ITEM(sizes, i));
        PyObject *text = end == NULL ? NULL : state_text(st, state);
        if (text == NULL) {
            Py_XDECREF(end);
            goto series_done;
        }
        /* OpenView(device, metric, label, start, start + size, state, text) */
        PyObject *items[7] = {device, metric, label, start, end, state, text};
        for (int f = 0; f < 4; f++) Py_INCREF(items[f]);
        Py_INCREF(state);
        view = untracked_tuple(view_type, items, 7);
    series_done:
        Py_DECREF(series);
        if (view == NULL || PyList_Append(out, view) < 0) {
            Py_XDECREF(view);
            goto fail;
        }
        Py_DECREF(view);
    }
    if (PyErr_Occurred()) goto fail;
    Py_DECREF(iterator);
    Py_DECREF(series_changed);
    Py_XDECREF(last_closed);
    Py_DECREF(zero);
    return out;
fail:
    Py_XDECREF(iterator);
    Py_XDECREF(series_changed);
    Py_XDECREF(last_closed);
    Py_XDECREF(out);
    Py_XDECREF(zero);
    return NULL;
}

/* PartitionState.drain's changelog rows of window keys (delta_rows in
 * tables/_speedups_py.py). Lists, as the changelog's JSON reads back, untracked (UNTRACKED). */
struct delta_context {
    PyObject *windows; /* NULL: rows without the state (removed windows) */
    PyObject *labels;
};

/* [device, metric, label, start] (+ [state]) of one window key, untracked (UNTRACKED). */
static PyObject *delta_row(PyObject *key, void *context) {
    struct delta_context *delta = context;
    if (!PyTuple_Check(key) || PyTuple_GET_SIZE(key) != 4) {
        PyErr_SetString(PyExc_TypeError, "a window key (device, metric, index, start)");
        return NULL;
    }
    Py_ssize_t i = spec_index(delta->labels, PyTuple_GET_ITEM(key, 2));
    if (i < 0) return NULL;
    PyObject *state = NULL;
    if (delta->windows != NULL) {
        state = PyDict_GetItemWithError(delta->windows, key);
        if (state == NULL) {
            if (!PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, key);
            return NULL;
        }
    }
    PyObject *row = PyList_New(state == NULL ? 4 : 5);
    if (row == NULL) return NULL;
    PyObject *items[5] = {PyTuple_GET_ITEM(key, 0), PyTuple_GET_ITEM(key, 1),
                          PyTuple_GET_ITEM(delta->labels, i), PyTuple_GET_ITEM(key, 3), state};
    for (Py_ssize_t f = 0; f < PyList_GET_SIZE(row); f++) {
        Py_INCREF(items[f]);
        PyList_SET_ITEM(row, f, items[f]);
    }
    PyObject_GC_UnTrack(row);
    return row;
}

static PyObject *delta_rows(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !(args[1] == Py_None || PyDict_Check(args[1])) ||
        !PyTuple_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError,
                        "delta_rows(keys: iterable, windows: dict | None, labels: tuple)");
        return NULL;
    }
    struct delta_context delta = {args[1] == Py_None ? NULL : args[1], args[2]};
    return map_list(args[0], delta_row, &delta);
}

/* PartitionState.apply's latest value: with key = (device, metric), if key is not in latest
 * or t is at least latest[key][0]: latest[key] = (t, value); changed.add(key). 0, or -1 with
 * an exception. The key and the (t_us, value) it stores are untracked (UNTRACKED): one per
 * reading, living until the next reading of the key replaces it, they were most of what young
 * collections scanned. */
static int set_latest(PyObject *latest, PyObject *changed, PyObject *key, PyObject *t,
                      PyObject *value) {
    PyObject *previous = PyDict_GetItemWithError(latest, key);
    int newer = 1;
    if (previous != NULL) {
        if (!PyTuple_Check(previous) || PyTuple_GET_SIZE(previous) != 2) {
            PyErr_SetString(PyExc_TypeError, "a latest value (t_us, value)");
            return -1;
        }
        newer = PyObject_RichCompareBool(t, PyTuple_GET_ITEM(previous, 0), Py_GE);
    } else if (PyErr_Occurred()) {
        return -1;
    }
    if (newer <= 0) return newer;
    PyObject *entry = PyTuple_Pack(2, t, value);
    if (entry == NULL) return -1;
    PyObject_GC_UnTrack(entry);
    int failed = PyDict_SetItem(latest, key, entry) < 0 || PySet_Add(changed, key) < 0;
    Py_DECREF(entry);
    return failed ? -1 : 0;
}

static PyObject *update_latest(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6 || !PyDict_Check(args[0]) || !PySet_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError,
                        "update_latest(latest: dict, changed: set, device, metric, t_us, value)");
        return NULL;
    }
    PyObject *key = PyTuple_Pack(2, args[2], args[3]);
    if (key == NULL) return NULL;
    PyObject_GC_UnTrack(key);
    int failed = set_latest(args[0], args[1], key, args[4], args[5]);
    Py_DECREF(key);
    if (failed < 0) return NULL;
    Py_RETURN_NONE;
}

/* The indexes PartitionState._open keeps of the open windows, for apply_common. */
typedef struct {
    const ModuleState *st;
    PyObject *by_end, *ends, *newest, *views_changed, *open_per_key;
    PyObject *pair; /* (device, metric) of the reading being applied */
} OpenIndexes;

/* PartitionState._open, as apply_common's on_open (see there). */
static int register_open(void *context, PyObject *key, long long end) {
    OpenIndexes *ix = context;
    PyObject *end_obj = PyLong_FromLongLong(end);
    if (end_obj == NULL) return -1;
    int failed = 0;
    /* keys = by_end.get(end): None -> by_end[end] = [key]; heappush(ends, end) */
    PyObject *keys = PyDict_GetItemWithError(ix->by_end, end_obj);
    if (keys != NULL) {
        failed = PyList_Append(keys, key) < 0;
    } else if (PyErr_Occurred()) {
        failed = 1;
    } else {
        PyObject *fresh = PyList_New(1);
        if (fresh == NULL) {
            failed = 1;
        } else {
            PyList_SET_ITEM(fresh, 0, Py_NewRef(key));
            failed = PyDict_SetItem(ix->by_end, end_obj, fresh) < 0;
            Py_DECREF(fresh);
        }
        if (!failed) {
            PyObject *done =
                PyObject_CallFunctionObjArgs(ix->st->heappush, ix->ends, end_obj, NULL);
            failed = done == NULL;
            Py_XDECREF(done);
        }
    }
    Py_DECREF(end_obj);
    if (failed) return -1;
    /* if newest.get(series, NO_WATERMARK) < start: newest[series] = start; views_changed.add */
    PyObject *start = PyTuple_GET_ITEM(key, 3);
    PyObject *series = PyTuple_Pack(3, PyTuple_GET_ITEM(key, 0), PyTuple_GET_ITEM(key, 1),
                                    PyTuple_GET_ITEM(key, 2));
    if (series == NULL) return -1;
    PyObject_GC_UnTrack(series); /* strs and an int: see UNTRACKED */
    PyObject *newest_start = PyDict_GetItemWithError(ix->newest, series);
    int newer = 1;
    if (newest_start != NULL)
        newer = PyObject_RichCompareBool(newest_start, start, Py_LT);
    else if (PyErr_Occurred())
        newer = -1;
    if (newer > 0 && (PyDict_SetItem(ix->newest, series, start) < 0 ||
                      PySet_Add(ix->views_changed, series) < 0))
        newer = -1;
    Py_DECREF(series);
    if (newer < 0) return -1;
    /* open_per_key[pair] = open_per_key.get(pair, 0) + 1 */
    PyObject *open_count = PyDict_GetItemWithError(ix->open_per_key, ix->pair);
    if (open_count == NULL && PyErr_Occurred()) return -1;
    PyObject *count =
        open_count == NULL ? Py_NewRef(ix->st->one) : PyNumber_Add(open_count, ix->st->one);
    if (count == NULL) return -1;
    failed = PyDict_SetItem(ix->open_per_key, ix->pair, count) < 0;
    Py_DECREF(count);
    return failed ? -1 : 0;
}

/* A record's timestamp (Kafka's, in ms) as common_reading takes it: NO_TIMESTAMP_MS unless
 * an int from 0 up; LATE_TIMESTAMP_MS from there (also beyond a long long). */
static long long timestamp_of(PyObject *timestamp) {
    if (!PyLong_CheckExact(timestamp)) return NO_TIMESTAMP_MS;
    int overflow = 0;
    long long ms = PyLong_AsLongLongAndOverflow(timestamp, &overflow);
    if (overflow > 0) return LATE_TIMESTAMP_MS;
    if (overflow < 0 || ms < 0) return NO_TIMESTAMP_MS;
    return ms < LATE_TIMESTAMP_MS ? ms : LATE_TIMESTAMP_MS;
}

/* The arguments of apply_common, in order. */
enum {
    A_RECORDS, A_BEGIN, A_MAX_BYTES, A_MAX_FUTURE_US, A_VALID_NAMES, A_LOADS, A_SPECS,
    A_GRACE_US, A_POSITION,
    A_WINDOWS, A_CHANGED, A_BY_END, A_ENDS, A_NEWEST, A_VIEWS_CHANGED, A_OPEN_PER_KEY,
    A_LATEST, A_LATEST_CHANGED, A_STOPS, A_ADMITTED, A_COUNT
};

/* PartitionState.apply_records without sliding windows: applies the common readings of
 * records[begin:] in order and stops at the first record that is not one, is late for
 * every window, is of a device ``admitted`` (a dict, or None: all) lacks or of a (device,
 * metric) ``stops`` maps to True, leaving it to the caller; or right after a record that
 * raises the watermark to stop_watermark or beyond. See apply_common in
 * tables/_speedups_py.py. ``position`` is [next_offset, max_t, watermark, stop_watermark],
 * the first three updated in place, also when it fails. Returns the index of the record it
 * stopped at (len(records): none). */
static PyObject *apply_common(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    NEED_CONFIGURED(st);
    if (nargs != A_COUNT || !PyList_Check(args[A_RECORDS]) || !PyDict_Check(args[A_VALID_NAMES]) ||
        !PyList_Check(args[A_POSITION]) || PyList_GET_SIZE(args[A_POSITION]) != 4 ||
        !PyDict_Check(args[A_WINDOWS]) || !PySet_Check(args[A_CHANGED]) ||
        !PyDict_Check(args[A_BY_END]) || !PyList_Check(args[A_ENDS]) ||
        !PyDict_Check(args[A_NEWEST]) || !PySet_Check(args[A_VIEWS_CHANGED]) ||
        !PyDict_Check(args[A_OPEN_PER_KEY]) || !PyDict_Check(args[A_LATEST]) ||
        !PySet_Check(args[A_LATEST_CHANGED]) || !PyDict_Check(args[A_STOPS]) ||
        !(args[A_ADMITTED] == Py_None || PyDict_Check(args[A_ADMITTED]))) {
        PyErr_SetString(PyExc_TypeError,
                        "apply_common(records: list, begin, max_bytes, max_future_us, "
                        "valid_names: dict, loads, specs, grace_us, position: [next_offset, "
                        "max_t, watermark, stop_watermark], windows: dict, changed: set, "
                        "by_end: dict, ends: list, newest: dict, views_changed: set, "
                        "open_per_key: dict, latest: dict, latest_changed: set, stops: dict, "
                        "admitted: dict | None)");
        return NULL;
    }
    PyObject *stops = args[A_STOPS];
    PyObject *admitted = args[A_ADMITTED] == Py_None ? NULL : args[A_ADMITTED];
    PyObject *records = args[A_RECORDS], *valid_names = args[A_VALID_NAMES];
    PyObject *loads = args[A_LOADS], *position = args[A_POSITION];
    WindowMath specs[MAX_SPECS];
    Py_ssize_t n = window_math(args[A_SPECS], specs);
    if (n < 0) return NULL;
    Py_ssize_t i = PyLong_AsSsize_t(args[A_BEGIN]);
    Py_ssize_t max_bytes = PyLong_AsSsize_t(args[A_MAX_BYTES]);
    long long max_future_us = PyLong_AsLongLong(args[A_MAX_FUTURE_US]);
    if (max_future_us == -1 && PyErr_Occurred()) return NULL;
    if (max_future_us < 0) {
        PyErr_SetString(PyExc_ValueError, "max_future_us must be at least 0");
        return NULL;
    }
    long long grace = PyLong_AsLongLong(args[A_GRACE_US]);
    long long next_offset = PyLong_AsLongLong(PyList_GET_ITEM(position, 0));
    long long max_t = PyLong_AsLongLong(PyList_GET_ITEM(position, 1));
    long long watermark = PyLong_AsLongLong(PyList_GET_ITEM(position, 2));
    long long stop_watermark = PyLong_AsLongLong(PyList_GET_ITEM(position, 3));
    if (PyErr_Occurred()) return NULL;
    long long start_offset = next_offset, start_max_t = max_t, start_watermark = watermark;
    OpenIndexes ix = {st,         args[A_BY_END],        args[A_ENDS], args[A_NEWEST],
                      args[A_VIEWS_CHANGED], args[A_OPEN_PER_KEY], NULL};
    int failed = 0;
    for (i = i < 0 ? 0 : i; i < PyList_GET_SIZE(records); i++) {
        PyObject *record = PyList_GET_ITEM(records, i);
        PyObject *offset_obj = PyObject_GetAttr(record, st->attr_offset);
        long long offset = offset_obj == NULL ? -1 : PyLong_AsLongLong(offset_obj);
        Py_XDECREF(offset_obj);
        if (offset == -1 && PyErr_Occurred()) {
            failed = 1;
            break;
        }
        if (offset < next_offset) continue; /* already in the recovered state */
        PyObject *key = PyObject_GetAttr(record, st->attr_key);
        PyObject *value = key == NULL ? NULL : PyObject_GetAttr(record, st->attr_value);
        if (value == NULL) {
            Py_XDECREF(key);
            failed = 1;
            break;
        }
        PyObject *timestamp = PyObject_GetAttr(record, st->attr_timestamp);
        if (timestamp == NULL) {
            Py_DECREF(key);
            Py_DECREF(value);
            failed = 1;
            break;
        }
        long long timestamp_ms = timestamp_of(timestamp);
        Py_DECREF(timestamp);
        PyObject *device = NULL, *metric = NULL, *number = NULL;
        long long t_us = 0;
        int common = common_reading(st, key, value, timestamp_ms, max_bytes, max_future_us,
                                    valid_names, loads, &device, &metric, &number, &t_us);
        Py_DECREF(key);
        Py_DECREF(value);
        if (common <= 0) {
            failed = common < 0;
            break;
        }
        PyObject *t = PyLong_FromLongLong(t_us);
        PyObject *pair = t == NULL ? NULL : PyTuple_Pack(2, device, metric);
        int applied = -1;
        if (pair != NULL) {
            PyObject_GC_UnTrack(pair); /* strs: see UNTRACKED */
            int left = 0;
            if (admitted != NULL) {
                int known = PyDict_Contains(admitted, device);
                left = known < 0 ? -1 : !known;
            }
            if (left == 0 && PyDict_GET_SIZE(stops) > 0) {
                PyObject *stop = PyDict_GetItemWithError(stops, pair);
                left = stop == NULL ? (PyErr_Occurred() ? -1 : 0) : PyObject_IsTrue(stop);
            }
            if (left != 0) { /* unknown device, or watched: left to the caller (-1: error) */
                Py_DECREF(pair);
                Py_DECREF(t);
                Py_DECREF(device);
                Py_DECREF(metric);
                Py_DECREF(number);
                failed = left < 0;
                break;
            }
            ix.pair = pair;
            applied = apply_to_windows(st, args[A_WINDOWS], args[A_CHANGED], specs, n, device,
                                       metric, number, t, t_us, Py_None, watermark,
                                       register_open, &ix);
            if (applied > 0 &&
                set_latest(args[A_LATEST], args[A_LATEST_CHANGED], pair, t, number) < 0)
                applied = -1;
        }
        Py_XDECREF(pair);
        Py_XDECREF(t);
        Py_DECREF(device);
        Py_DECREF(metric);
        Py_DECREF(number);
        if (applied <= 0) { /* 0: late for every window (nothing changed), left to the caller */
            failed = applied < 0;
            break;
        }
        next_offset = offset + 1;
        if (t_us > max_t) {
            max_t = t_us;
            if (t_us - grace > watermark) watermark = t_us - grace;
        }
        if (watermark >= stop_watermark) {
            i++;
            break;
        }
    }
    /* The position of the records applied, written back even when one failed. */
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *raised = PyErr_GetRaisedException();
#else
    PyObject *type, *exc, *tb;
    PyErr_Fetch(&type, &exc, &tb);
#endif
    long long values[3] = {next_offset, max_t, watermark};
    long long before[3] = {start_offset, start_max_t, start_watermark};
    for (int k = 0; k < 3; k++) {
        if (values[k] == before[k]) continue;
        PyObject *number = PyLong_FromLongLong(values[k]);
        if (number == NULL || PyList_SetItem(position, k, number) < 0) failed = 1;
    }
#if PY_VERSION_HEX >= 0x030C0000
    if (raised != NULL) PyErr_SetRaisedException(raised);
#else
    if (type != NULL) PyErr_Restore(type, exc, tb);
#endif
    if (failed) return NULL;
    return PyLong_FromSsize_t(i);
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS,
     "configure($module, gamma, inv_log_gamma, min_magnitude, zero_key, negative_key, "
     "last_positive, max_buckets, collapse, /)\n--\n\n"
     "QuantileSketch's constants."},
    {"summary_initialize", (PyCFunction)(void (*)(void))summary_initialize, METH_FASTCALL,
     "summary_initialize($module, t_us, value, tags, /)\n--\n\n"
     "Summary.initialize: the state of a window holding one reading."},
    {"summary_add", (PyCFunction)(void (*)(void))summary_add, METH_FASTCALL,
     "summary_add($module, state, t_us, value, tags, /)\n--\n\n"
     "Summary.add: one more reading in a window's state."},
    {"apply_windows", (PyCFunction)(void (*)(void))apply_windows, METH_FASTCALL,
     "apply_windows($module, windows, changed, specs, device, metric, value, t_us, "
     "tags, watermark, /)\n--\n\n"
     "PartitionState.apply's tumbling and hopping windows."},
    {"summary_text", summary_text, METH_O,
     "summary_text($module, state, /)\n--\n\n"
     "Summary.text: the aggregates' text."},
    {"seconds_text", seconds_text, METH_O,
     "seconds_text($module, t_us, /)\n--\n\n"
     "Epoch microseconds as epoch seconds in text."},
    {"window_write", (PyCFunction)(void (*)(void))window_write, METH_FASTCALL,
     "window_write($module, key, version, names, values, /)\n--\n\n"
     "The fenced write of a window's hash: (keys, args, argc)."},
    {"open_view_writes", (PyCFunction)(void (*)(void))open_view_writes, METH_FASTCALL,
     "open_view_writes($module, views, key_prefix, ttl_set, now, ttl, field, /)\n--\n\n"
     "RedisSink's writes of open views."},
    {"latest_writes", (PyCFunction)(void (*)(void))latest_writes, METH_FASTCALL,
     "latest_writes($module, latest, key_prefix, ttl_set, now, ttl, /)\n--\n\n"
     "RedisSink's writes of latest values."},
    {"closed_window_writes", (PyCFunction)(void (*)(void))closed_window_writes, METH_FASTCALL,
     "closed_window_writes($module, closed, closed_prefix, top_prefix, field, /)\n--\n\n"
     "RedisSink's writes of closed windows."},
    {"aggregate_records", (PyCFunction)(void (*)(void))aggregate_records, METH_FASTCALL,
     "aggregate_records($module, closed, closed_window_json, /)\n--\n\n"
     "(key, value) of each closed window's aggregates record."},
    {"line_protocol_lines", (PyCFunction)(void (*)(void))line_protocol_lines, METH_FASTCALL,
     "line_protocol_lines($module, closed, line_protocol, /)\n--\n\n"
     "The line-protocol line of each closed window."},
    {"aggregates_entry", (PyCFunction)(void (*)(void))aggregates_entry, METH_FASTCALL,
     "aggregates_entry($module, value, series, entry_type, /)\n--\n\n"
     "The history entry of a compact aggregates record of a known series, or None."},
    {"aggregates_line", (PyCFunction)(void (*)(void))aggregates_line, METH_FASTCALL,
     "aggregates_line($module, value, heads, /)\n--\n\n"
     "The line-protocol line of a compact aggregates record of a known series, or None."},
    {"close_windows", (PyCFunction)(void (*)(void))close_windows, METH_FASTCALL,
     "close_windows($module, keys, end, windows, closed, changed, removed, newest, "
     "views_changed, open_per_key, labels, closed_type, /)\n--\n\n"
     "Closes the windows of one end; the pairs left with no open window."},
    {"open_views", (PyCFunction)(void (*)(void))open_views, METH_FASTCALL,
     "open_views($module, views_changed, changed, newest, windows, labels, sizes, "
     "closed, view_type, /)\n--\n\n"
     "The open views of the series that changed."},
    {"delta_rows", (PyCFunction)(void (*)(void))delta_rows, METH_FASTCALL,
     "delta_rows($module, keys, windows, labels, /)\n--\n\n"
     "The changelog rows of window keys."},
    {"update_latest", (PyCFunction)(void (*)(void))update_latest, METH_FASTCALL,
     "update_latest($module, latest, changed, device, metric, t_us, value, /)\n--\n\n"
     "The latest value of a (device, metric)."},
    {"history_calls", (PyCFunction)(void (*)(void))history_calls, METH_FASTCALL,
     "history_calls($module, entries, per_call, sha, first_key, tail, /)\n--\n\n"
     "The history script's packed calls of entries, per_call entries each."},
    {"batch_records", (PyCFunction)(void (*)(void))batch_records, METH_FASTCALL,
     "batch_records($module, batch, first_offset, topic, partition, record_type, /)\n--\n\n"
     "A record batch's consumer records from an offset on, as a list of record_type."},
    {"apply_common", (PyCFunction)(void (*)(void))apply_common, METH_FASTCALL,
     "apply_common($module, records, begin, max_bytes, max_future_us, valid_names, loads, "
     "specs, grace_us, position, windows, changed, by_end, ends, newest, views_changed, "
     "open_per_key, latest, latest_changed, stops, admitted, /)\n--\n\n"
     "Applies a fetch's common readings; the index of the first record left."},
    {NULL, NULL, 0, NULL},
};

/* Fills a new module's state; 0, or -1 with an exception. */
static int module_exec(PyObject *module) {
    ModuleState *st = state_of(module);
    st->one = PyLong_FromLong(1);
    st->field_device = PyUnicode_InternFromString("device");
    st->field_metric = PyUnicode_InternFromString("metric");
    st->field_value = PyUnicode_InternFromString("value");
    st->field_ts = PyUnicode_InternFromString("ts");
    st->field_tags = PyUnicode_InternFromString("tags");
    st->attr_offset = PyUnicode_InternFromString("offset");
    st->attr_key = PyUnicode_InternFromString("key");
    st->attr_value = PyUnicode_InternFromString("value");
    st->attr_timestamp = PyUnicode_InternFromString("timestamp");
    st->attr_timestamp_type = PyUnicode_InternFromString("timestamp_type");
    st->attr_checksum = PyUnicode_InternFromString("checksum");
    st->attr_headers = PyUnicode_InternFromString("headers");
    st->text_cache = PyMem_Calloc(TEXT_CACHE_SLOTS, sizeof(TextSlot));
    if (st->text_cache == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    if (st->one == NULL || st->field_device == NULL || st->field_metric == NULL ||
        st->field_value == NULL || st->field_ts == NULL || st->field_tags == NULL ||
        st->attr_offset == NULL || st->attr_key == NULL || st->attr_value == NULL ||
        st->attr_timestamp == NULL || st->attr_timestamp_type == NULL ||
        st->attr_checksum == NULL || st->attr_headers == NULL)
        return -1;
    PyObject *heapq = PyImport_ImportModule("heapq");
    if (heapq == NULL) return -1;
    st->heappush = PyObject_GetAttrString(heapq, "heappush");
    Py_DECREF(heapq);
    return st->heappush == NULL ? -1 : 0;
}

/* The functions the state holds may be part of cycles through their modules. */
static int module_traverse(PyObject *module, visitproc visit, void *arg) {
    ModuleState *st = state_of(module);
    Py_VISIT(st->collapse);
    Py_VISIT(st->heappush);
    return 0;
}

static int module_clear(PyObject *module) {
    ModuleState *st = state_of(module);
    Py_CLEAR(st->collapse);
    Py_CLEAR(st->heappush);
    st->configured = 0;
    return 0;
}

static void module_free(void *module) {
    ModuleState *st = state_of((PyObject *)module);
    module_clear((PyObject *)module);
    Py_CLEAR(st->one);
    Py_CLEAR(st->field_device);
    Py_CLEAR(st->field_metric);
    Py_CLEAR(st->field_value);
    Py_CLEAR(st->field_ts);
    Py_CLEAR(st->field_tags);
    Py_CLEAR(st->attr_offset);
    Py_CLEAR(st->attr_key);
    Py_CLEAR(st->attr_timestamp);
    Py_CLEAR(st->attr_value);
    Py_CLEAR(st->attr_timestamp_type);
    Py_CLEAR(st->attr_checksum);
    Py_CLEAR(st->attr_headers);
    for (int n = 0; n < SMALL_COUNTS; n++) Py_CLEAR(st->small_count_text[n]);
    if (st->text_cache != NULL) {
        for (Py_ssize_t i = 0; i < TEXT_CACHE_SLOTS; i++) Py_CLEAR(st->text_cache[i].text);
        PyMem_Free(st->text_cache);
        st->text_cache = NULL;
    }
}

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_speedups",
    .m_doc = "Pulse's C speedups; their Python definitions are in tables/_speedups_py.py.",
    .m_size = sizeof(ModuleState),
    .m_methods = methods,
    .m_slots = slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC PyInit__speedups(void) {
    return PyModuleDef_Init(&module_def);
}
