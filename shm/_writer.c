/* The fast path of TraceWriter.write_packet in C: the twin of shm/writer_core.py,
 * which is the readable reference (same type name, same attribute names, same
 * bytes; tests/test_writer_twins.py compares them packet stream by packet stream).
 *
 *   WriterCore             base type of shm.writer.TraceWriter when compiled
 *     .write_packet(data)  append one pre-encoded packet: here if the fast path
 *                          takes it, else self._write_packet_slow(data) (Python)
 *     ._buf                the buffer written into (the SMB, or the scratch chunk).
 *                          A memoryview (the SMB, the scratch chunk) is referenced,
 *                          not exported, so that a region can still release and
 *                          unmap it under a writer nobody closed; every write
 *                          first checks that it was not released (then the fast
 *                          path declines and the slow path fails in Python, never
 *                          touching the memory). Any other exporter is held as a
 *                          Py_buffer until the next assignment or deallocation.
 *     ._wptr ._end ._fast_limit ._finished ._hdr_word ._hdr_hi
 *     .incremental_state_invalid
 *
 *   _C_API  capsule "shm._writer._C_API": a TracebusWriterAPI (shm/_writer_api.h)
 *
 * The fast path appends one complete packet to the current chunk: a 1-byte
 * length for a packet under 128 bytes, else the redundant 4-byte varint the slow
 * path backfills; it needs the packet, its length and one byte more to fit
 * (`_fast_limit` is the chunk's end - 1, or -1 whenever the slow path must run:
 * no chunk, a packet open, bytes to prepend, dropping, a flush asked, the chunk
 * full of packets). Then it bumps the finished count and publishes it inflated
 * (count + 1) with a release store of the chunk header's packets word.
 * Every offset is checked against the buffer before use; a check that fails
 * leaves the packet to the slow path.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

#include "_writer_api.h"

#define MAX_PACKETS_PER_CHUNK 1022 /* shm.abi.MAX_PACKETS_PER_CHUNK */

typedef struct {
    PyObject_HEAD
    PyObject *buf;      /* _buf, or NULL */
    char *base;         /* its memory while writable, else NULL */
    Py_ssize_t len;
    int is_memoryview;  /* base is valid only while buf is not released */
    Py_buffer view;     /* held for any other exporter */
    int has_view;
    Py_ssize_t wptr, end, fast_limit, finished, hdr_word, hdr_hi;
    char state_invalid;
} WriterCore;

static PyTypeObject WriterCoreType;
static PyObject *slow_name; /* "_write_packet_slow" */

static void drop_buf(WriterCore *self) {
    if (self->has_view) {
        self->has_view = 0;
        PyBuffer_Release(&self->view);
    }
    self->base = NULL;
    self->len = 0;
    self->is_memoryview = 0;
    Py_CLEAR(self->buf);
}

/* The memory of _buf, or NULL if it cannot be written (any more). */
static char *buffer_of(WriterCore *self) {
    if (self->is_memoryview &&
        (((PyMemoryViewObject *)self->buf)->flags & _Py_MEMORYVIEW_RELEASED))
        return NULL; /* released (a region closed): its memory may be gone */
    return self->base;
}

/* 1 if written, 0 if the slow path must take it. Never raises. */
static int fast_write(WriterCore *self, const char *data, Py_ssize_t n) {
    char *base = buffer_of(self);
    if (base == NULL) return 0;
    Py_ssize_t w = self->wptr, start;
    if (n < 128) {
        if (!(w + n < self->fast_limit)) return 0;
        start = w + 1;
    } else {
        if (!(w + n + 3 < self->fast_limit)) return 0;
        start = w + 4;
    }
    Py_ssize_t len = self->len, hdr = self->hdr_word;
    if (w < 0 || start + n > len || hdr < 0 || hdr > len - 4 ||
        ((uintptr_t)(base + hdr) & 3u) != 0 || self->finished < 0)
        return 0;
    uint8_t *p = (uint8_t *)base + w;
    if (n < 128) {
        p[0] = (uint8_t)n;
    } else { /* shm.packets.encode_size4 */
        p[0] = (uint8_t)((n & 0x7F) | 0x80);
        p[1] = (uint8_t)(((n >> 7) & 0x7F) | 0x80);
        p[2] = (uint8_t)(((n >> 14) & 0x7F) | 0x80);
        p[3] = (uint8_t)((n >> 21) & 0x7F);
    }
    memcpy(base + start, data, (size_t)n);
    self->wptr = start + n;
    Py_ssize_t c = ++self->finished;
    uint32_t word = (uint32_t)self->hdr_hi | (uint32_t)((c + 1) << 16); /* inflated */
    __atomic_store_n((uint32_t *)(base + hdr), word, __ATOMIC_RELEASE);
    if (c >= MAX_PACKETS_PER_CHUNK) self->fast_limit = -1;
    return 1;
}

static PyObject *write_packet(WriterCore *self, PyObject *data) {
    int done;
    if (PyBytes_CheckExact(data)) {
        done = fast_write(self, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data));
    } else {
        Py_buffer in;
        if (PyObject_GetBuffer(data, &in, PyBUF_SIMPLE) < 0) {
            PyErr_Clear(); /* the slow path says what is wrong with it */
            done = 0;
        } else {
            done = fast_write(self, (const char *)in.buf, in.len);
            PyBuffer_Release(&in);
        }
    }
    if (done) Py_RETURN_NONE;
    return PyObject_CallMethodOneArg((PyObject *)self, slow_name, data);
}

/* -- attributes ------------------------------------------------------------------ */

static PyObject *get_buf(WriterCore *self, void *closure) {
    if (self->buf == NULL) Py_RETURN_NONE;
    return Py_NewRef(self->buf);
}

static int set_buf(WriterCore *self, PyObject *value, void *closure) {
    if (value != NULL && value == self->buf) return 0; /* every chunk change sets it */
    drop_buf(self);
    if (value == NULL || value == Py_None) return 0;
    self->buf = Py_NewRef(value);
    if (PyObject_GetBuffer(value, &self->view, PyBUF_WRITABLE) < 0) {
        /* Not writable, or a released memoryview: kept, as Python would keep it,
         * for the slow path to fail on; the fast path never writes into it. */
        PyErr_Clear();
        return 0;
    }
    self->base = (char *)self->view.buf;
    self->len = self->view.len;
    if (PyMemoryView_Check(value)) {
        /* No export held: a region must be able to release its memoryview (and
         * unmap) under a writer that was never closed; buffer_of() checks. */
        PyBuffer_Release(&self->view);
        self->is_memoryview = 1;
    } else {
        self->has_view = 1;
    }
    return 0;
}

static PyObject *get_invalid(WriterCore *self, void *closure) {
    return PyBool_FromLong(self->state_invalid);
}

static int set_invalid(WriterCore *self, PyObject *value, void *closure) {
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete incremental_state_invalid");
        return -1;
    }
    int truth = PyObject_IsTrue(value);
    if (truth < 0) return -1;
    self->state_invalid = (char)truth;
    return 0;
}

static PyGetSetDef getset[] = {
    {"_buf", (getter)get_buf, (setter)set_buf, "the buffer written into", NULL},
    {"incremental_state_invalid", (getter)get_invalid, (setter)set_invalid,
     "the sequence's incremental state must be emitted again", NULL},
    {NULL},
};

#define M(name, field) {name, T_PYSSIZET, offsetof(WriterCore, field), 0, NULL}
static PyMemberDef members[] = {
    M("_wptr", wptr), M("_end", end), M("_fast_limit", fast_limit),
    M("_finished", finished), M("_hdr_word", hdr_word), M("_hdr_hi", hdr_hi),
    {NULL},
};
#undef M

static PyMethodDef methods[] = {
    {"write_packet", (PyCFunction)write_packet, METH_O, "Append one serialized TracePacket."},
    {NULL, NULL, 0, NULL},
};

static PyObject *core_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    WriterCore *self = (WriterCore *)type->tp_alloc(type, 0);
    if (self != NULL) self->fast_limit = -1;
    return (PyObject *)self;
}

static void core_dealloc(WriterCore *self) {
    drop_buf(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject WriterCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shm._writer.WriterCore",
    .tp_basicsize = sizeof(WriterCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "The fast path of TraceWriter.write_packet (twin: shm.writer_core.WriterCore).",
    .tp_new = core_new,
    .tp_dealloc = (destructor)core_dealloc,
    .tp_methods = methods,
    .tp_members = members,
    .tp_getset = getset,
};

/* -- the C API ------------------------------------------------------------------- */

static int api_try_write(PyObject *writer, const char *data, Py_ssize_t n) {
    if (!PyObject_TypeCheck(writer, &WriterCoreType) || n < 0) return 0;
    return fast_write((WriterCore *)writer, data, n);
}

static int api_state_invalid(PyObject *writer) {
    if (!PyObject_TypeCheck(writer, &WriterCoreType)) return -1;
    return ((WriterCore *)writer)->state_invalid ? 1 : 0;
}

static TracebusWriterAPI c_api = {api_try_write, api_state_invalid};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "shm._writer", NULL, -1, NULL};

PyMODINIT_FUNC PyInit__writer(void) {
    if (PyType_Ready(&WriterCoreType) < 0) return NULL;
    slow_name = PyUnicode_InternFromString("_write_packet_slow");
    if (slow_name == NULL) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    PyObject *capsule = PyCapsule_New(&c_api, TRACEBUS_WRITER_CAPSULE, NULL);
    if (PyModule_AddObjectRef(m, "WriterCore", (PyObject *)&WriterCoreType) < 0 ||
        capsule == NULL || PyModule_AddObject(m, "_C_API", capsule) < 0) {
        Py_XDECREF(capsule);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
