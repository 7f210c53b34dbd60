/* The C API of shm._writer (a TraceWriter's fast path) for other extensions.
 *
 *   TracebusWriterAPI *api = PyCapsule_Import(TRACEBUS_WRITER_CAPSULE, 0);
 *
 * try_write(writer, data, n): 1 if `data` was appended as one complete packet
 *   on the writer's fast path (exactly the bytes the pure-Python
 *   TraceWriter.write_packet would have written), 0 if it was not taken (not a
 *   compiled writer, no room, a flush asked for, dropping...): the caller then
 *   calls writer.write_packet(data) from Python. Never sets an exception.
 * state_invalid(writer): the writer's incremental_state_invalid (1 or 0), or -1
 *   if `writer` is not a compiled writer (read the attribute instead).
 */
#ifndef TRACEBUS_WRITER_API_H
#define TRACEBUS_WRITER_API_H

#include <Python.h>

#define TRACEBUS_WRITER_CAPSULE "shm._writer._C_API"

typedef struct {
    int (*try_write)(PyObject *writer, const char *data, Py_ssize_t n);
    int (*state_invalid)(PyObject *writer);
} TracebusWriterAPI;

#endif
