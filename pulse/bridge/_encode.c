/* The bridge's round encoding in C: pulse/bridge/_encode_py.py is its definition (the same
 * functions, the same results; tests/pulse/bridge/test_encode.py holds them equal).
 *
 * encode_entries converts a stream's entries of the commonest kind (models.entries'
 * common_record: the fields form, device and metric seen valid before, value and ts in
 * JSON's number form, tags seen valid before) into records of the readings topic, encoded in
 * Kafka's record format v2 into the buffer of each record's partition, until an entry it
 * cannot convert or a full partition. append_record appends one record the caller made. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define DONE 0
#define SLOW 1
#define FULL 2
#define HEADER_SIZE 61
#define MAX_EVENT_TIME_US 9223372036854775LL
#define MAX_ABS_VALUE 1e290

static const char STREAM_HEADER[] = "pulse-stream";
static const char ENTRY_HEADER[] = "pulse-entry";
static const char LEASE_HEADER[] = "pulse-lease";

/* Kafka's murmur2 (its Java client's, as aiokafka.partitioner.murmur2). */
static uint32_t murmur2(const unsigned char *data, Py_ssize_t length) {
    const uint32_t m = 0x5bd1e995;
    uint32_t h = 0x9747b28c ^ (uint32_t)length;
    Py_ssize_t quads = length / 4;
    for (Py_ssize_t i = 0; i < quads; i++) {
        const unsigned char *p = data + 4 * i;
        uint32_t k = (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
                     ((uint32_t)p[3] << 24);
        k *= m;
        k ^= k >> 24;
        k *= m;
        h *= m;
        h ^= k;
    }
    const unsigned char *tail = data + (length & ~(Py_ssize_t)3);
    switch (length % 4) {
        case 3:
            h ^= (uint32_t)tail[2] << 16;
            /* fall through */
        case 2:
            h ^= (uint32_t)tail[1] << 8;
            /* fall through */
        case 1:
            h ^= (uint32_t)tail[0];
            h *= m;
    }
    h ^= h >> 13;
    h *= m;
    h ^= h >> 15;
    return h;
}

/* JSON's number grammar, the whole text: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?;
 * *is_integer: no fraction and no exponent. */
static int json_number(const char *p, Py_ssize_t n, int *is_integer) {
    Py_ssize_t i = 0;
    *is_integer = 1;
    if (i < n && p[i] == '-') i++;
    if (i >= n) return 0;
    if (p[i] == '0') {
        i++;
    } else if (p[i] >= '1' && p[i] <= '9') {
        while (i < n && p[i] >= '0' && p[i] <= '9') i++;
    } else {
        return 0;
    }
    if (i < n && p[i] == '.') {
        *is_integer = 0;
        i++;
        if (i >= n || p[i] < '0' || p[i] > '9') return 0;
        while (i < n && p[i] >= '0' && p[i] <= '9') i++;
    }
    if (i < n && (p[i] == 'e' || p[i] == 'E')) {
        *is_integer = 0;
        i++;
        if (i < n && (p[i] == '+' || p[i] == '-')) i++;
        if (i >= n || p[i] < '0' || p[i] > '9') return 0;
        while (i < n && p[i] >= '0' && p[i] <= '9') i++;
    }
    return i == n;
}

/* The double nearest the decimal text p[:n] (JSON's number grammar, already checked), as
 * Python's float() makes it (PyOS_string_to_double, correctly rounded): directly when the
 * digits make an integer up to 2**53 and there are at most 22 decimals and no exponent
 * (Clinger's fast path: an exact integer divided by an exact power of ten, one correctly
 * rounded operation), else by PyOS_string_to_double (p must end in a NUL, or a character
 * that is no part of a number). 0 on error (with no exception set). */
static const double POWERS_OF_TEN[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                       1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                       1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

static int decimal_double(const char *p, Py_ssize_t n, double *out) {
    Py_ssize_t i = 0;
    int negative = 0, digits = 0, decimals = 0, fraction = 0;
    unsigned long long mantissa = 0;
    if (i < n && p[i] == '-') {
        negative = 1;
        i++;
    }
    for (; i < n; i++) {
        char c = p[i];
        if (c == '.') {
            fraction = 1;
        } else if (c >= '0' && c <= '9') {
            if (++digits > 17) goto slow;
            mantissa = mantissa * 10 + (unsigned long long)(c - '0');
            decimals += fraction;
        } else {
            goto slow; /* an exponent */
        }
    }
    if (mantissa > (1ULL << 53) || decimals > 22) goto slow;
    double value = (double)mantissa / POWERS_OF_TEN[decimals];
    *out = negative ? -value : value;
    return 1;
slow:;
    double parsed = PyOS_string_to_double(p, NULL, NULL);
    if (parsed == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    *out = parsed;
    return 1;
}

/* A zigzag varint into out (at most 10 bytes); returns its size. */
static int put_varint(unsigned char *out, long long value) {
    unsigned long long z = ((unsigned long long)value << 1) ^ (unsigned long long)(value >> 63);
    int n = 0;
    while (z > 0x7f) {
        out[n++] = (unsigned char)((z & 0x7f) | 0x80);
        z >>= 7;
    }
    out[n++] = (unsigned char)z;
    return n;
}

static int varint_size(long long value) {
    unsigned char scratch[10];
    return put_varint(scratch, value);
}

typedef struct {
    const char *data;
    Py_ssize_t size;
} Text;

/* The value of a record being encoded, in up to 11 pieces (so it is copied once). */
typedef struct {
    Text parts[11];
    int count;
    Py_ssize_t size;
} Pieces;

static void piece(Pieces *pieces, const char *data, Py_ssize_t size) {
    pieces->parts[pieces->count].data = data;
    pieces->parts[pieces->count].size = size;
    pieces->count++;
    pieces->size += size;
}

/* Per partition: records so far, the first's timestamp, the greatest timestamp; read from
 * and written back to the caller's ``stats`` list (3 ints per partition). */
typedef struct {
    long long count, first, greatest;
} Stat;

static Stat *stats_load(PyObject *stats, Py_ssize_t partitions) {
    if (PyList_GET_SIZE(stats) < 3 * partitions) {
        PyErr_SetString(PyExc_ValueError, "stats must hold 3 ints per partition");
        return NULL;
    }
    Stat *loaded = PyMem_Malloc(sizeof(Stat) * (size_t)(partitions > 0 ? partitions : 1));
    if (loaded == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t p = 0; p < partitions; p++) {
        long long *fields[3] = {&loaded[p].count, &loaded[p].first, &loaded[p].greatest};
        for (int f = 0; f < 3; f++) {
            *fields[f] = PyLong_AsLongLong(PyList_GET_ITEM(stats, 3 * p + f));
            if (*fields[f] == -1 && PyErr_Occurred()) {
                PyMem_Free(loaded);
                return NULL;
            }
        }
    }
    return loaded;
}

static int stats_store(PyObject *stats, const Stat *loaded, Py_ssize_t partitions) {
    for (Py_ssize_t p = 0; p < partitions; p++) {
        long long values[3] = {loaded[p].count, loaded[p].first, loaded[p].greatest};
        for (int f = 0; f < 3; f++) {
            PyObject *item = PyLong_FromLongLong(values[f]);
            if (item == NULL || PyList_SetItem(stats, 3 * p + f, item) < 0) return -1;
        }
    }
    return 0;
}

/* Append one record to buffers[partition]: 1 appended, 0 full (nothing appended), -1 error.
 * The value is the pieces; headers: the stream, the entry id, the lease. */
static int append(PyObject *buffers, Stat *stat, Py_ssize_t partition, const char *key,
                  Py_ssize_t key_size, const Pieces *value, long long timestamp_ms,
                  const Text headers[3], long long limit) {
    static const Text names[3] = {{STREAM_HEADER, sizeof(STREAM_HEADER) - 1},
                                  {ENTRY_HEADER, sizeof(ENTRY_HEADER) - 1},
                                  {LEASE_HEADER, sizeof(LEASE_HEADER) - 1}};
    PyObject *buffer = PyList_GET_ITEM(buffers, partition);
    if (!PyByteArray_Check(buffer)) {
        PyErr_SetString(PyExc_TypeError, "buffers must hold bytearrays");
        return -1;
    }
    long long count = stat->count;
    long long first = count == 0 ? timestamp_ms : stat->first;
    long long body = 1 + varint_size(timestamp_ms - first) + varint_size(count) +
                     varint_size(key_size) + key_size + varint_size(value->size) + value->size +
                     varint_size(3);
    for (int h = 0; h < 3; h++)
        body += varint_size(names[h].size) + names[h].size + varint_size(headers[h].size) +
                headers[h].size;
    long long total = varint_size(body) + body;
    Py_ssize_t before = PyByteArray_GET_SIZE(buffer);
    if (count > 0 && HEADER_SIZE + before + total > limit) return 0;
    if (PyByteArray_Resize(buffer, before + (Py_ssize_t)total) < 0) return -1;
    unsigned char *out = (unsigned char *)PyByteArray_AS_STRING(buffer) + before;
    out += put_varint(out, body);
    *out++ = 0; /* attributes */
    out += put_varint(out, timestamp_ms - first);
    out += put_varint(out, count);
    out += put_varint(out, key_size);
    memcpy(out, key, (size_t)key_size);
    out += key_size;
    out += put_varint(out, value->size);
    for (int i = 0; i < value->count; i++) {
        memcpy(out, value->parts[i].data, (size_t)value->parts[i].size);
        out += value->parts[i].size;
    }
    out += put_varint(out, 3);
    for (int h = 0; h < 3; h++) {
        out += put_varint(out, names[h].size);
        memcpy(out, names[h].data, (size_t)names[h].size);
        out += names[h].size;
        out += put_varint(out, headers[h].size);
        memcpy(out, headers[h].data, (size_t)headers[h].size);
        out += headers[h].size;
    }
    if (count == 0 || timestamp_ms > stat->greatest) stat->greatest = timestamp_ms;
    stat->count = count + 1;
    stat->first = first;
    return 1;
}

static int bytes_of(PyObject *object, Text *out) {
    if (!PyBytes_Check(object)) return 0;
    out->data = PyBytes_AS_STRING(object);
    out->size = PyBytes_GET_SIZE(object);
    return 1;
}

static int is(const Text *text, const char *literal, Py_ssize_t size) {
    return text->size == size && memcmp(text->data, literal, (size_t)size) == 0;
}

/* "{seconds}.{micros:06d}" of t_us (0 or more) into out, NUL-terminated: its size. */
static int seconds_text(char *out, long long t_us) {
    char digits[24];
    int n = 0;
    long long seconds = t_us / 1000000, micros = t_us % 1000000;
    do {
        digits[n++] = (char)('0' + seconds % 10);
        seconds /= 10;
    } while (seconds > 0);
    int size = 0;
    while (n > 0) out[size++] = digits[--n];
    out[size++] = '.';
    for (int i = 5; i >= 0; i--) {
        out[size + i] = (char)('0' + micros % 10);
        micros /= 10;
    }
    size += 6;
    out[size] = '\0';
    return size;
}

/* What common_record does with one entry: 1 and the record's parts, 0 when it is not of the
 * commonest kind, -1 on error. ts_buffer holds a ts made from the entry's time. */
typedef struct {
    PyObject *device;
    Pieces value;
    long long timestamp_ms;
    PyObject *tags_key; /* a new reference, or NULL */
} Common;

static int common(PyObject *entry_id, PyObject *fields, PyObject *names, PyObject *tags_seen,
                  long long max_bytes, long long max_future_us, char *ts_buffer, Common *out) {
    Text id;
    out->tags_key = NULL;
    if (!bytes_of(entry_id, &id) || !PyList_Check(fields)) return 0;
    Py_ssize_t n = PyList_GET_SIZE(fields);
    if (n & 1) return 0;
    PyObject *device = NULL, *metric = NULL, *value = NULL, *ts = NULL;
    Py_ssize_t tag_count = 0;
    for (Py_ssize_t i = 0; i < n; i += 2) {
        Text name;
        if (!bytes_of(PyList_GET_ITEM(fields, i), &name)) return 0;
        PyObject *field = PyList_GET_ITEM(fields, i + 1);
        if (!PyBytes_Check(field)) return 0;
        if (is(&name, "device", 6)) {
            if (device != NULL) return 0;
            device = field;
        } else if (is(&name, "metric", 6)) {
            if (metric != NULL) return 0;
            metric = field;
        } else if (is(&name, "value", 5)) {
            if (value != NULL) return 0;
            value = field;
        } else if (is(&name, "ts", 2)) {
            if (ts != NULL) return 0;
            ts = field;
        } else if (name.size >= 4 && memcmp(name.data, "tag.", 4) == 0) {
            tag_count++;
        } else if (is(&name, "json", 4)) {
            return 0;
        }
    }
    if (device == NULL || metric == NULL || value == NULL) return 0;
    PyObject *device_json = PyDict_GetItemWithError(names, device);
    if (device_json == NULL) return PyErr_Occurred() ? -1 : 0;
    PyObject *metric_json = PyDict_GetItemWithError(names, metric);
    if (metric_json == NULL) return PyErr_Occurred() ? -1 : 0;
    Text device_text, metric_text, value_text = {NULL, 0};
    if (!bytes_of(device_json, &device_text) || !bytes_of(metric_json, &metric_text)) return 0;
    bytes_of(value, &value_text);
    int is_integer;
    if (!json_number(value_text.data, value_text.size, &is_integer)) return 0;
    /* -1e290 <= float(value) <= 1e290: certain without parsing it for a number with no
     * exponent and at most 290 digits before any point (rounding is monotonic). */
    Py_ssize_t whole = 0;
    int exponent = 0, point = 0;
    for (Py_ssize_t i = 0; i < value_text.size; i++) {
        char c = value_text.data[i];
        if (c == 'e' || c == 'E') {
            exponent = 1; /* also after a point: 1.5e300 */
            break;
        }
        if (c == '.') point = 1;
        if (!point) whole++;
    }
    if (exponent || whole > 290) {
        double number;
        if (!decimal_double(value_text.data, value_text.size, &number)) return 0;
        if (!(number >= -MAX_ABS_VALUE && number <= MAX_ABS_VALUE)) return 0;
    }
    /* The entry's time: digits, '-', digits. */
    long long timestamp_ms = 0;
    Py_ssize_t dash = 0;
    while (dash < id.size && id.data[dash] >= '0' && id.data[dash] <= '9') {
        if (dash >= 18) return 0;
        timestamp_ms = timestamp_ms * 10 + (id.data[dash] - '0');
        dash++;
    }
    if (dash < 1 || dash >= id.size || id.data[dash] != '-') return 0;
    if (timestamp_ms > MAX_EVENT_TIME_US / 1000) return 0;
    Text ts_text = {NULL, 0};
    if (ts == NULL) {
        /* ts_text(t_us) of models.entries: seconds with six decimals, if exact */
        long long t_us = timestamp_ms * 1000;
        if (t_us > MAX_EVENT_TIME_US) return 0;
        int size = seconds_text(ts_buffer, t_us);
        double back;
        if (!decimal_double(ts_buffer, size, &back)) return 0;
        if ((long long)nearbyint(back * 1000000.0) != t_us) return 0;
        ts_text.data = ts_buffer;
        ts_text.size = size;
    } else {
        bytes_of(ts, &ts_text);
        int ts_integer;
        if (ts_text.size > 40 || !json_number(ts_text.data, ts_text.size, &ts_integer)) return 0;
        long long t_us;
        if (!ts_integer) {
            double seconds;
            if (!decimal_double(ts_text.data, ts_text.size, &seconds)) return 0;
            double scaled = seconds * 1000000.0;
            if (!(scaled >= -0.5 && scaled <= (double)MAX_EVENT_TIME_US)) return 0;
            t_us = (long long)nearbyint(scaled); /* Python's round(): half to even */
        } else {
            if (ts_text.size > 18) return 0;
            long long seconds = 0;
            Py_ssize_t i = 0;
            int negative = ts_text.data[0] == '-';
            if (negative) i++;
            for (; i < ts_text.size; i++) seconds = seconds * 10 + (ts_text.data[i] - '0');
            if (negative) seconds = -seconds;
            if (seconds < 0 || seconds > MAX_EVENT_TIME_US / 1000000) return 0;
            t_us = seconds * 1000000;
        }
        if (t_us < 0 || t_us > MAX_EVENT_TIME_US) return 0;
        if (t_us - timestamp_ms * 1000 > max_future_us) return 0;
    }
    Text tags_text = {NULL, 0};
    if (tag_count > 0) {
        PyObject *key = PyTuple_New(2 * tag_count);
        if (key == NULL) return -1;
        Py_ssize_t t = 0;
        for (Py_ssize_t i = 0; i < n; i += 2) {
            PyObject *name = PyList_GET_ITEM(fields, i);
            if (PyBytes_GET_SIZE(name) >= 4 && memcmp(PyBytes_AS_STRING(name), "tag.", 4) == 0) {
                PyObject *field = PyList_GET_ITEM(fields, i + 1);
                Py_INCREF(name);
                Py_INCREF(field);
                PyTuple_SET_ITEM(key, t++, name);
                PyTuple_SET_ITEM(key, t++, field);
            }
        }
        PyObject *tags_json = PyDict_GetItemWithError(tags_seen, key);
        if (tags_json == NULL) {
            Py_DECREF(key);
            return PyErr_Occurred() ? -1 : 0;
        }
        if (!bytes_of(tags_json, &tags_text)) {
            Py_DECREF(key);
            return 0;
        }
        out->tags_key = key; /* keeps tags_json's key (and so the text) alive */
    }
    Pieces *v = &out->value;
    v->count = 0;
    v->size = 0;
    piece(v, "{\"device\":", 10);
    piece(v, device_text.data, device_text.size);
    piece(v, ",\"metric\":", 10);
    piece(v, metric_text.data, metric_text.size);
    piece(v, ",\"value\":", 9);
    piece(v, value_text.data, value_text.size);
    piece(v, ",\"ts\":", 6);
    piece(v, ts_text.data, ts_text.size);
    if (tags_text.data != NULL) {
        piece(v, ",\"tags\":", 8);
        piece(v, tags_text.data, tags_text.size);
    }
    piece(v, "}", 1);
    if (v->size > max_bytes) {
        Py_CLEAR(out->tags_key);
        return 0;
    }
    out->device = device;
    out->timestamp_ms = timestamp_ms;
    return 1;
}

static PyObject *encode_entries(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *entries, *names, *tags_seen, *partitions, *buffers, *stats, *stream, *lease, *ids;
    Py_ssize_t start, stop, partition_count;
    long long max_bytes, max_future_us, limit;
    if (!PyArg_ParseTuple(args, "O!nnO!O!LLO!nO!O!SSLO!", &PyList_Type, &entries, &start, &stop,
                          &PyDict_Type, &names, &PyDict_Type, &tags_seen, &max_bytes,
                          &max_future_us, &PyDict_Type, &partitions, &partition_count,
                          &PyList_Type, &buffers, &PyList_Type, &stats, &stream, &lease, &limit,
                          &PyList_Type, &ids))
        return NULL;
    if (partition_count <= 0) {
        PyErr_SetString(PyExc_ValueError, "no partitions");
        return NULL;
    }
    if (stop > PyList_GET_SIZE(entries)) stop = PyList_GET_SIZE(entries);
    if (PyList_GET_SIZE(buffers) < partition_count) {
        PyErr_SetString(PyExc_ValueError, "buffers must hold one bytearray per partition");
        return NULL;
    }
    Stat *loaded = stats_load(stats, partition_count);
    if (loaded == NULL) return NULL;
    PyObject *result = NULL;
    Text headers[3];
    bytes_of(stream, &headers[0]);
    bytes_of(lease, &headers[2]);
    char ts_buffer[48];
    Py_ssize_t index = start;
    int status = DONE;
    for (; index < stop; index++) {
        PyObject *entry = PyList_GET_ITEM(entries, index);
        if (!PyList_Check(entry) || PyList_GET_SIZE(entry) != 2) {
            status = SLOW;
            break;
        }
        PyObject *entry_id = PyList_GET_ITEM(entry, 0);
        Common made;
        int found = common(entry_id, PyList_GET_ITEM(entry, 1), names, tags_seen, max_bytes,
                           max_future_us, ts_buffer, &made);
        if (found < 0) goto done;
        if (found == 0) {
            status = SLOW;
            break;
        }
        PyObject *known = PyDict_GetItemWithError(partitions, made.device);
        Py_ssize_t partition;
        if (known != NULL) {
            partition = PyLong_AsSsize_t(known);
        } else {
            if (PyErr_Occurred()) {
                Py_XDECREF(made.tags_key);
                goto done;
            }
            uint32_t hash = murmur2((const unsigned char *)PyBytes_AS_STRING(made.device),
                                    PyBytes_GET_SIZE(made.device));
            partition = (Py_ssize_t)((hash & 0x7fffffff) % (uint32_t)partition_count);
            PyObject *number = PyLong_FromSsize_t(partition);
            if (number == NULL || PyDict_SetItem(partitions, made.device, number) < 0) {
                Py_XDECREF(number);
                Py_XDECREF(made.tags_key);
                goto done;
            }
            Py_DECREF(number);
        }
        bytes_of(entry_id, &headers[1]);
        if (partition < 0 || partition >= partition_count) {
            Py_XDECREF(made.tags_key);
            PyErr_SetString(PyExc_IndexError, "partition out of range");
            goto done;
        }
        int appended = append(buffers, &loaded[partition], partition,
                              PyBytes_AS_STRING(made.device), PyBytes_GET_SIZE(made.device),
                              &made.value, made.timestamp_ms, headers, limit);
        Py_XDECREF(made.tags_key);
        if (appended < 0) goto done;
        if (appended == 0) {
            status = FULL;
            break;
        }
        if (PyList_Append(ids, entry_id) < 0) goto done;
    }
    if (status == DONE) index = stop;
    if (stats_store(stats, loaded, partition_count) == 0)
        result = Py_BuildValue("(ni)", index, status);
done:
    PyMem_Free(loaded);
    return result;
}

static int stat_get(PyObject *stats, Py_ssize_t index, long long *out) {
    *out = PyLong_AsLongLong(PyList_GET_ITEM(stats, index));
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

static int stat_set(PyObject *stats, Py_ssize_t index, long long value) {
    PyObject *item = PyLong_FromLongLong(value);
    if (item == NULL) return -1;
    return PyList_SetItem(stats, index, item); /* steals item */
}

static PyObject *append_record(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *buffers, *stats;
    Py_ssize_t partition;
    const char *key, *value, *stream, *entry, *lease;
    Py_ssize_t key_size, value_size, stream_size, entry_size, lease_size;
    long long timestamp_ms, limit;
    if (!PyArg_ParseTuple(args, "O!O!ny#y#L(y#y#y#)L", &PyList_Type, &buffers, &PyList_Type,
                          &stats, &partition, &key, &key_size, &value, &value_size,
                          &timestamp_ms, &stream, &stream_size, &entry, &entry_size, &lease,
                          &lease_size, &limit))
        return NULL;
    if (partition < 0 || partition >= PyList_GET_SIZE(buffers) ||
        3 * partition + 2 >= PyList_GET_SIZE(stats)) {
        PyErr_SetString(PyExc_IndexError, "partition out of range");
        return NULL;
    }
    Pieces pieces = {.count = 0, .size = 0};
    piece(&pieces, value, value_size);
    Text headers[3] = {{stream, stream_size}, {entry, entry_size}, {lease, lease_size}};
    Stat stat;
    if (stat_get(stats, 3 * partition, &stat.count) < 0 ||
        stat_get(stats, 3 * partition + 1, &stat.first) < 0 ||
        stat_get(stats, 3 * partition + 2, &stat.greatest) < 0)
        return NULL;
    int appended = append(buffers, &stat, partition, key, key_size, &pieces, timestamp_ms,
                          headers, limit);
    if (appended < 0) return NULL;
    if (appended && (stat_set(stats, 3 * partition, stat.count) < 0 ||
                     stat_set(stats, 3 * partition + 1, stat.first) < 0 ||
                     stat_set(stats, 3 * partition + 2, stat.greatest) < 0))
        return NULL;
    return PyBool_FromLong(appended);
}

static PyMethodDef methods[] = {
    {"encode_entries", encode_entries, METH_VARARGS,
     "Encode a stream's commonest entries into the readings topic's records."},
    {"append_record", append_record, METH_VARARGS, "Append one record to a partition's records."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "pulse.bridge._encode", NULL, -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__encode(void) { return PyModule_Create(&module); }
