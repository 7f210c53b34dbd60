/* The read-back packet validator in C: the twin of shm/packet_check.py, which is
 * the readable reference (same name, same argument, same answers; a property
 * test in tests/test_packet_check.py compares them on valid, mutated and random
 * bytes).
 *
 *   packet_is_valid_untrusted(data) -> bool
 *
 * True when the official parser would read `data` (any contiguous buffer) as a
 * TracePacket, descending into every nested message and packed field it reads
 * (shm/trace_schema.py, loaded at import), and no top-level field is one only
 * the service may set (RESERVED in packet_check.py). The rules are
 * packet_check.py's. The bytes come from a producer: every varint is read at
 * most 10 bytes and never past the end of its message, every length and fixed
 * field is checked against that end before it is stepped over, nesting stops
 * at MAX_DEPTH. Python's varints are unbounded integers; a value with bits
 * above 63 is kept as "big" here, so that it is never mistaken for a small
 * tag or length.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

/* TracePacket fields only the service may set: packet_check.RESERVED_FIELDS. */
static const unsigned reserved[] = {3, 10, 33, 35, 36, 50, 69, 79, 98, 124, 125, 133};
static unsigned char is_reserved[256];

/* Reads a varint at p[i], at most 10 bytes and not past n. Returns the offset
 * after it, or -1 (unterminated). *big is set when the value needs more than
 * 64 bits (Python keeps them; such a value is larger than any bound here). */
static Py_ssize_t read_varint(const uint8_t *p, Py_ssize_t i, Py_ssize_t n,
                              uint64_t *value, int *big) {
    uint64_t v = 0;
    Py_ssize_t end = i + 10 < n ? i + 10 : n;
    *big = 0;
    for (unsigned shift = 0; i < end; i++, shift += 7) {
        uint8_t b = p[i];
        v |= (uint64_t)(b & 0x7F) << shift;
        if (shift == 63 && (b & 0x7E)) *big = 1;  /* bits 64..69 */
        if (b < 0x80) { *value = v; return i + 1; }
    }
    return -1;
}

/* shm/trace_schema.py's MESSAGES, loaded at import: message m's entries are
 * entries[first[m] .. first[m + 1]), sorted by field number. */
typedef struct { uint32_t number; int32_t kind; } Entry;
enum { PACKED_VARINT = -1, PACKED_32 = -2, PACKED_64 = -3, MAX_DEPTH = 64 };
static Entry *entries;
static Py_ssize_t *first;
static Py_ssize_t n_messages;

static int kind_of(Py_ssize_t message, uint32_t number, int32_t *kind) {
    Py_ssize_t lo = first[message], hi = first[message + 1];
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if (entries[mid].number < number) lo = mid + 1;
        else hi = mid;
    }
    if (lo < first[message + 1] && entries[lo].number == number) {
        *kind = entries[lo].kind;
        return 1;
    }
    return 0;
}

static int valid_message(const uint8_t *p, Py_ssize_t i, Py_ssize_t n, Py_ssize_t message,
                         int depth);

/* packet_check._payload_ok: the payload p[i..n) of a field the parser reads into. */
static int valid_payload(const uint8_t *p, Py_ssize_t i, Py_ssize_t n, int32_t kind, int depth) {
    if (kind >= 0)
        return depth < MAX_DEPTH && valid_message(p, i, n, kind, depth + 1);
    if (kind == PACKED_VARINT) {
        while (i < n) {
            uint64_t value;
            int big;
            i = read_varint(p, i, n, &value, &big);
            if (i < 0) return 0;
        }
        return 1;
    }
    if (kind == PACKED_32) return (n - i) % 4 == 0;
    if (kind == PACKED_64) return (n - i) % 8 == 0;
    return 0;
}

/* packet_check._message_ok: the fields in p[i..n) of message type `message`. */
static int valid_message(const uint8_t *p, Py_ssize_t i, Py_ssize_t n, Py_ssize_t message,
                         int depth) {
    while (i < n) {
        uint64_t tag, value;
        int big, value_big;
        int32_t kind;
        Py_ssize_t start = i;
        i = read_varint(p, i, n, &tag, &big);
        /* Tags of at most 5 bytes and 32 bits: field numbers 1..2^29-1. */
        if (i < 0 || i - start > 5 || big || tag > 0xFFFFFFFFu || (tag >> 3) == 0) return 0;
        if (message == 0 && (tag >> 3) < 256 && is_reserved[tag >> 3]) return 0;
        switch (tag & 7) {
        case 0:  /* varint */
            i = read_varint(p, i, n, &value, &value_big);
            if (i < 0) return 0;
            break;
        case 2:  /* length-delimited */
            i = read_varint(p, i, n, &value, &value_big);
            if (i < 0 || value_big || value > (uint64_t)(n - i)) return 0;
            if (kind_of(message, (uint32_t)(tag >> 3), &kind) &&
                !valid_payload(p, i, i + (Py_ssize_t)value, kind, depth))
                return 0;
            i += (Py_ssize_t)value;
            break;
        case 1:  /* 64-bit */
            if (n - i < 8) return 0;
            i += 8;
            break;
        case 5:  /* 32-bit */
            if (n - i < 4) return 0;
            i += 4;
            break;
        default:  /* groups (3, 4) and the undefined 6, 7 */
            return 0;
        }
    }
    return 1;
}

static int valid(const uint8_t *p, Py_ssize_t n) { return valid_message(p, 0, n, 0, 0); }

/* Copies MESSAGES into entries/first, checking every kind is a message index or
 * a PACKED_* code (a corrupt table must fail the import, not a read). */
static int load_schema(void) {
    PyObject *mod = PyImport_ImportModule("shm.trace_schema");
    if (mod == NULL) return -1;
    PyObject *messages = PyObject_GetAttrString(mod, "MESSAGES");
    Py_DECREF(mod);
    if (messages == NULL) return -1;
    int rc = -1;
    if (!PyTuple_Check(messages)) goto done;
    n_messages = PyTuple_GET_SIZE(messages);
    Py_ssize_t total = 0;
    for (Py_ssize_t m = 0; m < n_messages; m++) {
        PyObject *row = PyTuple_GET_ITEM(messages, m);
        if (!PyTuple_Check(row)) goto done;
        total += PyTuple_GET_SIZE(row);
    }
    entries = PyMem_Calloc((size_t)total + 1, sizeof *entries);
    first = PyMem_Calloc((size_t)n_messages + 1, sizeof *first);
    if (entries == NULL || first == NULL) goto done;
    Py_ssize_t k = 0;
    for (Py_ssize_t m = 0; m < n_messages; m++) {
        PyObject *row = PyTuple_GET_ITEM(messages, m);
        first[m] = k;
        for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(row); j++, k++) {
            long number, kind;
            if (!PyArg_ParseTuple(PyTuple_GET_ITEM(row, j), "ll", &number, &kind)) goto done;
            if (number < 1 || number > 0x1FFFFFFF || kind < PACKED_64 || kind >= n_messages ||
                (k > first[m] && (uint32_t)number <= entries[k - 1].number))
                goto done;
            entries[k].number = (uint32_t)number;
            entries[k].kind = (int32_t)kind;
        }
    }
    first[n_messages] = k;
    rc = 0;
done:
    Py_DECREF(messages);
    if (rc < 0 && !PyErr_Occurred())
        PyErr_SetString(PyExc_ValueError, "shm.trace_schema.MESSAGES is malformed");
    return rc;
}

static PyObject *packet_is_valid_untrusted(PyObject *self, PyObject *data) {
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_C_CONTIGUOUS) < 0) return NULL;
    int ok = valid((const uint8_t *)view.buf, view.len);
    PyBuffer_Release(&view);
    return PyBool_FromLong(ok);
}

static PyMethodDef methods[] = {
    {"packet_is_valid_untrusted", packet_is_valid_untrusted, METH_O,
     "packet_is_valid_untrusted(data) -> bool: top level well-formed, no reserved field"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "shm._validate", NULL, -1, methods};

PyMODINIT_FUNC PyInit__validate(void) {
    for (size_t k = 0; k < sizeof reserved / sizeof reserved[0]; k++) is_reserved[reserved[k]] = 1;
    if (load_schema() < 0) return NULL;
    return PyModule_Create(&module);
}
