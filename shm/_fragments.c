/* The common case of shm.packets.slice_fragments_untrusted in C: the twin of
 * shm.packets.slice_fragments_fast, which is the readable reference (same name,
 * same arguments, same answers; tests/test_fragments_twins.py compares them on
 * valid, mutated and random payloads).
 *
 *   slice_fragments_fast(data, start) -> (pieces, end, last_hdr, OK) | None
 *
 * Walks the fragments of data[start:] (any contiguous buffer of producer bytes):
 * each a 1-byte length under 0x80, or a 4-byte redundant varint (bytes 0-2 with
 * the continuation bit, byte 3 without), then that many bytes. If they end
 * exactly at the end of `data`, returns the bytes of each fragment, len(data),
 * the offset of the last fragment's length (start if none) and OK (0).
 * Anything else (a length of another shape, a fragment running past the end,
 * start out of range, a payload of PACKET_DROPPED_SIZE bytes or more) returns
 * None: slice_fragments_untrusted then parses in Python, which says what is
 * wrong. No length is trusted: every step is checked against the end first.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define PACKET_DROPPED_SIZE 0x0FFFFFFF /* shm.abi.PACKET_DROPPED_SIZE */

static PyObject *slice(const uint8_t *p, Py_ssize_t end, Py_ssize_t start) {
    if (start < 0 || start > end || end >= PACKET_DROPPED_SIZE) Py_RETURN_NONE;
    PyObject *pieces = PyList_New(0);
    if (pieces == NULL) return NULL;
    Py_ssize_t off = start, hdr = start;
    while (off < end) {
        Py_ssize_t begin, size;
        hdr = off;
        if (p[off] < 0x80) {
            begin = off + 1;
            size = p[off];
        } else {
            if (end - off < 4 || !(p[off] & p[off + 1] & p[off + 2] & 0x80) || (p[off + 3] & 0x80))
                goto decline;
            begin = off + 4;
            size = (p[off] & 0x7F) | (p[off + 1] & 0x7F) << 7 | (p[off + 2] & 0x7F) << 14 |
                   (Py_ssize_t)p[off + 3] << 21;
        }
        if (size > end - begin) goto decline;
        PyObject *piece = PyBytes_FromStringAndSize((const char *)p + begin, size);
        if (piece == NULL || PyList_Append(pieces, piece) < 0) {
            Py_XDECREF(piece);
            Py_DECREF(pieces);
            return NULL;
        }
        Py_DECREF(piece);
        off = begin + size;
    }
    return Py_BuildValue("(Nnni)", pieces, end, hdr, 0);
decline:
    Py_DECREF(pieces);
    Py_RETURN_NONE;
}

static PyObject *slice_fragments_fast(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "slice_fragments_fast(data, start)");
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    if (start == -1 && PyErr_Occurred()) return NULL;
    if (PyBytes_CheckExact(args[0]))
        return slice((const uint8_t *)PyBytes_AS_STRING(args[0]), PyBytes_GET_SIZE(args[0]), start);
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *result = slice((const uint8_t *)view.buf, view.len, start);
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef methods[] = {
    {"slice_fragments_fast", (PyCFunction)(void (*)(void))slice_fragments_fast, METH_FASTCALL,
     "slice_fragments_fast(data, start) -> (pieces, end, last_hdr, OK) | None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "shm._fragments", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fragments(void) { return PyModule_Create(&module); }
