/* 32-bit atomics on a writable Python buffer: the only compiled code in tracebus.
 *
 * Python has no cross-process atomic operations, but the SMB page header bitmap
 * and the chunk header's packet count are shared with another process and must
 * be read and written with acquire/release ordering and compare-and-swap.
 *
 *   load32(buf, offset)              -> int   (acquire)
 *   store32(buf, offset, value)      -> None  (release)
 *   cas32(buf, offset, expected, new) -> int  (acq_rel; returns the value seen:
 *                                              equal to `expected` on success)
 *
 * `offset` must be 4-byte aligned and offset + 4 <= len(buf); otherwise
 * ValueError is raised (never a crash). `buf` must expose a writable,
 * contiguous buffer (mmap, bytearray, memoryview of either).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

static int get_word(PyObject *obj, PyObject *off_obj, Py_buffer *view, uint32_t **word) {
    Py_ssize_t off = PyLong_AsSsize_t(off_obj);
    if (off == -1 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_SetString(PyExc_ValueError, "atomic access offset out of range");
        }
        return -1;
    }
    if (PyObject_GetBuffer(obj, view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) return -1;
    if (off < 0 || off > view->len - 4 || ((uintptr_t)((char *)view->buf + off) & 3u) != 0) {
        PyBuffer_Release(view);
        PyErr_Format(PyExc_ValueError,
                     "atomic access at offset %zd out of bounds or misaligned (buffer of %zd bytes)",
                     off, view->len);
        return -1;
    }
    *word = (uint32_t *)((char *)view->buf + off);
    return 0;
}

static int get_u32(PyObject *obj, uint32_t *out) {
    unsigned long v = PyLong_AsUnsignedLong(obj);
    if (v == (unsigned long)-1 && PyErr_Occurred()) return -1;
    if (v > 0xFFFFFFFFul) {
        PyErr_SetString(PyExc_OverflowError, "value does not fit in 32 bits");
        return -1;
    }
    *out = (uint32_t)v;
    return 0;
}

static PyObject *load32(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) { PyErr_SetString(PyExc_TypeError, "load32(buf, offset)"); return NULL; }
    Py_buffer view; uint32_t *w;
    if (get_word(args[0], args[1], &view, &w) < 0) return NULL;
    uint32_t v = __atomic_load_n(w, __ATOMIC_ACQUIRE);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLong(v);
}

static PyObject *store32(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) { PyErr_SetString(PyExc_TypeError, "store32(buf, offset, value)"); return NULL; }
    uint32_t v;
    if (get_u32(args[2], &v) < 0) return NULL;
    Py_buffer view; uint32_t *w;
    if (get_word(args[0], args[1], &view, &w) < 0) return NULL;
    __atomic_store_n(w, v, __ATOMIC_RELEASE);
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

static PyObject *cas32(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) { PyErr_SetString(PyExc_TypeError, "cas32(buf, offset, expected, new)"); return NULL; }
    uint32_t expected, desired;
    if (get_u32(args[2], &expected) < 0 || get_u32(args[3], &desired) < 0) return NULL;
    Py_buffer view; uint32_t *w;
    if (get_word(args[0], args[1], &view, &w) < 0) return NULL;
    __atomic_compare_exchange_n(w, &expected, desired, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLong(expected);
}

static PyMethodDef methods[] = {
    {"load32", (PyCFunction)(void (*)(void))load32, METH_FASTCALL, "load32(buf, offset) -> int (acquire)"},
    {"store32", (PyCFunction)(void (*)(void))store32, METH_FASTCALL, "store32(buf, offset, value) (release)"},
    {"cas32", (PyCFunction)(void (*)(void))cas32, METH_FASTCALL,
     "cas32(buf, offset, expected, new) -> value seen (== expected on success)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "shm._atomics", NULL, -1, methods};

PyMODINIT_FUNC PyInit__atomics(void) { return PyModule_Create(&module); }
