/* The SDK's event path in C: the compiled twin of tracebus/_api.py's slice(),
 * instant() and counter() and of the fast path of actors/track_event.py.
 *
 * Only the common case is done here: a name and category given as str, no
 * args and no flows, one thread's sequence already made, its incremental state
 * valid, the event already in the sequence's caches (TrackEventSequence.tables():
 * the very dicts the Python path fills), no asyncio task running on the thread.
 * Then an event is one clock read, TIMESTAMP + varint(ts) + the cached fields
 * composed on the stack, and one try_write into the chunk (shm/_writer_api.h).
 * Everything else (first sight of a name, a clear, a full chunk, a flush asked
 * for, args, flows, a fake writer) goes to the Python code, which stays the
 * readable reference: tests/test_sdk_twins.py proves both write the same bytes.
 *
 * The Python classes build on two bases defined here (with pure twins in
 * tracebus/_instance.py): SequenceCore (a ThreadSequence's busy flag, writer
 * and tables, as C members) and InstanceCore (an instance's live flag and its
 * threading.local), so this code reads them without attribute lookups.
 *
 * Semantics kept from the Python path: nothing is written while the thread's
 * busy flag is set (a re-entered write) or the instance is not live; a failed
 * Python write reports through instance._interrupted(seq); an Exception is
 * counted through the `error` callable and never reaches the app, a
 * BaseException (KeyboardInterrupt) does.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "_writer_api.h"

/* TracePacket / TrackEvent tags, as actors/track_event_encoding.py has them. */
#define TAG_TIMESTAMP 0x40        /* TracePacket.timestamp, field 8, varint */
#define TAG_TRACK_EVENT 0x5a      /* TracePacket.track_event, field 11, bytes */
#define SLICE_BEGIN 1
#define INSTANT 3
#define MAX_PACKET 240            /* composed on the stack; longer goes to Python */

static const unsigned char NEEDS_STATE[2] = {0x68, 0x02};           /* sequence_flags = 2 */
static const unsigned char COUNTER_VALUE[2] = {0xf0, 0x01};         /* field 30, varint */
static const unsigned char DOUBLE_COUNTER_VALUE[2] = {0xe1, 0x02};  /* field 44, fixed64 */

static TracebusWriterAPI *writer_api;  /* NULL: no compiled writer, all goes to Python */
static PyObject *str_seq, *str_begin, *str_end, *str_instant, *str_counter;
static PyObject *str_write_packet, *str_interrupted, *str_asyncio, *str_default, *str_empty;
static PyObject *zero;
static PyObject *get_running_loop;  /* _asyncio._get_running_loop, once asyncio is in use */

/* -- the two bases ------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    char busy;
    char abandoned;
    PyObject *writer;
    PyObject *begins;    /* track -> category -> name -> fields after the timestamp */
    PyObject *instants;  /* the same for instants */
    PyObject *ends;      /* track -> SLICE_END fields */
    PyObject *counters;  /* name -> TrackEvent body up to the value */
    PyObject *clock;     /* None: CLOCK_BOOTTIME read here */
} SequenceCore;

static PyMemberDef sequence_members[] = {
    {"busy", T_BOOL, offsetof(SequenceCore, busy), 0, "its thread is inside a write"},
    {"abandoned", T_BOOL, offsetof(SequenceCore, abandoned), 0, "its write cannot end"},
    {"writer", T_OBJECT, offsetof(SequenceCore, writer), 0, NULL},
    {"begins", T_OBJECT, offsetof(SequenceCore, begins), 0, NULL},
    {"instants", T_OBJECT, offsetof(SequenceCore, instants), 0, NULL},
    {"ends", T_OBJECT, offsetof(SequenceCore, ends), 0, NULL},
    {"counters", T_OBJECT, offsetof(SequenceCore, counters), 0, NULL},
    {"clock", T_OBJECT, offsetof(SequenceCore, clock), 0, NULL},
    {NULL},
};

static int sequence_traverse(SequenceCore *self, visitproc visit, void *arg) {
    Py_VISIT(self->writer);
    Py_VISIT(self->begins);
    Py_VISIT(self->instants);
    Py_VISIT(self->ends);
    Py_VISIT(self->counters);
    Py_VISIT(self->clock);
    return 0;
}

static int sequence_clear(SequenceCore *self) {
    Py_CLEAR(self->writer);
    Py_CLEAR(self->begins);
    Py_CLEAR(self->instants);
    Py_CLEAR(self->ends);
    Py_CLEAR(self->counters);
    Py_CLEAR(self->clock);
    return 0;
}

static void sequence_dealloc(SequenceCore *self) {
    PyObject_GC_UnTrack(self);
    sequence_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject SequenceCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tracebus._speedups.SequenceCore",
    .tp_basicsize = sizeof(SequenceCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "What the compiled event path reads of a ThreadSequence.",
    .tp_members = sequence_members,
    .tp_traverse = (traverseproc)sequence_traverse,
    .tp_clear = (inquiry)sequence_clear,
    .tp_dealloc = (destructor)sequence_dealloc,
    .tp_new = PyType_GenericNew,
};

typedef struct {
    PyObject_HEAD
    char live;
    PyObject *local;  /* threading.local: .seq is the calling thread's ThreadSequence */
    /* The last thread's local.seq, so that a thread writing in a row skips the
     * threading.local lookup. Python calls forget_thread() whenever a thread's
     * seq changes (made, given up, thread ended, instance stopped). */
    unsigned long cached_ident;
    PyObject *cached_seq;
} InstanceCore;

static PyMemberDef instance_members[] = {
    {"live", T_BOOL, offsetof(InstanceCore, live), 0, "started and not stopped"},
    {"_local", T_OBJECT, offsetof(InstanceCore, local), 0, NULL},
    {NULL},
};

static int instance_traverse(InstanceCore *self, visitproc visit, void *arg) {
    Py_VISIT(self->local);
    Py_VISIT(self->cached_seq);
    return 0;
}

static int instance_clear(InstanceCore *self) {
    Py_CLEAR(self->local);
    Py_CLEAR(self->cached_seq);
    return 0;
}

static PyObject *instance_forget_thread(InstanceCore *self, PyObject *unused) {
    Py_CLEAR(self->cached_seq);
    Py_RETURN_NONE;
}

static PyMethodDef instance_methods[] = {
    {"forget_thread", (PyCFunction)instance_forget_thread, METH_NOARGS,
     "A thread's sequence changed: look it up in _local again."},
    {NULL},
};

static void instance_dealloc(InstanceCore *self) {
    PyObject_GC_UnTrack(self);
    instance_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject InstanceCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tracebus._speedups.InstanceCore",
    .tp_basicsize = sizeof(InstanceCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "What the compiled event path reads of a TrackEventInstance.",
    .tp_members = instance_members,
    .tp_methods = instance_methods,
    .tp_traverse = (traverseproc)instance_traverse,
    .tp_clear = (inquiry)instance_clear,
    .tp_dealloc = (destructor)instance_dealloc,
    .tp_new = PyType_GenericNew,
};

/* -- encoding ------------------------------------------------------------------------- */

static inline size_t put_varint(unsigned char *p, uint64_t v) {
    size_t n = 0;
    while (v >= 0x80) {
        p[n++] = (unsigned char)(v | 0x80);
        v >>= 7;
    }
    p[n++] = (unsigned char)v;
    return n;
}

/* TIMESTAMP + varint(now): 0 on success, -1 with an exception set. */
static int put_timestamp(SequenceCore *seq, unsigned char *p, size_t *n) {
    uint64_t ts;
    if (seq->clock == NULL || seq->clock == Py_None) {
        struct timespec t;
        clock_gettime(CLOCK_BOOTTIME, &t);
        ts = (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
    } else {
        PyObject *v = PyObject_CallNoArgs(seq->clock);
        if (v == NULL) return -1;
        if (!PyLong_Check(v)) {
            PyErr_Format(PyExc_TypeError, "the clock returned %.100s, not an int",
                         Py_TYPE(v)->tp_name);
            Py_DECREF(v);
            return -1;
        }
        ts = PyLong_AsUnsignedLongLongMask(v);  /* varint() masks to 64 bits too */
        Py_DECREF(v);
        if (ts == (uint64_t)-1 && PyErr_Occurred()) return -1;
    }
    p[0] = TAG_TIMESTAMP;
    *n = 1 + put_varint(p + 1, ts);
    return 0;
}

/* -- the thread's sequence -------------------------------------------------------------- */

/* An asyncio task may be current: its events go to the task's track (Python).
 * 1 also when that cannot be told here; -1 only for an error of the lookup. */
/* len(sys.modules) when asyncio was last found missing: importing asyncio adds
 * modules, so while the size stays the same the lookup is skipped. */
static Py_ssize_t modules_without_asyncio = -1;

static int asyncio_running(void) {
    PyObject *modules = PyImport_GetModuleDict();
    if (PyDict_GET_SIZE(modules) == modules_without_asyncio) return 0;  /* nothing imported */
    if (PyDict_GetItemWithError(modules, str_asyncio) == NULL) {
        if (PyErr_Occurred()) return -1;
        modules_without_asyncio = PyDict_GET_SIZE(modules);
        return 0;
    }
    modules_without_asyncio = -1;
    if (get_running_loop == NULL) {
        PyObject *mod = PyImport_ImportModule("_asyncio");
        get_running_loop = mod == NULL ? NULL : PyObject_GetAttrString(mod, "_get_running_loop");
        Py_XDECREF(mod);
        if (get_running_loop == NULL) {  /* no C asyncio: the Python path asks asyncio */
            PyErr_Clear();
            return 1;
        }
    }
    PyObject *loop = PyObject_CallNoArgs(get_running_loop);
    if (loop == NULL) {
        PyErr_Clear();
        return 1;
    }
    int running = loop != Py_None;
    Py_DECREF(loop);
    return running;
}

/* The calling thread's sequence of `inst`, if the fast path may use it: a new
 * reference, or NULL (no exception) for "take the Python path". */
static PyTypeObject *instance_type;  /* the last subclass of InstanceCore seen */

static SequenceCore *usable_sequence(PyObject *inst_obj) {
    if (writer_api == NULL) return NULL;
    if (Py_TYPE(inst_obj) != instance_type) {
        if (!PyObject_TypeCheck(inst_obj, &InstanceCoreType)) return NULL;
        Py_XSETREF(instance_type, (PyTypeObject *)Py_NewRef(Py_TYPE(inst_obj)));
    }
    InstanceCore *inst = (InstanceCore *)inst_obj;
    if (!inst->live || inst->local == NULL) return NULL;
    unsigned long me = PyThread_get_thread_ident();
    PyObject *seq;
    if (inst->cached_seq != NULL && inst->cached_ident == me) {
        seq = Py_NewRef(inst->cached_seq);
    } else {
        seq = PyObject_GetAttr(inst->local, str_seq);
        if (seq == NULL) {
            PyErr_Clear();
            return NULL;
        }
        if (!PyObject_TypeCheck(seq, &SequenceCoreType)) {
            Py_DECREF(seq);
            return NULL;
        }
        Py_XSETREF(inst->cached_seq, Py_NewRef(seq));
        inst->cached_ident = me;
    }
    SequenceCore *s = (SequenceCore *)seq;
    if (s->busy || s->writer == NULL || s->begins == NULL || !PyDict_Check(s->begins)
        || s->instants == NULL || !PyDict_Check(s->instants) || s->ends == NULL || !PyDict_Check(s->ends) || s->counters == NULL
        || !PyDict_Check(s->counters) || writer_api->state_invalid(s->writer) != 0) {
        Py_DECREF(seq);
        return NULL;
    }
    return s;
}

/* Write the packet `p[:n]`: into the chunk, else through writer.write_packet
 * under the busy flag. 0, or -1 with an exception set (after _interrupted). */
static int write_packet(PyObject *inst, SequenceCore *seq, const unsigned char *p, size_t n) {
    if (writer_api->try_write(seq->writer, (const char *)p, (Py_ssize_t)n)) return 0;
    PyObject *data = PyBytes_FromStringAndSize((const char *)p, (Py_ssize_t)n);
    if (data == NULL) return -1;
    seq->busy = 1;
    PyObject *r = PyObject_CallMethodOneArg(seq->writer, str_write_packet, data);
    seq->busy = 0;
    Py_DECREF(data);
    if (r != NULL) {
        Py_DECREF(r);
        return 0;
    }
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyObject *ok = PyObject_CallMethodOneArg(inst, str_interrupted, (PyObject *)seq);
    Py_XDECREF(ok);
    PyErr_Clear();  /* the write's exception is the one to report */
    PyErr_Restore(type, value, tb);
    return -1;
}

/* TIMESTAMP + varint(now) + fields. 1 written, 0 take the Python path, -1 error. */
static int write_with_fields(PyObject *inst, SequenceCore *seq, PyObject *fields) {
    unsigned char packet[MAX_PACKET + 16];
    size_t n;
    if (fields == NULL || !PyBytes_CheckExact(fields) || PyBytes_GET_SIZE(fields) > MAX_PACKET) {
        return 0;
    }
    seq->busy = 1;  /* an injected clock is Python code: nothing may re-enter meanwhile */
    int err = put_timestamp(seq, packet, &n);
    seq->busy = 0;
    if (err) return -1;
    memcpy(packet + n, PyBytes_AS_STRING(fields), (size_t)PyBytes_GET_SIZE(fields));
    n += (size_t)PyBytes_GET_SIZE(fields);
    return write_packet(inst, seq, packet, n) ? -1 : 1;
}

/* A slice begin or an instant from the cache. *out gets the sequence (a new
 * reference) when written. */
static int fast_point(PyObject *inst, int type, PyObject *name, PyObject *category,
                      SequenceCore **out) {
    int running = asyncio_running();
    if (running) return running < 0 ? -1 : 0;
    SequenceCore *seq = usable_sequence(inst);
    if (seq == NULL) return 0;
    /* table[0][category][name]: borrowed references, nothing allocated */
    PyObject *fields = PyDict_GetItemWithError(type == SLICE_BEGIN ? seq->begins : seq->instants,
                                               zero);
    if (fields != NULL) fields = PyDict_Check(fields) ? PyDict_GetItemWithError(fields, category) : NULL;
    if (fields != NULL) fields = PyDict_Check(fields) ? PyDict_GetItemWithError(fields, name) : NULL;
    if (fields == NULL && PyErr_Occurred()) {
        Py_DECREF(seq);
        return -1;
    }
    Py_XINCREF(fields);  /* the clock may run Python code that clears the cache */
    int r = write_with_fields(inst, seq, fields);
    Py_XDECREF(fields);
    if (r == 1 && out != NULL) {
        *out = seq;
        return 1;
    }
    Py_DECREF(seq);
    return r;
}

/* The end of a slice begun on the fast path by this thread's `seq`. */
static int fast_end(PyObject *inst, SequenceCore *opened) {
    SequenceCore *seq = usable_sequence(inst);
    if (seq == NULL) return 0;
    int r = 0;
    if (seq == opened) {  /* not: a slice ended on another thread, or a new sequence */
        PyObject *fields = PyDict_GetItemWithError(seq->ends, zero);
        if (fields == NULL && PyErr_Occurred()) {
            r = -1;
        } else {
            Py_XINCREF(fields);
            r = write_with_fields(inst, seq, fields);
            Py_XDECREF(fields);
        }
    }
    Py_DECREF(seq);
    return r;
}

/* counter_value or double_counter_value of an int64 or a float. */
static int put_counter_value(PyObject *value, unsigned char *p, size_t *n) {
    if (PyLong_CheckExact(value)) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (overflow || (v == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return 0;  /* beyond int64: Python writes it as a double */
        }
        memcpy(p, COUNTER_VALUE, 2);
        *n = 2 + put_varint(p + 2, (uint64_t)v);
        return 1;
    }
    if (PyFloat_CheckExact(value)) {
        double d = PyFloat_AS_DOUBLE(value);
        memcpy(p, DOUBLE_COUNTER_VALUE, 2);
        memcpy(p + 2, &d, 8);  /* little-endian machines only (x86_64, aarch64) */
        *n = 10;
        return 1;
    }
    return 0;
}

static int fast_counter(PyObject *inst, PyObject *name, PyObject *value) {
    SequenceCore *seq = usable_sequence(inst);
    if (seq == NULL) return 0;
    unsigned char body[MAX_PACKET + 16], packet[MAX_PACKET + 48];
    size_t vn, n;
    PyObject *prefix = PyDict_GetItemWithError(seq->counters, name);
    int r = 0;
    if (prefix == NULL) {
        r = PyErr_Occurred() ? -1 : 0;
    } else if (PyBytes_CheckExact(prefix) && PyBytes_GET_SIZE(prefix) <= MAX_PACKET
               && put_counter_value(value, body, &vn)) {
        size_t pn = (size_t)PyBytes_GET_SIZE(prefix);
        Py_INCREF(prefix);
        seq->busy = 1;
        int err = put_timestamp(seq, packet, &n);
        seq->busy = 0;
        if (err) {
            r = -1;
        } else {
            packet[n++] = TAG_TRACK_EVENT;
            n += put_varint(packet + n, pn + vn);
            memcpy(packet + n, PyBytes_AS_STRING(prefix), pn);
            memcpy(packet + n + pn, body, vn);
            n += pn + vn;
            memcpy(packet + n, NEEDS_STATE, 2);
            r = write_packet(inst, seq, packet, n + 2) ? -1 : 1;
        }
        Py_DECREF(prefix);
    }
    Py_DECREF(seq);
    return r;
}

/* -- the API object --------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *wanted;      /* category -> tuple of instances (tracebus._runtime.WANTED) */
    PyObject *py_slice, *py_instant, *py_counter;  /* the Python twins */
    PyObject *error;       /* error(kind, exception): counted, logged once */
} Api;

/* After a failure: an Exception is counted (error(kind, e)) and 0 returned; a
 * BaseException stays set and -1 is returned. */
static int report(Api *api, const char *kind) {
    if (!PyErr_ExceptionMatches(PyExc_Exception)) return -1;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    PyObject *r = PyObject_CallFunction(api->error, "sO", kind, value ? value : Py_None);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    if (r == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) return -1;
        PyErr_Clear();
    }
    Py_XDECREF(r);
    return 0;
}

/* Arguments by position or keyword, as the Python functions take them. 1 parsed,
 * 0 not (unknown or repeated keywords, too many: the Python twin raises). */
static int parse(PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames,
                 PyObject *const *names, Py_ssize_t max, PyObject **out) {
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs > max) return 0;
    for (Py_ssize_t i = 0; i < nargs; i++) out[i] = args[i];
    if (kwnames == NULL) return 1;
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(kwnames); k++) {
        PyObject *kw = PyTuple_GET_ITEM(kwnames, k);
        Py_ssize_t i = 0;
        while (i < max && kw != names[i]) i++;  /* keywords are interned, as are our names */
        if (i == max) {
            i = 0;
            while (i < max && PyUnicode_Compare(kw, names[i]) != 0) i++;
            if (PyErr_Occurred()) PyErr_Clear();
        }
        if (i == max || out[i] != NULL) return 0;
        out[i] = args[nargs + k];
    }
    return 1;
}

static PyObject *forward(PyObject *twin, PyObject *const *args, Py_ssize_t nargsf,
                         PyObject *kwnames) {
    return PyObject_Vectorcall(twin, args, nargsf, kwnames);
}

/* The instances that want `category`: a borrowed tuple, or NULL with no
 * exception set when the Python twin must resolve it. */
static PyObject *wanted_for(Api *api, PyObject *category) {
    PyObject *wanted = PyDict_GetItemWithError(api->wanted, category);
    if (wanted != NULL && !PyTuple_CheckExact(wanted)) return NULL;
    return wanted;
}

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;  /* the object itself is __enter__ and __exit__ */
    Api *api;
    PyObject *name, *category, *inst;
    PyObject *token;  /* fast: the SequenceCore; else what inst.begin() returned */
    int fast;
} Slice;

static PyTypeObject SliceType, NoSliceType;
static PyObject *slice_call(PyObject *self, PyObject *const *args, size_t nargsf,
                            PyObject *kwnames);
#define SLICE_FREELIST 32
static Slice *slice_freelist[SLICE_FREELIST];
static int slice_free_count;
static PyObject *no_slice;

static PyObject *POINT_ARGS[5];  /* name, category, args, flow, terminate_flow */

/* name and category as str, no args, no flows: the fast path's case. */
static int plain_event(PyObject **a) {
    if (a[1] == NULL) a[1] = str_default;
    return a[0] != NULL && PyUnicode_CheckExact(a[0]) && PyUnicode_CheckExact(a[1])
           && (a[2] == NULL || a[2] == Py_None) && (a[3] == NULL || a[3] == Py_None)
           && (a[4] == NULL || a[4] == Py_None);
}

static PyObject *api_slice(Api *api, PyObject *const *args, Py_ssize_t nargsf,
                           PyObject *kwnames) {
    PyObject *a[5] = {NULL, NULL, NULL, NULL, NULL};
    if (!parse(args, nargsf, kwnames, POINT_ARGS, 5, a) || !plain_event(a)) {
        return forward(api->py_slice, args, nargsf, kwnames);
    }
    PyObject *wanted = wanted_for(api, a[1]);
    if (wanted == NULL) {
        if (PyErr_Occurred() && report(api, "slice") < 0) return NULL;
        return forward(api->py_slice, args, nargsf, kwnames);
    }
    if (PyTuple_GET_SIZE(wanted) == 0) return Py_NewRef(no_slice);
    if (PyTuple_GET_SIZE(wanted) > 1) return forward(api->py_slice, args, nargsf, kwnames);
    Slice *s;
    if (slice_free_count > 0) {  /* a freelist: a slice is made and dropped per `with` */
        s = slice_freelist[--slice_free_count];
        _Py_NewReference((PyObject *)s);
    } else {
        s = PyObject_New(Slice, &SliceType);
    }
    if (s == NULL) {
        if (report(api, "slice") < 0) return NULL;
        return Py_NewRef(no_slice);
    }
    s->vectorcall = slice_call;
    s->api = (Api *)Py_NewRef(api);
    s->name = Py_NewRef(a[0]);
    s->category = Py_NewRef(a[1]);
    s->inst = Py_NewRef(PyTuple_GET_ITEM(wanted, 0));
    s->token = NULL;
    s->fast = 0;
    return (PyObject *)s;
}

static PyObject *slice_enter(Slice *self, PyObject *unused) {
    Py_CLEAR(self->token);
    SequenceCore *seq = NULL;
    int r = fast_point(self->inst, SLICE_BEGIN, self->name, self->category, &seq);
    if (r == 1) {
        self->token = (PyObject *)seq;
        self->fast = 1;
    } else if (r == 0) {
        PyObject *token = PyObject_CallMethodObjArgs(self->inst, str_begin, self->name,
                                                     self->category, Py_None, Py_None,
                                                     Py_None, NULL);
        if (token == NULL) {
            r = -1;
        } else if (token == Py_None) {
            Py_DECREF(token);
        } else {
            self->token = token;
            self->fast = 0;
        }
    }
    if (r < 0 && report(self->api, "slice") < 0) return NULL;
    return Py_NewRef(self);
}

static PyObject *slice_exit(Slice *self, PyObject *const *args, Py_ssize_t nargs) {
    PyObject *token = self->token;
    if (token == NULL) Py_RETURN_NONE;
    self->token = NULL;
    int r = 0;
    if (self->fast) r = fast_end(self->inst, (SequenceCore *)token);
    if (r == 0) {
        PyObject *opened = self->fast ? PyTuple_Pack(2, token, zero) : Py_NewRef(token);
        PyObject *done = opened == NULL ? NULL
            : PyObject_CallMethodOneArg(self->inst, str_end, opened);
        Py_XDECREF(opened);
        r = done == NULL ? -1 : 1;
        Py_XDECREF(done);
    }
    Py_DECREF(token);
    if (r < 0 && report(self->api, "slice end") < 0) return NULL;
    Py_RETURN_NONE;
}

static void slice_dealloc(Slice *self) {
    Py_XDECREF(self->api);
    Py_XDECREF(self->name);
    Py_XDECREF(self->category);
    Py_XDECREF(self->inst);
    Py_XDECREF(self->token);
    if (slice_free_count < SLICE_FREELIST) {
        slice_freelist[slice_free_count++] = self;
    } else {
        PyObject_Free(self);
    }
}

/* `with` looks __enter__ and __exit__ up on the type and binds each to the
 * object: for methods that makes two bound-method objects per `with` (a third
 * of a disabled slice's cost, and food for the GC). Here both names hold a
 * Bind descriptor, which binds to the object itself; a slice is callable: with
 * no argument it enters, with __exit__'s three it exits. Looked up on the class
 * (contextlib.ExitStack does), Bind is the unbound form: Bind(slice, *args). */
static const char CALL_ERROR[] =
    "a slice is entered with no argument and exited with three (`with` does both)";

static PyObject *slice_call(PyObject *self, PyObject *const *args, size_t nargsf,
                            PyObject *kwnames) {
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (kwnames == NULL || PyTuple_GET_SIZE(kwnames) == 0) {
        if (nargs == 0) return slice_enter((Slice *)self, NULL);
        if (nargs == 3) return slice_exit((Slice *)self, args, nargs);
    }
    PyErr_SetString(PyExc_TypeError, CALL_ERROR);
    return NULL;
}

static PyTypeObject SliceType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tracebus._speedups.Slice",
    .tp_basicsize = sizeof(Slice),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "A slice on the instance that wanted its category (the twin of _api._Slice).",
    .tp_vectorcall_offset = offsetof(Slice, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_dealloc = (destructor)slice_dealloc,
};

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
} NoSlice;

static PyObject *no_slice_call(PyObject *self, PyObject *const *args, size_t nargsf,
                               PyObject *kwnames) {
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (kwnames == NULL || PyTuple_GET_SIZE(kwnames) == 0) {
        if (nargs == 0) return Py_NewRef(self);
        if (nargs == 3) Py_RETURN_NONE;
    }
    PyErr_SetString(PyExc_TypeError, CALL_ERROR);
    return NULL;
}

static PyTypeObject NoSliceType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tracebus._speedups.NoSlice",
    .tp_basicsize = sizeof(NoSlice),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "What slice() returns when nobody wants the event: one shared object.",
    .tp_vectorcall_offset = offsetof(NoSlice, vectorcall),
    .tp_call = PyVectorcall_Call,
};

static PyObject *bind_get(PyObject *descr, PyObject *obj, PyObject *type) {
    return Py_NewRef(obj == NULL || obj == Py_None ? descr : obj);
}

static PyObject *bind_call(PyObject *descr, PyObject *const *args, size_t nargsf,
                           PyObject *kwnames) {
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs < 1 || (Py_TYPE(args[0]) != &SliceType && Py_TYPE(args[0]) != &NoSliceType)) {
        PyErr_SetString(PyExc_TypeError, "__enter__/__exit__ of a slice need the slice");
        return NULL;
    }
    return PyObject_Vectorcall(args[0], args + 1, nargs - 1, kwnames);
}

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
} Bind;

static PyTypeObject BindType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tracebus._speedups.Bind",
    .tp_basicsize = sizeof(Bind),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "__enter__ and __exit__ of a slice: binds to the slice itself.",
    .tp_vectorcall_offset = offsetof(Bind, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_descr_get = bind_get,
};

/* Both names of `type` hold one Bind. */
static int add_bind(PyTypeObject *type) {
    Bind *bind = PyObject_New(Bind, &BindType);
    if (bind == NULL) return -1;
    bind->vectorcall = bind_call;
    int r = PyDict_SetItemString(type->tp_dict, "__enter__", (PyObject *)bind) < 0
            || PyDict_SetItemString(type->tp_dict, "__exit__", (PyObject *)bind) < 0;
    Py_DECREF(bind);
    PyType_Modified(type);
    return r ? -1 : 0;
}

static PyObject *api_instant(Api *api, PyObject *const *args, Py_ssize_t nargsf,
                             PyObject *kwnames) {
    PyObject *a[5] = {NULL, NULL, NULL, NULL, NULL};
    if (!parse(args, nargsf, kwnames, POINT_ARGS, 5, a) || !plain_event(a)) {
        return forward(api->py_instant, args, nargsf, kwnames);
    }
    PyObject *wanted = wanted_for(api, a[1]);
    if (wanted == NULL) {
        if (PyErr_Occurred() && report(api, "instant") < 0) return NULL;
        return forward(api->py_instant, args, nargsf, kwnames);
    }
    Py_INCREF(wanted);
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(wanted); i++) {
        PyObject *inst = PyTuple_GET_ITEM(wanted, i);
        int r = fast_point(inst, INSTANT, a[0], a[1], NULL);
        if (r == 0) {
            PyObject *done = PyObject_CallMethodObjArgs(inst, str_instant, a[0], a[1], Py_None,
                                                        Py_None, Py_None, NULL);
            r = done == NULL ? -1 : 1;
            Py_XDECREF(done);
        }
        if (r < 0) {  /* the Python twin's try covers the loop: the rest are skipped */
            Py_DECREF(wanted);
            if (report(api, "instant") < 0) return NULL;
            Py_RETURN_NONE;
        }
    }
    Py_DECREF(wanted);
    Py_RETURN_NONE;
}

static PyObject *COUNTER_ARGS[4];  /* name, value, category, unit */

static PyObject *api_counter(Api *api, PyObject *const *args, Py_ssize_t nargsf,
                             PyObject *kwnames) {
    PyObject *a[4] = {NULL, NULL, NULL, NULL};
    if (!parse(args, nargsf, kwnames, COUNTER_ARGS, 4, a) || a[0] == NULL || a[1] == NULL) {
        return forward(api->py_counter, args, nargsf, kwnames);
    }
    if (a[2] == NULL) a[2] = str_default;
    if (a[3] == NULL) a[3] = str_empty;
    if (!PyUnicode_CheckExact(a[0]) || !PyUnicode_CheckExact(a[2]) || !PyUnicode_CheckExact(a[3])
        || !(PyLong_CheckExact(a[1]) || PyFloat_CheckExact(a[1]))) {
        return forward(api->py_counter, args, nargsf, kwnames);
    }
    PyObject *wanted = wanted_for(api, a[2]);
    if (wanted == NULL) {
        if (PyErr_Occurred() && report(api, "counter") < 0) return NULL;
        return forward(api->py_counter, args, nargsf, kwnames);
    }
    Py_INCREF(wanted);
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(wanted); i++) {
        PyObject *inst = PyTuple_GET_ITEM(wanted, i);
        int r = fast_counter(inst, a[0], a[1]);
        if (r == 0) {
            PyObject *done = PyObject_CallMethodObjArgs(inst, str_counter, a[0], a[1], a[2],
                                                        a[3], NULL);
            r = done == NULL ? -1 : 1;
            Py_XDECREF(done);
        }
        if (r < 0) {
            Py_DECREF(wanted);
            if (report(api, "counter") < 0) return NULL;
            Py_RETURN_NONE;
        }
    }
    Py_DECREF(wanted);
    Py_RETURN_NONE;
}

static int api_init(Api *self, PyObject *args, PyObject *kwargs) {
    static char *kw[] = {"wanted", "py_slice", "py_instant", "py_counter", "error", NULL};
    PyObject *wanted, *s, *i, *c, *e;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!OOOO:Api", kw, &PyDict_Type, &wanted,
                                     &s, &i, &c, &e)) {
        return -1;
    }
    Py_XSETREF(self->wanted, Py_NewRef(wanted));
    Py_XSETREF(self->py_slice, Py_NewRef(s));
    Py_XSETREF(self->py_instant, Py_NewRef(i));
    Py_XSETREF(self->py_counter, Py_NewRef(c));
    Py_XSETREF(self->error, Py_NewRef(e));
    return 0;
}

static int api_traverse(Api *self, visitproc visit, void *arg) {
    Py_VISIT(self->wanted);
    Py_VISIT(self->py_slice);
    Py_VISIT(self->py_instant);
    Py_VISIT(self->py_counter);
    Py_VISIT(self->error);
    return 0;
}

static int api_clear(Api *self) {
    Py_CLEAR(self->wanted);
    Py_CLEAR(self->py_slice);
    Py_CLEAR(self->py_instant);
    Py_CLEAR(self->py_counter);
    Py_CLEAR(self->error);
    return 0;
}

static void api_dealloc(Api *self) {
    PyObject_GC_UnTrack(self);
    api_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef api_methods[] = {
    {"slice", (PyCFunction)(void (*)(void))api_slice, METH_FASTCALL | METH_KEYWORDS,
     "slice($self, /, name, category='default', args=None, flow=None, terminate_flow=None)\n--\n\n"
     "A context manager: a slice on this thread's track (see tracebus._api.slice)."},
    {"instant", (PyCFunction)(void (*)(void))api_instant, METH_FASTCALL | METH_KEYWORDS,
     "instant($self, /, name, category='default', args=None, flow=None, terminate_flow=None)\n"
     "--\n\nAn instant event on this thread's track (see tracebus._api.instant)."},
    {"counter", (PyCFunction)(void (*)(void))api_counter, METH_FASTCALL | METH_KEYWORDS,
     "counter($self, /, name, value, category='default', unit='')\n--\n\n"
     "A value on the counter track `name` (see tracebus._api.counter)."},
    {NULL},
};

static PyTypeObject ApiType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tracebus._speedups.Api",
    .tp_basicsize = sizeof(Api),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Api(wanted, py_slice, py_instant, py_counter, error): the compiled "
              "slice/instant/counter over the WANTED dict, with the Python twins "
              "for everything but the common case.",
    .tp_methods = api_methods,
    .tp_init = (initproc)api_init,
    .tp_new = PyType_GenericNew,
    .tp_traverse = (traverseproc)api_traverse,
    .tp_clear = (inquiry)api_clear,
    .tp_dealloc = (destructor)api_dealloc,
};

/* -- the module -------------------------------------------------------------------------- */

static PyObject *has_writer(PyObject *mod, PyObject *unused) {
    return PyBool_FromLong(writer_api != NULL);
}

static PyMethodDef module_methods[] = {
    {"has_writer", has_writer, METH_NOARGS,
     "Whether the compiled writer's API was found (else every event takes Python)."},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "tracebus._speedups",
    "The compiled twin of the SDK's event path (see tracebus/_speedups.c).", -1,
    module_methods,
};

static int intern(PyObject **slot, const char *s) {
    *slot = PyUnicode_InternFromString(s);
    return *slot == NULL ? -1 : 0;
}

PyMODINIT_FUNC PyInit__speedups(void) {
    if (intern(&str_seq, "seq") || intern(&str_begin, "begin") || intern(&str_end, "end")
        || intern(&str_instant, "instant") || intern(&str_counter, "counter")
        || intern(&str_write_packet, "write_packet")
        || intern(&str_interrupted, "_interrupted") || intern(&str_asyncio, "asyncio")
        || intern(&str_default, "default") || intern(&str_empty, "")
        || intern(&POINT_ARGS[0], "name") || intern(&POINT_ARGS[1], "category")
        || intern(&POINT_ARGS[2], "args") || intern(&POINT_ARGS[3], "flow")
        || intern(&POINT_ARGS[4], "terminate_flow") || intern(&COUNTER_ARGS[1], "value")
        || intern(&COUNTER_ARGS[3], "unit")) {
        return NULL;
    }
    COUNTER_ARGS[0] = POINT_ARGS[0];
    COUNTER_ARGS[2] = POINT_ARGS[1];
    zero = PyLong_FromLong(0);
    if (zero == NULL) return NULL;
    if (PyType_Ready(&SequenceCoreType) < 0 || PyType_Ready(&InstanceCoreType) < 0
        || PyType_Ready(&SliceType) < 0 || PyType_Ready(&NoSliceType) < 0
        || PyType_Ready(&BindType) < 0 || PyType_Ready(&ApiType) < 0
        || add_bind(&SliceType) < 0 || add_bind(&NoSliceType) < 0) {
        return NULL;
    }
    /* PyCapsule_Import imports only the package: the module first. */
    PyObject *writer_module = PyImport_ImportModule("shm._writer");
    Py_XDECREF(writer_module);
    writer_api = writer_module == NULL ? NULL
        : (TracebusWriterAPI *)PyCapsule_Import(TRACEBUS_WRITER_CAPSULE, 0);
    if (writer_api == NULL) PyErr_Clear();  /* no compiled writer: Python does every event */
    NoSlice *nothing = PyObject_New(NoSlice, &NoSliceType);
    if (nothing == NULL) return NULL;
    nothing->vectorcall = no_slice_call;
    no_slice = (PyObject *)nothing;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "SequenceCore", (PyObject *)&SequenceCoreType) < 0
        || PyModule_AddObjectRef(m, "InstanceCore", (PyObject *)&InstanceCoreType) < 0
        || PyModule_AddObjectRef(m, "Api", (PyObject *)&ApiType) < 0
        || PyModule_AddObjectRef(m, "NO_SLICE", no_slice) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
