/* The fast path of TraceWriter.write_packet in C: the twin of shm/writer_core.py,
 * which is the readable reference (same type name, same attribute names, same
 * bytes; tests/test_writer_twins.py compares them packet stream by packet stream).
 *
 *   WriterCore             base type of shm.writer.TraceWriter when compiled
 *     .write_packet(data)  append one pre-encoded packet: here if the fast path
 *                          takes it, else self._write_packet_slow(data) (Python)
 *     ._write_chunks(data) TraceWriter.write()'s loop for a packet that runs past
 *                          its chunk: copies and turns chunks over here (the
 *                          steps of TraceWriter._turn_over), calling Python only
 *                          for arbiter.turn_over; reads the packet's Python
 *                          attributes on entry and stores them back on exit
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
static int set_buf(WriterCore *self, PyObject *value, void *closure);

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

/* -- _write_chunks: a large packet's chunk turn-overs (twin: writer_core.py) ------- */

#define LAST_PACKET_CONTINUES 2  /* shm.abi */
#define FIRST_PACKET_CONTINUES 1
#define FLAGS_SHIFT 10
#define CHUNK_HEADER_SIZE 8
#define CHUNK_PACKETS_WORD 4

static PyObject *s_dropping, *s_closed, *s_open_sizes, *s_patches, *s_pos, *s_arbiter,
    *s_turn_over, *s_target_buffer, *s_writer_id, *s_next_chunk_id, *s_chunk, *s_chunk_id,
    *s_frag_size_off, *s_frag_start, *s_flags, *s_smb;

/* The Python attributes of the packet in progress that _write_chunks changes: read
 * once on entry, stored back on every exit (the slow path reads them next). */
typedef struct {
    PyObject *chunk;  /* owned */
    Py_ssize_t pos, frag_size_off, frag_start, flags, chunk_id, next_chunk_id;
    int turned;       /* a turn-over happened: the chunk attributes changed */
} Packet;

static int attr_ssize(PyObject *obj, PyObject *name, Py_ssize_t *out) {
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL) return -1;
    *out = PyLong_AsSsize_t(v);
    Py_DECREF(v);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

static int set_ssize(PyObject *obj, PyObject *name, Py_ssize_t value) {
    PyObject *v = PyLong_FromSsize_t(value);
    if (v == NULL) return -1;
    int rc = PyObject_SetAttr(obj, name, v);
    Py_DECREF(v);
    return rc;
}

/* 1 while the usual case holds: not dropping, not closed, nothing to patch. */
static int usual_case(PyObject *self) {
    PyObject *names[4] = {s_dropping, s_closed, s_open_sizes, s_patches};
    for (int i = 0; i < 4; i++) {
        PyObject *v = PyObject_GetAttr(self, names[i]);
        if (v == NULL) return -1;
        int truth = PyObject_IsTrue(v);
        Py_DECREF(v);
        if (truth != 0) return truth < 0 ? -1 : 0;
    }
    return 1;
}

static int load_packet(PyObject *self, Packet *p) {
    p->turned = 0;
    p->chunk = PyObject_GetAttr(self, s_chunk);
    if (p->chunk == NULL) return -1;
    if (attr_ssize(self, s_pos, &p->pos) < 0 ||
        attr_ssize(self, s_frag_size_off, &p->frag_size_off) < 0 ||
        attr_ssize(self, s_frag_start, &p->frag_start) < 0 ||
        attr_ssize(self, s_flags, &p->flags) < 0 ||
        attr_ssize(self, s_chunk_id, &p->chunk_id) < 0 ||
        attr_ssize(self, s_next_chunk_id, &p->next_chunk_id) < 0) {
        Py_CLEAR(p->chunk);
        return -1;
    }
    return 0;
}

/* Stores the packet's attributes back (keeping a pending exception) and frees p. */
static int store_packet(PyObject *self, Packet *p) {
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    int rc = set_ssize(self, s_pos, p->pos);
    if (p->turned && rc == 0) {
        rc = (PyObject_SetAttr(self, s_chunk, p->chunk) < 0 ||
              set_ssize(self, s_chunk_id, p->chunk_id) < 0 ||
              set_ssize(self, s_next_chunk_id, p->next_chunk_id) < 0 ||
              set_ssize(self, s_flags, p->flags) < 0 ||
              set_ssize(self, s_frag_size_off, p->frag_size_off) < 0 ||
              set_ssize(self, s_frag_start, p->frag_start) < 0) ? -1 : 0;
    }
    Py_CLEAR(p->chunk);
    if (et != NULL) {
        PyErr_Restore(et, ev, tb);
        return -1;
    }
    return rc;
}

static void put_size4(uint8_t *p, Py_ssize_t n) { /* shm.packets.write_size4 */
    p[0] = (uint8_t)((n & 0x7F) | 0x80);
    p[1] = (uint8_t)(((n >> 7) & 0x7F) | 0x80);
    p[2] = (uint8_t)(((n >> 14) & 0x7F) | 0x80);
    p[3] = (uint8_t)((n >> 21) & 0x7F);
}

/* TraceWriter._turn_over: backfill the fragment's size, give the chunk back and take
 * the next one in one arbiter.turn_over call, then _install(ref, first_continues).
 * 1 turned over, 0 no chunk free, -1 error (a Python exception is set). */
static int turn_over(WriterCore *self, Packet *p) {
    char *base = buffer_of(self);
    Py_ssize_t len = self->len;
    if (base == NULL || p->frag_size_off < 0 || p->frag_size_off > len - 4 ||
        self->hdr_hi < 0) {
        PyErr_SetString(PyExc_RuntimeError, "writer state out of bounds");
        return -1;
    }
    put_size4((uint8_t *)base + p->frag_size_off, self->wptr - p->frag_start);
    Py_ssize_t word = self->hdr_hi |
        (((self->finished + 1) | (LAST_PACKET_CONTINUES << FLAGS_SHIFT)) << 16);
    PyObject *arbiter = PyObject_GetAttr((PyObject *)self, s_arbiter);
    if (arbiter == NULL) return -1;
    PyObject *target = PyObject_GetAttr((PyObject *)self, s_target_buffer);
    PyObject *writer_id = PyObject_GetAttr((PyObject *)self, s_writer_id);
    PyObject *args[6] = {arbiter, p->chunk, PyLong_FromSsize_t(word), target, writer_id,
                         PyLong_FromSsize_t(p->next_chunk_id)};
    PyObject *ref = NULL;
    if (target != NULL && writer_id != NULL && args[2] != NULL && args[5] != NULL)
        ref = PyObject_VectorcallMethod(s_turn_over, args,
                                        6 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(arbiter);
    Py_XDECREF(target);
    Py_XDECREF(args[2]);
    Py_XDECREF(args[5]);
    if (ref == NULL) {
        Py_XDECREF(writer_id);
        return -1;
    }
    if (ref == Py_None) {
        Py_DECREF(ref);
        Py_DECREF(writer_id);
        return 0;
    }
    Py_ssize_t wid = PyLong_AsSsize_t(writer_id);
    Py_DECREF(writer_id);
    Py_ssize_t offset = -1, size = -1;
    if (PyTuple_Check(ref) && PyTuple_GET_SIZE(ref) == 4) {
        offset = PyLong_AsSsize_t(PyTuple_GET_ITEM(ref, 2));
        size = PyLong_AsSsize_t(PyTuple_GET_ITEM(ref, 3));
    }
    /* The arbiter ran Python (a signal handler may have abandoned the writer and
     * swapped _buf): like _install, write into the SMB, checked afresh. */
    PyObject *smb = PyErr_Occurred() ? NULL : PyObject_GetAttr((PyObject *)self, s_smb);
    if (smb != NULL) {
        int rc = set_buf(self, smb, NULL);
        Py_DECREF(smb);
        if (rc < 0) offset = -1;
    }
    base = buffer_of(self);
    len = self->len;
    if (PyErr_Occurred() || base == NULL || offset < 0 || size < CHUNK_HEADER_SIZE + 4 ||
        offset > len - size || ((uintptr_t)(base + offset) & 3u) != 0 || wid < 0) {
        Py_DECREF(ref);
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_RuntimeError, "bad chunk from the arbiter, or no SMB");
        return -1;
    }
    /* _install(ref, first_continues=True) */
    Py_SETREF(p->chunk, ref);
    p->turned = 1;
    p->chunk_id = p->next_chunk_id;
    p->next_chunk_id = (p->chunk_id + 1) & 0xFFFFFFFF;
    self->end = offset + size;
    self->hdr_word = offset + CHUNK_PACKETS_WORD;
    self->finished = 0;
    p->flags = FIRST_PACKET_CONTINUES;
    self->hdr_hi = wid | ((Py_ssize_t)FIRST_PACKET_CONTINUES << (16 + FLAGS_SHIFT));
    __atomic_store_n((uint32_t *)(base + self->hdr_word),
                     (uint32_t)self->hdr_hi | (1u << 16), __ATOMIC_RELEASE); /* _publish(1) */
    Py_ssize_t w = offset + CHUNK_HEADER_SIZE; /* _start_fragment() */
    memset(base + w, 0, 4);
    p->frag_size_off = w;
    self->wptr = p->frag_start = w + 4;
    return 1;
}

static PyObject *write_chunks(WriterCore *self, PyObject *data) {
    Py_buffer in;
    if (PyObject_GetBuffer(data, &in, PyBUF_SIMPLE) < 0) return NULL;
    const char *src = (const char *)in.buf;
    Py_ssize_t n = in.len, off = 0;
    Packet p;
    int usual = usual_case((PyObject *)self);
    if (usual <= 0) goto out_nopacket;
    PyObject *smb = PyObject_GetAttr((PyObject *)self, s_smb);
    if (smb == NULL) goto error_nopacket;
    int rc = set_buf(self, smb, NULL); /* _install's `self._buf = self._smb` */
    Py_DECREF(smb);
    if (rc < 0 || load_packet((PyObject *)self, &p) < 0) goto error_nopacket;
    while (1) {
        char *base = buffer_of(self);
        Py_ssize_t w = self->wptr, end = self->end;
        if (base == NULL || w < 0 || w > end || end > self->len) {
            PyErr_SetString(PyExc_ValueError, "the SMB was released or the writer is corrupt");
            goto error;
        }
        Py_ssize_t take = end - w;
        if (take >= n - off) {
            memcpy(base + w, src + off, (size_t)(n - off));
            self->wptr = w + (n - off);
            p.pos += n - off;
            off = n;
            break;
        }
        if (take > 0) {
            memcpy(base + w, src + off, (size_t)take);
            self->wptr = end;
            p.pos += take;
            off += take;
        }
        int turned = turn_over(self, &p);
        if (turned < 0) goto error;
        if (turned == 0) break;
        usual = usual_case((PyObject *)self);
        if (usual < 0) goto error;
        if (usual == 0) break;
    }
    PyBuffer_Release(&in);
    if (store_packet((PyObject *)self, &p) < 0) return NULL;
    return PyLong_FromSsize_t(off);
error:
    store_packet((PyObject *)self, &p);
error_nopacket:
    PyBuffer_Release(&in);
    return NULL;
out_nopacket:
    PyBuffer_Release(&in);
    if (usual < 0) return NULL;
    return PyLong_FromLong(0);
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
    {"_write_chunks", (PyCFunction)write_chunks, METH_O,
     "write()'s loop for a packet running past its chunk (see shm/writer_core.py)."},
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

static PyTypeObject *writer_type;  /* the last subclass of WriterCore seen (TraceWriter) */

/* A WriterCore? The last subclass seen is remembered: the check runs per event. */
static int is_writer(PyObject *obj) {
    if (Py_TYPE(obj) == writer_type) return 1;
    if (!PyObject_TypeCheck(obj, &WriterCoreType)) return 0;
    Py_XSETREF(writer_type, (PyTypeObject *)Py_NewRef(Py_TYPE(obj)));
    return 1;
}

static int api_try_write(PyObject *writer, const char *data, Py_ssize_t n) {
    if (!is_writer(writer) || n < 0) return 0;
    return fast_write((WriterCore *)writer, data, n);
}

static int api_state_invalid(PyObject *writer) {
    if (!is_writer(writer)) return -1;
    return ((WriterCore *)writer)->state_invalid ? 1 : 0;
}

static TracebusWriterAPI c_api = {api_try_write, api_state_invalid};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "shm._writer", NULL, -1, NULL};

PyMODINIT_FUNC PyInit__writer(void) {
    if (PyType_Ready(&WriterCoreType) < 0) return NULL;
    slow_name = PyUnicode_InternFromString("_write_packet_slow");
    if (slow_name == NULL) return NULL;
    struct { PyObject **slot; const char *name; } names[] = {
        {&s_dropping, "_dropping"}, {&s_closed, "_closed"}, {&s_open_sizes, "_open_sizes"},
        {&s_patches, "_patches"}, {&s_pos, "_pos"}, {&s_arbiter, "_arbiter"},
        {&s_turn_over, "turn_over"}, {&s_target_buffer, "target_buffer"},
        {&s_writer_id, "writer_id"}, {&s_next_chunk_id, "_next_chunk_id"},
        {&s_chunk, "_chunk"}, {&s_chunk_id, "_chunk_id"}, {&s_frag_size_off, "_frag_size_off"},
        {&s_frag_start, "_frag_start"}, {&s_flags, "_flags"}, {&s_smb, "_smb"},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        *names[i].slot = PyUnicode_InternFromString(names[i].name);
        if (*names[i].slot == NULL) return NULL;
    }
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
