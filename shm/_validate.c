/* The read-back packet validator in C: the twin of shm/packet_check.py, which is
 * the readable reference (same name, same argument, same answers; a property
 * test in tests/test_packet_check.py compares them on valid, mutated and random
 * bytes).
 *
 *   packet_is_valid_untrusted(data) -> bool
 *
 * True when the top level of `data` (any contiguous buffer) is well-formed
 * protobuf (varint, 64-bit, length-delimited and 32-bit fields; tags of at
 * most 5 bytes and 32 bits, so field numbers 1..2^29-1; no groups) and no field is one only the service may set (RESERVED in
 * packet_check.py). The bytes come from a producer: every varint is read at
 * most 10 bytes and never past the end, every length and fixed field is checked
 * against the end before it is stepped over. Python's varints are unbounded
 * integers; a value with bits above 63 is kept as "big" here, so that it is
 * never mistaken for a small tag, field number or length.
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

static int valid(const uint8_t *p, Py_ssize_t n) {
    Py_ssize_t i = 0;
    while (i < n) {
        uint64_t tag, value;
        int big, value_big;
        Py_ssize_t start = i;
        i = read_varint(p, i, n, &tag, &big);
        /* Tags of at most 5 bytes and 32 bits: field numbers 1..2^29-1. */
        if (i < 0 || i - start > 5 || big || tag > 0xFFFFFFFFu || (tag >> 3) == 0) return 0;
        if ((tag >> 3) < 256 && is_reserved[tag >> 3]) return 0;
        switch (tag & 7) {
        case 0:  /* varint */
            i = read_varint(p, i, n, &value, &value_big);
            if (i < 0) return 0;
            break;
        case 2:  /* length-delimited */
            i = read_varint(p, i, n, &value, &value_big);
            if (i < 0 || value_big || value > (uint64_t)(n - i)) return 0;
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
    return PyModule_Create(&module);
}
