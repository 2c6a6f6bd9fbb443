/*
 * A traced request's span work in C: the lean span's core, its start, the current-span context, the
 * RPC wrapper's common start and end, the span queue's sink, and the OTLP encoding of one span
 * (sidecar/telemetry/lean_tracing.py, otlp.py, export.py, sidecar/protocol/interceptors.py). Each has a
 * Python twin that serves where this is not built (or SIDECAR_LEAN_SPAN=python), and the tests hold
 * the two to the same results (tests/telemetry/test_span_core.py, test_otlp_native.py).
 *
 * Encoding. A request span's encoding in Python takes ~2.5 us, all of it holding the GIL the event loop
 * needs; here a fraction of that. Only the common shapes are encoded: no events, no status, no trace
 * state, a str name, attribute values that are exact str, bool, int or float (None skipped), and links
 * (a batch span's) without attributes or trace state. Anything else, or any value Python's encoder would
 * treat differently (a str subclass, a string that is not valid UTF-8, an id out of range), returns None
 * and the caller encodes the span in Python, so the bytes are always the ones otlp.encode_span + its
 * field head would write.
 *
 *   configure(kinds, unset_status, no_state)   kinds: the SpanKind members in OTLP order (INTERNAL ...
 *                                              CONSUMER); unset_status: StatusCode.UNSET; no_state: the
 *                                              API's DEFAULT_TRACE_STATE. Before span_field and SpanCore.
 *   span_field(span) -> bytes | None           ScopeSpans.spans (field 2): tag, length, Span message body
 *
 * The span (lean_tracing):
 *
 *   SpanCore(name, context, parent, kind, attributes, links, scope, sink, start_ns, errors=3)
 *                       the base of LeanSpan: its slots (member descriptors, read and written from
 *                       Python as before), get_span_context(), is_recording(), end(end_time=None)
 *                       (sets end_ns, then calls sink(span) once); span_field reads its fields directly
 *   RequestStarter(cls, span_context_type, sampled_flags, no_state, getrandbits, decide, scope, provider)
 *       .start(name, parent, kind, attributes) -> cls instance | None
 *                       LeanTracer.start_request_span in one call: ids from getrandbits, the sampler's
 *                       decide(parent, trace_id, None), the span context built as the API's tuple
 *                       (lean_tracing._span_context), the attributes copied, the provider's sink
 *   configure_context(api_var, Context, span_key, Span, INVALID_SPAN)
 *   enter_current(span) -> token, leave_current(token), current_span()
 *                       the API's attach(set_span_in_context(span)), detach(token) (a foreign or used
 *                       token ignored) and get_current_span(), for its default runtime context
 *
 * The RPC wrapper (interceptors) and the span queue (export):
 *
 *   CallStart(starter, method, kind, attributes, tap_var, slow)(context, request) -> (span, token, context)
 *                       a unary call's start where the handler lookup kept its metadata, which names no
 *                       trace context, and the request is serialized; slow(context, request) otherwise
 *   finish_ok(span, token)          leave_current(token), rpc.status_code "OK", span.end()
 *   SpanSink(queue, queue_size, batch_size, wake, refuse, at_end, encoder)(span)
 *                       BoundedSpanProcessor.on_end: refuse(reason) when stopping or full; else queue
 *                       the span's encoded field (bytes alone for the encoder's bytes_scope, the first
 *                       scope seen; (scope, bytes) for another), at_end(span)'s answer, or the span;
 *                       wake() when the queue reaches batch_size
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include "structmember.h"

static PyObject *kind_members[5];
static PyObject *unset_status;
static PyObject *no_state;
static int configured;

/* interned attribute names of LeanSpan's slots */
static PyObject *s_context, *s_parent, *s_name, *s_kind, *s_attributes, *s_start_ns, *s_end_ns, *s_events,
    *s_links, *s_status_code, *s_link_context;

/* ---- the lean span's core ------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *context;        /* the span's SpanContext (a tuple subclass) */
    PyObject *parent;         /* the parent's SpanContext, or None */
    PyObject *name;
    PyObject *kind;
    PyObject *attributes;     /* the span's own dict */
    PyObject *links;          /* () or a list of the span's own */
    PyObject *events;         /* () or a list */
    PyObject *scope;
    PyObject *status_code;
    PyObject *status_message;
    PyObject *sink;           /* called with the span when it ends */
    long long start_ns;
    long long end_ns;         /* 0 while recording */
    int errors;               /* what an exception leaving the span does (lean_tracing._RECORD | _SET_STATUS) */
} SpanCore;

static PyObject *empty_tuple;

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts); /* time.time_ns()'s clock */
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int core_traverse(SpanCore *self, visitproc visit, void *arg)
{
    Py_VISIT(self->context);
    Py_VISIT(self->parent);
    Py_VISIT(self->name);
    Py_VISIT(self->kind);
    Py_VISIT(self->attributes);
    Py_VISIT(self->links);
    Py_VISIT(self->events);
    Py_VISIT(self->scope);
    Py_VISIT(self->status_code);
    Py_VISIT(self->status_message);
    Py_VISIT(self->sink);
    return 0;
}

static int core_clear(SpanCore *self)
{
    Py_CLEAR(self->context);
    Py_CLEAR(self->parent);
    Py_CLEAR(self->name);
    Py_CLEAR(self->kind);
    Py_CLEAR(self->attributes);
    Py_CLEAR(self->links);
    Py_CLEAR(self->events);
    Py_CLEAR(self->scope);
    Py_CLEAR(self->status_code);
    Py_CLEAR(self->status_message);
    Py_CLEAR(self->sink);
    return 0;
}

static void core_dealloc(SpanCore *self)
{
    PyObject_GC_UnTrack(self);
    core_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Fill a freshly allocated span (every field NULL): steals nothing, takes new references. */
static void core_fill(SpanCore *self, PyObject *name, PyObject *context, PyObject *parent, PyObject *kind,
                      PyObject *attributes, PyObject *links, PyObject *scope, PyObject *sink, long long start_ns,
                      int errors)
{
    Py_INCREF(name);
    self->name = name;
    Py_INCREF(context);
    self->context = context;
    Py_INCREF(parent);
    self->parent = parent;
    Py_INCREF(kind);
    self->kind = kind;
    Py_INCREF(attributes);
    self->attributes = attributes;
    Py_INCREF(links);
    self->links = links;
    Py_INCREF(empty_tuple);
    self->events = empty_tuple;
    Py_INCREF(scope);
    self->scope = scope;
    Py_INCREF(unset_status);
    self->status_code = unset_status;
    self->status_message = PyUnicode_New(0, 0);
    Py_INCREF(sink);
    self->sink = sink;
    self->start_ns = start_ns;
    self->end_ns = 0;
    self->errors = errors;
}

static PyObject *core_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *names[] = {"name", "context", "parent", "kind", "attributes", "links", "scope", "sink",
                            "start_ns", "errors", NULL};
    PyObject *name, *context, *parent, *kind, *attributes, *links, *scope, *sink;
    long long start_ns;
    int errors = 3;
    if (!configured) {
        PyErr_SetString(PyExc_RuntimeError, "_otlp_native.configure() was not called");
        return NULL;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOOOOOL|i:SpanCore", names, &name, &context, &parent, &kind,
                                     &attributes, &links, &scope, &sink, &start_ns, &errors)) {
        return NULL;
    }
    SpanCore *self = (SpanCore *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    core_fill(self, name, context, parent, kind, attributes, links, scope, sink, start_ns, errors);
    if (self->status_message == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static PyObject *core_get_span_context(SpanCore *self, PyObject *unused)
{
    Py_INCREF(self->context);
    return self->context;
}

static PyObject *core_is_recording(SpanCore *self, PyObject *unused)
{
    return PyBool_FromLong(self->end_ns == 0);
}

/* end(end_time=None): as LeanSpan.end: once; end_ns = end_time or now; then sink(span). */
static PyObject *core_end(SpanCore *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *end_time = nargs > 0 ? args[0] : Py_None;
    if (kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0) {
        if (nargs + PyTuple_GET_SIZE(kwnames) > 1 ||
            !PyUnicode_Check(PyTuple_GET_ITEM(kwnames, 0)) ||
            PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "end_time") != 0) {
            PyErr_SetString(PyExc_TypeError, "end() takes one optional argument, end_time");
            return NULL;
        }
        end_time = args[nargs];
    } else if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "end() takes one optional argument, end_time");
        return NULL;
    }
    if (self->end_ns) {
        Py_RETURN_NONE;
    }
    long long end_ns = 0;
    if (end_time != Py_None) {
        end_ns = PyLong_AsLongLong(end_time);
        if (end_ns == -1 && PyErr_Occurred()) {
            return NULL;
        }
    }
    self->end_ns = end_ns ? end_ns : now_ns();
    PyObject *sink = self->sink;
    if (sink == NULL) {
        Py_RETURN_NONE;
    }
    Py_INCREF(sink);
    PyObject *r = PyObject_CallOneArg(sink, (PyObject *)self);
    Py_DECREF(sink);
    return r;
}

static PyMethodDef core_methods[] = {
    {"get_span_context", (PyCFunction)core_get_span_context, METH_NOARGS, "the span's SpanContext"},
    {"is_recording", (PyCFunction)core_is_recording, METH_NOARGS, "True until end()"},
    {"end", (PyCFunction)(void (*)(void))core_end, METH_FASTCALL | METH_KEYWORDS,
     "end(end_time=None): end_ns = end_time or now, then sink(span); ignored once ended"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef core_members[] = {
    {"_context", T_OBJECT_EX, offsetof(SpanCore, context), 0, NULL},
    {"parent", T_OBJECT_EX, offsetof(SpanCore, parent), 0, NULL},
    {"name", T_OBJECT_EX, offsetof(SpanCore, name), 0, NULL},
    {"kind", T_OBJECT_EX, offsetof(SpanCore, kind), 0, NULL},
    {"attributes", T_OBJECT_EX, offsetof(SpanCore, attributes), 0, NULL},
    {"links", T_OBJECT_EX, offsetof(SpanCore, links), 0, NULL},
    {"events", T_OBJECT_EX, offsetof(SpanCore, events), 0, NULL},
    {"scope", T_OBJECT_EX, offsetof(SpanCore, scope), 0, NULL},
    {"status_code", T_OBJECT_EX, offsetof(SpanCore, status_code), 0, NULL},
    {"status_message", T_OBJECT_EX, offsetof(SpanCore, status_message), 0, NULL},
    {"_sink", T_OBJECT_EX, offsetof(SpanCore, sink), 0, NULL},
    {"start_ns", T_LONGLONG, offsetof(SpanCore, start_ns), 0, NULL},
    {"end_ns", T_LONGLONG, offsetof(SpanCore, end_ns), 0, NULL},
    {"_errors", T_INT, offsetof(SpanCore, errors), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject SpanCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sidecar.telemetry._otlp_native.SpanCore",
    .tp_basicsize = sizeof(SpanCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A lean span's slots and its hot methods (LeanSpan's base)",
    .tp_new = core_new,
    .tp_dealloc = (destructor)core_dealloc,
    .tp_traverse = (traverseproc)core_traverse,
    .tp_clear = (inquiry)core_clear,
    .tp_methods = core_methods,
    .tp_members = core_members,
};

/* ---- LeanTracer.start_request_span in one call ---------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyTypeObject *cls;           /* LeanSpan: a subtype of SpanCore */
    PyTypeObject *context_type;  /* opentelemetry.trace.SpanContext (a tuple subclass) */
    PyObject *sampled;           /* TraceFlags(SAMPLED) */
    PyObject *no_state;          /* the API's DEFAULT_TRACE_STATE */
    PyObject *getrandbits;
    PyObject *decide;            /* (parent, trace_id, links) -> sampled? */
    PyObject *scope;
    PyObject *provider;          /* its .sink, read at each start (as LeanTracer reads it) */
    PyObject *bits128, *bits64;
} Starter;

static PyObject *s_sink;

static int starter_traverse(Starter *self, visitproc visit, void *arg)
{
    Py_VISIT(self->cls);
    Py_VISIT(self->context_type);
    Py_VISIT(self->sampled);
    Py_VISIT(self->no_state);
    Py_VISIT(self->getrandbits);
    Py_VISIT(self->decide);
    Py_VISIT(self->scope);
    Py_VISIT(self->provider);
    return 0;
}

static int starter_clear(Starter *self)
{
    Py_CLEAR(self->cls);
    Py_CLEAR(self->context_type);
    Py_CLEAR(self->sampled);
    Py_CLEAR(self->no_state);
    Py_CLEAR(self->getrandbits);
    Py_CLEAR(self->decide);
    Py_CLEAR(self->scope);
    Py_CLEAR(self->provider);
    Py_CLEAR(self->bits128);
    Py_CLEAR(self->bits64);
    return 0;
}

static void starter_dealloc(Starter *self)
{
    PyObject_GC_UnTrack(self);
    starter_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *starter_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *cls, *context_type, *sampled, *no_state_, *getrandbits, *decide, *scope, *provider;
    if (kwds != NULL && PyDict_GET_SIZE(kwds) > 0) {
        PyErr_SetString(PyExc_TypeError, "RequestStarter takes positional arguments only");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OOOOOOOO:RequestStarter", &cls, &context_type, &sampled, &no_state_, &getrandbits,
                          &decide, &scope, &provider)) {
        return NULL;
    }
    if (!PyType_Check(cls) || !PyType_IsSubtype((PyTypeObject *)cls, &SpanCoreType)) {
        PyErr_SetString(PyExc_TypeError, "cls: a subtype of SpanCore");
        return NULL;
    }
    if (!PyType_Check(context_type) || !PyType_IsSubtype((PyTypeObject *)context_type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "span_context_type: a tuple subclass");
        return NULL;
    }
    Starter *self = (Starter *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
#define KEEP(field, value) Py_INCREF(value); self->field = (void *)(value);
    KEEP(cls, cls);
    KEEP(context_type, context_type);
    KEEP(sampled, sampled);
    KEEP(no_state, no_state_);
    KEEP(getrandbits, getrandbits);
    KEEP(decide, decide);
    KEEP(scope, scope);
    KEEP(provider, provider);
#undef KEEP
    self->bits128 = PyLong_FromLong(128);
    self->bits64 = PyLong_FromLong(64);
    if (self->bits128 == NULL || self->bits64 == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

/* getrandbits(bits) or 1: a valid (non-zero) id, as the tracer's ``_getrandbits(n) or 1``. */
static PyObject *random_id(Starter *self, PyObject *bits)
{
    PyObject *id = PyObject_CallOneArg(self->getrandbits, bits);
    if (id == NULL) {
        return NULL;
    }
    int truth = PyObject_IsTrue(id);
    if (truth < 0) {
        Py_DECREF(id);
        return NULL;
    }
    if (!truth) {
        Py_DECREF(id);
        return PyLong_FromLong(1);
    }
    return id;
}

/* start(name, parent, kind, attributes): see LeanTracer.start_request_span. */
static PyObject *starter_start(Starter *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "start(name, parent, kind, attributes)");
        return NULL;
    }
    PyObject *name = args[0], *parent = args[1], *kind = args[2], *attributes = args[3];
    PyObject *trace_id = NULL, *state = NULL, *span_id = NULL, *context = NULL, *copied = NULL, *sink = NULL;
    PyObject *result = NULL;
    if (Py_TYPE(parent) == self->context_type && PyTuple_GET_SIZE(parent) >= 6) {
        /* the API's tuple (trace_id, span_id, is_remote, trace_flags, trace_state, is_valid) */
        trace_id = PyTuple_GET_ITEM(parent, 0);
        state = PyTuple_GET_ITEM(parent, 4);
        Py_INCREF(trace_id);
        Py_INCREF(state);
    } else if (parent != Py_None) {
        if ((trace_id = PyObject_GetAttrString(parent, "trace_id")) == NULL ||
            (state = PyObject_GetAttrString(parent, "trace_state")) == NULL) {
            goto done;
        }
    } else {
        if ((trace_id = random_id(self, self->bits128)) == NULL) {
            goto done;
        }
        Py_INCREF(Py_None);
        state = Py_None;
    }
    PyObject *decide_args[3] = {parent, trace_id, Py_None};
    PyObject *decided = PyObject_Vectorcall(self->decide, decide_args, 3, NULL);
    if (decided == NULL) {
        goto done;
    }
    int sampled = PyObject_IsTrue(decided);
    Py_DECREF(decided);
    if (sampled <= 0) {
        if (sampled == 0) {
            Py_INCREF(Py_None);
            result = Py_None;
        }
        goto done;
    }
    if ((span_id = random_id(self, self->bits64)) == NULL) {
        goto done;
    }
    int has_state = PyObject_IsTrue(state);
    if (has_state < 0) {
        goto done;
    }
    /* SpanContext(trace_id, span_id, False, SAMPLED, state or DEFAULT_TRACE_STATE), as the API's tuple
     * (trace_id, span_id, is_remote, trace_flags, trace_state, is_valid): lean_tracing._span_context */
    context = self->context_type->tp_alloc(self->context_type, 6);
    if (context == NULL) {
        goto done;
    }
    PyObject *items[6] = {trace_id, span_id, Py_False, self->sampled, has_state ? state : self->no_state, Py_True};
    for (int i = 0; i < 6; i++) {
        Py_INCREF(items[i]);
        PyTuple_SET_ITEM(context, i, items[i]);
    }
    copied = PyDict_CheckExact(attributes) ? PyDict_Copy(attributes) : PyObject_CallOneArg((PyObject *)&PyDict_Type, attributes);
    if (copied == NULL) {
        goto done;
    }
    if ((sink = PyObject_GetAttr(self->provider, s_sink)) == NULL) {
        goto done;
    }
    SpanCore *span = (SpanCore *)self->cls->tp_alloc(self->cls, 0);
    if (span == NULL) {
        goto done;
    }
    core_fill(span, name, context, parent, kind, copied, empty_tuple, self->scope, sink, now_ns(), 3);
    if (span->status_message == NULL) {
        Py_DECREF(span);
        goto done;
    }
    result = (PyObject *)span;
done:
    Py_XDECREF(trace_id);
    Py_XDECREF(state);
    Py_XDECREF(span_id);
    Py_XDECREF(context);
    Py_XDECREF(copied);
    Py_XDECREF(sink);
    return result;
}

static PyMethodDef starter_methods[] = {
    {"start", (PyCFunction)(void (*)(void))starter_start, METH_FASTCALL,
     "start(name, parent, kind, attributes) -> a recording span, or None when the sampler does not sample"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject StarterType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sidecar.telemetry._otlp_native.RequestStarter",
    .tp_basicsize = sizeof(Starter),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "LeanTracer.start_request_span in one C call",
    .tp_new = starter_new,
    .tp_dealloc = (destructor)starter_dealloc,
    .tp_traverse = (traverseproc)starter_traverse,
    .tp_clear = (inquiry)starter_clear,
    .tp_methods = starter_methods,
};


typedef struct {
    unsigned char *data;
    Py_ssize_t len;
    Py_ssize_t cap;
    unsigned char inline_buf[512];
} Buf;

static void buf_init(Buf *b)
{
    b->data = b->inline_buf;
    b->len = 0;
    b->cap = (Py_ssize_t)sizeof(b->inline_buf);
}

static void buf_free(Buf *b)
{
    if (b->data != b->inline_buf) {
        PyMem_Free(b->data);
    }
}

static int buf_reserve(Buf *b, Py_ssize_t extra)
{
    if (b->len + extra <= b->cap) {
        return 0;
    }
    Py_ssize_t cap = b->cap * 2;
    while (cap < b->len + extra) {
        cap *= 2;
    }
    unsigned char *data;
    if (b->data == b->inline_buf) {
        data = PyMem_Malloc((size_t)cap);
        if (data != NULL) {
            memcpy(data, b->inline_buf, (size_t)b->len);
        }
    } else {
        data = PyMem_Realloc(b->data, (size_t)cap);
    }
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->cap = cap;
    return 0;
}

static int put(Buf *b, const void *src, Py_ssize_t n)
{
    if (buf_reserve(b, n) < 0) {
        return -1;
    }
    memcpy(b->data + b->len, src, (size_t)n);
    b->len += n;
    return 0;
}

static int put_byte(Buf *b, unsigned char c)
{
    return put(b, &c, 1);
}

static int varint_size(uint64_t v)
{
    int n = 1;
    while (v > 127) {
        v >>= 7;
        n++;
    }
    return n;
}

/* A base-128 varint at out (room for 10 bytes); its size. */
static int write_varint(unsigned char *out, uint64_t v)
{
    int n = 0;
    while (v > 127) {
        out[n++] = (unsigned char)((v & 127) | 128);
        v >>= 7;
    }
    out[n++] = (unsigned char)v;
    return n;
}

static int put_varint(Buf *b, uint64_t v)
{
    unsigned char tmp[10];
    return put(b, tmp, write_varint(tmp, v));
}

static int put_fixed64(Buf *b, uint64_t v)
{
    unsigned char tmp[8];
    for (int i = 0; i < 8; i++) {
        tmp[i] = (unsigned char)(v >> (8 * i));
    }
    return put(b, tmp, 8);
}

static int put_be64(Buf *b, uint64_t v)
{
    unsigned char tmp[8];
    for (int i = 0; i < 8; i++) {
        tmp[i] = (unsigned char)(v >> (56 - 8 * i));
    }
    return put(b, tmp, 8);
}

/* 1: ok (*out set); 0: not encodable here (no Python error left set); -1: a real error (set). */
#define FALLBACK 0

/* An exact, non-negative int below 2**64. */
static int as_u64(PyObject *v, uint64_t *out)
{
    if (!PyLong_CheckExact(v)) {
        return FALLBACK;
    }
    unsigned long long x = PyLong_AsUnsignedLongLong(v);
    if (x == (unsigned long long)-1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) {
            return -1;
        }
        PyErr_Clear();
        return FALLBACK;
    }
    *out = (uint64_t)x;
    return 1;
}

/* A 128-bit id as (high, low): an exact, non-negative int below 2**128. */
static int as_u128(PyObject *v, uint64_t *hi, uint64_t *lo)
{
    if (!PyLong_CheckExact(v)) {
        return FALLBACK;
    }
    PyObject *sixty_four = PyLong_FromLong(64);
    if (sixty_four == NULL) {
        return -1;
    }
    PyObject *high = PyNumber_Rshift(v, sixty_four);
    Py_DECREF(sixty_four);
    if (high == NULL) {
        return -1;
    }
    int r = as_u64(high, hi);
    Py_DECREF(high);
    if (r != 1) {
        return r;
    }
    unsigned long long low = PyLong_AsUnsignedLongLongMask(v);
    if (low == (unsigned long long)-1 && PyErr_Occurred()) {
        return -1;
    }
    *lo = (uint64_t)low;
    return 1;
}

/* UTF-8 of an exact str; FALLBACK for a subclass or a string that does not encode strictly. */
static int utf8_of(PyObject *s, const char **data, Py_ssize_t *size)
{
    if (!PyUnicode_CheckExact(s)) {
        return FALLBACK;
    }
    *data = PyUnicode_AsUTF8AndSize(s, size);
    if (*data == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) {
            return -1;
        }
        PyErr_Clear();  /* lone surrogates: Python writes them with surrogatepass */
        return FALLBACK;
    }
    return 1;
}

/* One Span.attributes (9) KeyValue field. */
static int put_attribute(Buf *b, PyObject *key, PyObject *value)
{
    const char *k;
    Py_ssize_t klen;
    int r = utf8_of(key, &k, &klen);
    if (r != 1) {
        return r;
    }
    /* the AnyValue message body, built in a small scratch buffer */
    unsigned char any_head[11];
    int any_head_len = 0;
    const char *payload = NULL;
    Py_ssize_t payload_len = 0;
    unsigned char scalar[10];
    if (PyUnicode_CheckExact(value)) {
        r = utf8_of(value, &payload, &payload_len);
        if (r != 1) {
            return r;
        }
        any_head[any_head_len++] = 0x0a; /* string_value (1) */
        any_head_len += write_varint(any_head + any_head_len, (uint64_t)payload_len);
    } else if (PyBool_Check(value)) {
        any_head[any_head_len++] = 0x10; /* bool_value (2) */
        any_head[any_head_len++] = value == Py_True ? 1 : 0;
    } else if (PyLong_CheckExact(value)) {
        unsigned long long x = PyLong_AsUnsignedLongLongMask(value); /* int64 two's complement, as Python's & */
        if (x == (unsigned long long)-1 && PyErr_Occurred()) {
            return -1;
        }
        any_head[any_head_len++] = 0x18; /* int_value (3) */
        any_head_len += write_varint(any_head + any_head_len, (uint64_t)x);
    } else if (PyFloat_CheckExact(value)) {
        double d = PyFloat_AS_DOUBLE(value);
        uint64_t bits;
        memcpy(&bits, &d, 8);
        any_head[any_head_len++] = 0x21; /* double_value (4) */
        for (int i = 0; i < 8; i++) {
            scalar[i] = (unsigned char)(bits >> (8 * i));
        }
        payload = (const char *)scalar;
        payload_len = 8;
    } else {
        return FALLBACK;
    }
    Py_ssize_t any_len = any_head_len + payload_len;
    Py_ssize_t kv_len = 1 + varint_size((uint64_t)klen) + klen + 1 + varint_size((uint64_t)any_len) + any_len;
    if (put_byte(b, 0x4a) < 0 || put_varint(b, (uint64_t)kv_len) < 0 || put_byte(b, 0x0a) < 0 ||
        put_varint(b, (uint64_t)klen) < 0 || put(b, k, klen) < 0 || put_byte(b, 0x12) < 0 ||
        put_varint(b, (uint64_t)any_len) < 0 || put(b, any_head, any_head_len) < 0 ||
        (payload_len && put(b, payload, payload_len) < 0)) {
        return -1;
    }
    return 1;
}

/* 1 when the span context (a tuple of at least 5) holds no trace state; FALLBACK when it holds one; -1. */
static int without_trace_state(PyObject *ctx)
{
    PyObject *state = PyTuple_GET_ITEM(ctx, 4);
    if (state == no_state) {
        return 1;
    }
    int truth = PyObject_IsTrue(state);
    return truth == 0 ? 1 : (truth < 0 ? -1 : FALLBACK);
}

/* One Span.links (13) field for a link with no attributes and no trace state (a batch span's):
 * trace id, span id, flags (sampled | CONTEXT_HAS_IS_REMOTE [| IS_REMOTE]), 35 bytes in all. */
static int put_bare_link(Buf *b, PyObject *link)
{
    PyObject *attrs = PyObject_GetAttr(link, s_attributes);
    if (attrs == NULL) {
        return -1;
    }
    int has_attrs = attrs == Py_None ? 0 : PyObject_IsTrue(attrs);
    Py_DECREF(attrs);
    if (has_attrs != 0) {
        return has_attrs < 0 ? -1 : FALLBACK;
    }
    PyObject *ctx = PyObject_GetAttr(link, s_link_context);
    if (ctx == NULL) {
        return -1;
    }
    int r = FALLBACK;
    uint64_t hi, lo, span_id;
    int remote = 0;
    if (!PyTuple_Check(ctx) || PyTuple_GET_SIZE(ctx) < 5) {
        goto done;
    }
    if ((r = without_trace_state(ctx)) != 1) {
        goto done;
    }
    if ((r = as_u128(PyTuple_GET_ITEM(ctx, 0), &hi, &lo)) != 1 || (r = as_u64(PyTuple_GET_ITEM(ctx, 1), &span_id)) != 1) {
        goto done;
    }
    remote = PyObject_IsTrue(PyTuple_GET_ITEM(ctx, 2));
    if (remote < 0) {
        r = -1;
        goto done;
    }
    unsigned char flags[5] = {0x35, 0x01, (unsigned char)(remote ? 0x03 : 0x01), 0x00, 0x00};
    r = -1;
    if (put(b, "\x6a\x21\x0a\x10", 4) < 0 || put_be64(b, hi) < 0 || put_be64(b, lo) < 0 || put(b, "\x12\x08", 2) < 0 ||
        put_be64(b, span_id) < 0 || put(b, flags, 5) < 0) {
        goto done;
    }
    r = 1;
done:
    Py_DECREF(ctx);
    return r;
}

static int is_empty_sequence(PyObject *v)
{
    if (PyTuple_CheckExact(v)) {
        return PyTuple_GET_SIZE(v) == 0;
    }
    if (PyList_CheckExact(v)) {
        return PyList_GET_SIZE(v) == 0;
    }
    return 0;
}

/* The Span message body into b: 1, FALLBACK or -1. */
static int encode_body(Buf *b, PyObject *span)
{
    int r = FALLBACK;
    PyObject *ctx = NULL, *parent = NULL, *name = NULL, *kind = NULL, *attributes = NULL, *start = NULL,
             *end = NULL, *events = NULL, *links = NULL, *status = NULL;
    uint64_t trace_hi, trace_lo, span_id, parent_id = 0, start_ns, end_ns;
    if (PyObject_TypeCheck(span, &SpanCoreType)) { /* the fields themselves (a field deleted: Python's) */
        SpanCore *core = (SpanCore *)span;
        if (core->context == NULL || core->parent == NULL || core->name == NULL || core->kind == NULL ||
            core->attributes == NULL || core->events == NULL || core->links == NULL || core->status_code == NULL ||
            core->start_ns < 0 || core->end_ns < 0) {
            return FALLBACK;
        }
        ctx = core->context;
        parent = core->parent;
        name = core->name;
        kind = core->kind;
        attributes = core->attributes;
        events = core->events;
        links = core->links;
        status = core->status_code;
        Py_INCREF(ctx);
        Py_INCREF(parent);
        Py_INCREF(name);
        Py_INCREF(kind);
        Py_INCREF(attributes);
        Py_INCREF(events);
        Py_INCREF(links);
        Py_INCREF(status);
        start_ns = (uint64_t)core->start_ns;
        end_ns = (uint64_t)core->end_ns;
    } else {
        if ((ctx = PyObject_GetAttr(span, s_context)) == NULL || (parent = PyObject_GetAttr(span, s_parent)) == NULL ||
            (name = PyObject_GetAttr(span, s_name)) == NULL || (kind = PyObject_GetAttr(span, s_kind)) == NULL ||
            (attributes = PyObject_GetAttr(span, s_attributes)) == NULL ||
            (start = PyObject_GetAttr(span, s_start_ns)) == NULL || (end = PyObject_GetAttr(span, s_end_ns)) == NULL ||
            (events = PyObject_GetAttr(span, s_events)) == NULL || (links = PyObject_GetAttr(span, s_links)) == NULL ||
            (status = PyObject_GetAttr(span, s_status_code)) == NULL) {
            r = -1;
            goto done;
        }
        if ((r = as_u64(start, &start_ns)) != 1 || (r = as_u64(end, &end_ns)) != 1) {
            goto done;
        }
    }
    r = FALLBACK;
    if (!PyTuple_Check(ctx) || PyTuple_GET_SIZE(ctx) < 5 || !is_empty_sequence(events) ||
        !(PyList_CheckExact(links) || PyTuple_CheckExact(links)) || status != unset_status ||
        !PyDict_CheckExact(attributes)) {
        goto done;
    }
    if ((r = without_trace_state(ctx)) != 1) {
        goto done;
    }
    int parent_remote = 0;
    if ((r = as_u128(PyTuple_GET_ITEM(ctx, 0), &trace_hi, &trace_lo)) != 1 ||
        (r = as_u64(PyTuple_GET_ITEM(ctx, 1), &span_id)) != 1) {
        goto done;
    }
    if (parent != Py_None) {
        if (!PyTuple_Check(parent) || PyTuple_GET_SIZE(parent) < 3) {
            r = FALLBACK;
            goto done;
        }
        if ((r = as_u64(PyTuple_GET_ITEM(parent, 1), &parent_id)) != 1) {
            goto done;
        }
        parent_remote = PyObject_IsTrue(PyTuple_GET_ITEM(parent, 2));
        if (parent_remote < 0) {
            r = -1;
            goto done;
        }
    }
    const char *name_utf8;
    Py_ssize_t name_len;
    if ((r = utf8_of(name, &name_utf8, &name_len)) != 1) {
        goto done;
    }
    unsigned char kind_code = 1; /* as Python's _KIND.get(kind, INTERNAL) */
    for (int i = 0; i < 5; i++) {
        if (kind == kind_members[i]) {
            kind_code = (unsigned char)(i + 1);
            break;
        }
    }
    r = -1;
    if (put(b, "\x0a\x10", 2) < 0 || put_be64(b, trace_hi) < 0 || put_be64(b, trace_lo) < 0 ||
        put(b, "\x12\x08", 2) < 0 || put_be64(b, span_id) < 0) {
        goto done;
    }
    if (parent != Py_None && (put(b, "\x22\x08", 2) < 0 || put_be64(b, parent_id) < 0)) {
        goto done;
    }
    if (put_byte(b, 0x2a) < 0 || put_varint(b, (uint64_t)name_len) < 0 || put(b, name_utf8, name_len) < 0 ||
        put_byte(b, 0x30) < 0 || put_byte(b, kind_code) < 0) {
        goto done;
    }
    if (put_byte(b, 0x39) < 0 || put_fixed64(b, start_ns) < 0 || put_byte(b, 0x41) < 0 ||
        put_fixed64(b, end_ns) < 0) {
        goto done;
    }
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(attributes, &pos, &key, &value)) {
        if (value == Py_None) {
            continue;
        }
        int a = put_attribute(b, key, value);
        if (a != 1) {
            r = a;
            goto done;
        }
    }
    Py_ssize_t n_links = PySequence_Fast_GET_SIZE(links);
    for (Py_ssize_t i = 0; i < n_links; i++) {
        int l = put_bare_link(b, PySequence_Fast_GET_ITEM(links, i));
        if (l != 1) {
            r = l;
            goto done;
        }
    }
    /* Span.flags (16, fixed32): sampled | CONTEXT_HAS_IS_REMOTE [| IS_REMOTE] */
    unsigned char flags[6] = {0x85, 0x01, 0x01, (unsigned char)(parent_remote ? 0x03 : 0x01), 0x00, 0x00};
    if (put(b, flags, 6) < 0) {
        goto done;
    }
    r = 1;
done:
    Py_XDECREF(ctx);
    Py_XDECREF(parent);
    Py_XDECREF(name);
    Py_XDECREF(kind);
    Py_XDECREF(attributes);
    Py_XDECREF(start);
    Py_XDECREF(end);
    Py_XDECREF(events);
    Py_XDECREF(links);
    Py_XDECREF(status);
    return r;
}



/* ---- the span queue's sink: BoundedSpanProcessor.on_end in one C call -------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *append;   /* the queue's bound append */
    PyObject *queue;    /* a collections.deque */
    Py_ssize_t queue_size;
    Py_ssize_t batch_size;
    PyObject *wake;     /* () when the queue reaches batch_size */
    PyObject *refuse;   /* (reason) for a span not queued: "shutdown" or "queue_full" */
    PyObject *at_end;   /* None, or (span) -> what to queue instead, or None: the span */
    PyObject *encoder;  /* None, or the TraceEncoder whose at_end this does for a SpanCore, in C */
    PyObject *bytes_scope; /* the scope whose spans are queued as the field alone (set on the encoder) */
    char stopping;
    vectorcallfunc vectorcall;
} Sink;

static PyObject *s_shutdown, *s_queue_full;
static int encode_body(Buf *b, PyObject *span);
static PyObject *field_of(Buf *body);
static PyObject *sink_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames);

static int sink_traverse(Sink *self, visitproc visit, void *arg)
{
    Py_VISIT(self->append);
    Py_VISIT(self->queue);
    Py_VISIT(self->wake);
    Py_VISIT(self->refuse);
    Py_VISIT(self->at_end);
    Py_VISIT(self->encoder);
    Py_VISIT(self->bytes_scope);
    return 0;
}

static int sink_clear(Sink *self)
{
    Py_CLEAR(self->append);
    Py_CLEAR(self->queue);
    Py_CLEAR(self->wake);
    Py_CLEAR(self->refuse);
    Py_CLEAR(self->at_end);
    Py_CLEAR(self->encoder);
    Py_CLEAR(self->bytes_scope);
    return 0;
}

static void sink_dealloc(Sink *self)
{
    PyObject_GC_UnTrack(self);
    sink_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *sink_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *names[] = {"queue", "queue_size", "batch_size", "wake", "refuse", "at_end", "encoder", NULL};
    PyObject *queue, *wake, *refuse, *at_end, *encoder;
    Py_ssize_t queue_size, batch_size;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OnnOOOO:SpanSink", names, &queue, &queue_size, &batch_size, &wake,
                                     &refuse, &at_end, &encoder)) {
        return NULL;
    }
    if (encoder != Py_None && !configured) {
        PyErr_SetString(PyExc_RuntimeError, "_otlp_native.configure() was not called");
        return NULL;
    }
    PyObject *append = PyObject_GetAttrString(queue, "append");
    if (append == NULL) {
        return NULL;
    }
    Sink *self = (Sink *)type->tp_alloc(type, 0);
    if (self == NULL) {
        Py_DECREF(append);
        return NULL;
    }
    self->append = append;
    Py_INCREF(queue);
    self->queue = queue;
    self->queue_size = queue_size;
    self->batch_size = batch_size;
    Py_INCREF(wake);
    self->wake = wake;
    Py_INCREF(refuse);
    self->refuse = refuse;
    Py_INCREF(at_end);
    self->at_end = at_end;
    if (encoder != Py_None) {
        Py_INCREF(encoder);
        self->encoder = encoder;
    }
    self->bytes_scope = NULL;
    self->stopping = 0;
    self->vectorcall = sink_vectorcall;
    return (PyObject *)self;
}

/* What the queue keeps of an ended span: (scope, field) from the C encoder, at_end's, or the span. */
static PyObject *queued_form(Sink *self, PyObject *span)
{
    if (self->encoder != NULL && PyObject_TypeCheck(span, &SpanCoreType) && ((SpanCore *)span)->scope != NULL) {
        Buf body;
        buf_init(&body);
        int r = encode_body(&body, span);
        PyObject *field = r == 1 ? field_of(&body) : NULL;
        buf_free(&body);
        if (field != NULL) {
            PyObject *scope = ((SpanCore *)span)->scope;
            if (self->bytes_scope == NULL) { /* the first span's scope: its spans are queued as bytes */
                if (PyObject_SetAttrString(self->encoder, "bytes_scope", scope) == 0) {
                    Py_INCREF(scope);
                    self->bytes_scope = scope;
                } else {
                    PyErr_Clear();
                }
            }
            if (scope == self->bytes_scope) {
                return field;
            }
            PyObject *pair = PyTuple_Pack(2, scope, field);
            Py_DECREF(field);
            if (pair != NULL) {
                return pair;
            }
        }
        PyErr_Clear(); /* never on the request path: the export thread encodes it in Python instead */
        Py_INCREF(span);
        return span;
    }
    if (self->at_end != Py_None) {
        PyObject *made = PyObject_CallOneArg(self->at_end, span);
        if (made == NULL) {
            PyErr_Clear();
        } else if (made != Py_None) {
            return made;
        } else {
            Py_DECREF(made);
        }
    }
    Py_INCREF(span);
    return span;
}

static PyObject *sink_call(Sink *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "SpanSink(span): one positional argument");
        return NULL;
    }
    if (self->stopping) {
        return PyObject_CallOneArg(self->refuse, s_shutdown);
    }
    Py_ssize_t n = PyObject_Size(self->queue);
    if (n < 0) {
        return NULL;
    }
    if (n >= self->queue_size) {
        return PyObject_CallOneArg(self->refuse, s_queue_full);
    }
    PyObject *item = queued_form(self, args[0]);
    if (item == NULL) {
        return NULL;
    }
    PyObject *r = PyObject_CallOneArg(self->append, item);
    Py_DECREF(item);
    if (r == NULL) {
        return NULL;
    }
    Py_DECREF(r);
    if (n + 1 == self->batch_size) { /* once per batch: the worker then sends everything queued */
        return PyObject_CallNoArgs(self->wake);
    }
    Py_RETURN_NONE;
}

static PyObject *sink_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    return sink_call((Sink *)callable, args, nargsf, kwnames);
}

static PyObject *sink_tp_call(PyObject *callable, PyObject *args, PyObject *kwds)
{
    if (kwds != NULL && PyDict_GET_SIZE(kwds)) {
        PyErr_SetString(PyExc_TypeError, "SpanSink(span): one positional argument");
        return NULL;
    }
    return sink_call((Sink *)callable, &PyTuple_GET_ITEM(args, 0), (size_t)PyTuple_GET_SIZE(args), NULL);
}


static PyMemberDef sink_members[] = {
    {"stopping", T_BOOL, offsetof(Sink, stopping), 0, "True from the shutdown on: every span is refused"},
    {"bytes_scope", T_OBJECT, offsetof(Sink, bytes_scope), READONLY, "the scope of the spans queued as bytes"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject SinkType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sidecar.telemetry._otlp_native.SpanSink",
    .tp_basicsize = sizeof(Sink),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "BoundedSpanProcessor.on_end in C: refuse (stopping, full) or queue the span's encoded form",
    .tp_new = sink_new,
    .tp_dealloc = (destructor)sink_dealloc,
    .tp_traverse = (traverseproc)sink_traverse,
    .tp_clear = (inquiry)sink_clear,
    .tp_call = sink_tp_call,
    .tp_vectorcall_offset = offsetof(Sink, vectorcall),
    .tp_members = sink_members,
};

/* ---- the current span: the API's runtime context, one C call each way ---------------------------- */

static PyObject *api_var, *api_context_type, *api_span_key, *api_span_type, *invalid_span;

static int context_configured(void)
{
    if (api_var == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_otlp_native.configure_context() was not called");
        return 0;
    }
    return 1;
}

/* enter_current(span) -> token: the API's attach(set_span_in_context(span)) for its default runtime
 * context: Context({**current, span key: span}) set in its context variable (lean_tracing.enter_span). */
static PyObject *enter_current(PyObject *module, PyObject *span)
{
    if (!context_configured()) {
        return NULL;
    }
    PyObject *current;
    if (PyContextVar_Get(api_var, NULL, &current) < 0) {
        return NULL;
    }
    PyObject *items;
    if (current != NULL && PyDict_Check(current) && PyDict_GET_SIZE(current) > 0) {
        items = PyDict_Copy(current);
    } else {
        items = PyDict_New();
    }
    Py_XDECREF(current);
    if (items == NULL) {
        return NULL;
    }
    if (PyDict_SetItem(items, api_span_key, span) < 0) {
        Py_DECREF(items);
        return NULL;
    }
    PyObject *context = PyObject_CallOneArg(api_context_type, items);
    Py_DECREF(items);
    if (context == NULL) {
        return NULL;
    }
    PyObject *token = PyContextVar_Set(api_var, context);
    Py_DECREF(context);
    return token;
}

/* leave_current(token): undo enter_current; a token of another context, one used already, or None, ignored
 * (as the API's detach, and lean_tracing.leave_span). */
static PyObject *leave_current(PyObject *module, PyObject *token)
{
    if (!context_configured()) {
        return NULL;
    }
    if (token != Py_None && PyContextVar_Reset(api_var, token) < 0) {
        if (!PyErr_ExceptionMatches(PyExc_ValueError) && !PyErr_ExceptionMatches(PyExc_RuntimeError) &&
            !PyErr_ExceptionMatches(PyExc_TypeError)) {
            return NULL;
        }
        PyErr_Clear();
    }
    Py_RETURN_NONE;
}

/* current_span() -> the API's get_current_span(): the current context's span, or INVALID_SPAN. */
static PyObject *current_span(PyObject *module, PyObject *unused)
{
    if (!context_configured()) {
        return NULL;
    }
    PyObject *current;
    if (PyContextVar_Get(api_var, NULL, &current) < 0) {
        return NULL;
    }
    PyObject *span = NULL;
    if (current != NULL && PyDict_Check(current)) {
        span = PyDict_GetItemWithError(current, api_span_key); /* borrowed */
        if (span == NULL && PyErr_Occurred()) {
            Py_DECREF(current);
            return NULL;
        }
    }
    int is_span = 0;
    if (span != NULL) {
        is_span = PyObject_TypeCheck(span, &SpanCoreType) ? 1 : PyObject_IsInstance(span, api_span_type);
        if (is_span < 0) {
            Py_DECREF(current);
            return NULL;
        }
    }
    PyObject *result = is_span ? span : invalid_span;
    Py_INCREF(result);
    Py_XDECREF(current);
    return result;
}

static PyObject *configure_context(PyObject *module, PyObject *args)
{
    PyObject *var, *context_type, *key, *span_type, *invalid;
    if (!PyArg_ParseTuple(args, "O!OOOO", &PyContextVar_Type, &var, &context_type, &key, &span_type, &invalid)) {
        return NULL;
    }
#define SET(global, value) Py_INCREF(value); Py_XSETREF(global, value);
    SET(api_var, var);
    SET(api_context_type, context_type);
    SET(api_span_key, key);
    SET(api_span_type, span_type);
    SET(invalid_span, invalid);
#undef SET
    Py_RETURN_NONE;
}


/* ---- the RPC wrapper's start and end of a traced call (sidecar/protocol/interceptors.py) ------------ */

typedef struct {
    PyObject_HEAD
    PyObject *starter;    /* a RequestStarter */
    PyObject *method;     /* the span's name */
    PyObject *kind;       /* SpanKind.SERVER */
    PyObject *attributes; /* the call's attributes, copied into each span */
    PyObject *tap;        /* the context variable where the handler lookup kept the call's metadata */
    PyObject *slow;       /* (context, request) -> (span, token, context): everything else */
    vectorcallfunc vectorcall;
} CallStart;

static PyObject *s_traceparent_key, *s_tracestate_key, *s_status_key, *s_ok;
static PyObject *call_start_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames);

static int call_start_traverse(CallStart *self, visitproc visit, void *arg)
{
    Py_VISIT(self->starter);
    Py_VISIT(self->method);
    Py_VISIT(self->kind);
    Py_VISIT(self->attributes);
    Py_VISIT(self->tap);
    Py_VISIT(self->slow);
    return 0;
}

static int call_start_clear(CallStart *self)
{
    Py_CLEAR(self->starter);
    Py_CLEAR(self->method);
    Py_CLEAR(self->kind);
    Py_CLEAR(self->attributes);
    Py_CLEAR(self->tap);
    Py_CLEAR(self->slow);
    return 0;
}

static void call_start_dealloc(CallStart *self)
{
    PyObject_GC_UnTrack(self);
    call_start_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *call_start_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *starter, *method, *kind, *attributes, *tap, *slow;
    if (kwds != NULL && PyDict_GET_SIZE(kwds) > 0) {
        PyErr_SetString(PyExc_TypeError, "CallStart takes positional arguments only");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "O!OOO!O!O:CallStart", &StarterType, &starter, &method, &kind, &PyDict_Type,
                          &attributes, &PyContextVar_Type, &tap, &slow)) {
        return NULL;
    }
    CallStart *self = (CallStart *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    PyObject *fields[6] = {starter, method, kind, attributes, tap, slow};
    PyObject **slots[6] = {&self->starter, &self->method, &self->kind, &self->attributes, &self->tap, &self->slow};
    for (int i = 0; i < 6; i++) {
        Py_INCREF(fields[i]);
        *slots[i] = fields[i];
    }
    self->vectorcall = call_start_vectorcall;
    return (PyObject *)self;
}

/* 1 when the metadata (a tuple or list of pairs) names a trace context (traceparent or tracestate, or a
 * key that is not an exact str, left to Python), 0 when it does not, -1 on an error. */
static int names_trace_context(PyObject *metadata)
{
    if (!PyTuple_CheckExact(metadata) && !PyList_CheckExact(metadata)) {
        return 1;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(metadata);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(metadata, i);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) < 1) {
            return 1;
        }
        PyObject *key = PyTuple_GET_ITEM(item, 0);
        if (!PyUnicode_CheckExact(key)) {
            if (PyBytes_Check(key)) {
                continue; /* never equal to a str key, as in Python */
            }
            return 1;
        }
        if (PyUnicode_GET_LENGTH(key) != 11 && PyUnicode_GET_LENGTH(key) != 10) {
            continue;
        }
        int eq = PyUnicode_Compare(key, s_traceparent_key) == 0 || PyUnicode_Compare(key, s_tracestate_key) == 0;
        if (PyErr_Occurred()) {
            return -1;
        }
        if (eq) {
            return 1;
        }
    }
    return 0;
}

/* call_start(context, request) -> (span, token, context) | (None, None, context): _Call._start for a call
 * whose metadata the handler lookup kept, without a trace context, with a serialized request; anything
 * else goes to the slow path (the Python method), which does the same with everything else. */
static PyObject *call_start_call(CallStart *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 2 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "CallStart(context, request)");
        return NULL;
    }
    PyObject *context = args[0], *request = args[1];
    PyObject *metadata;
    if (PyContextVar_Get(self->tap, NULL, &metadata) < 0) {
        return NULL;
    }
    int slow = metadata == NULL || metadata == Py_None ||
               !(PyBytes_CheckExact(request) || Py_TYPE(request) == &PyMemoryView_Type);
    if (!slow) {
        slow = names_trace_context(metadata);
    }
    Py_XDECREF(metadata);
    if (slow) {
        return slow < 0 ? NULL : PyObject_Vectorcall(self->slow, args, 2, NULL);
    }
    PyObject *start_args[4] = {self->method, Py_None, self->kind, self->attributes};
    PyObject *span = starter_start((Starter *)self->starter, start_args, 4);
    if (span == NULL) {
        return NULL;
    }
    if (span == Py_None) {
        PyObject *out = PyTuple_Pack(3, Py_None, Py_None, context);
        Py_DECREF(span);
        return out;
    }
    PyObject *token = enter_current(NULL, span);
    if (token == NULL) {
        Py_DECREF(span);
        return NULL;
    }
    PyObject *out = PyTuple_Pack(3, span, token, context);
    Py_DECREF(span);
    Py_DECREF(token);
    return out;
}

static PyObject *call_start_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    return call_start_call((CallStart *)callable, args, nargsf, kwnames);
}

static PyObject *call_start_tp_call(PyObject *callable, PyObject *args, PyObject *kwds)
{
    if (kwds != NULL && PyDict_GET_SIZE(kwds)) {
        PyErr_SetString(PyExc_TypeError, "CallStart(context, request)");
        return NULL;
    }
    return call_start_call((CallStart *)callable, &PyTuple_GET_ITEM(args, 0), (size_t)PyTuple_GET_SIZE(args), NULL);
}

/* finish_ok(span, token): the end of a traced call that answered OK: leave the span's context, its
 * rpc.status_code "OK", end it (_Call._finish's lean path). */
static PyObject *finish_ok(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "finish_ok(span, token)");
        return NULL;
    }
    PyObject *span = args[0];
    PyObject *left = leave_current(NULL, args[1]);
    if (left == NULL) {
        return NULL;
    }
    Py_DECREF(left);
    if (!PyObject_TypeCheck(span, &SpanCoreType)) {
        PyErr_SetString(PyExc_TypeError, "finish_ok: a lean span");
        return NULL;
    }
    SpanCore *core = (SpanCore *)span;
    if (core->end_ns) {
        Py_RETURN_NONE;
    }
    if (core->attributes != NULL && PyDict_SetItem(core->attributes, s_status_key, s_ok) < 0) {
        return NULL;
    }
    return core_end(core, NULL, 0, NULL);
}

static PyTypeObject CallStartType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sidecar.telemetry._otlp_native.CallStart",
    .tp_basicsize = sizeof(CallStart),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "The RPC wrapper's start of a traced call, in one C call for the common case",
    .tp_new = call_start_new,
    .tp_dealloc = (destructor)call_start_dealloc,
    .tp_traverse = (traverseproc)call_start_traverse,
    .tp_clear = (inquiry)call_start_clear,
    .tp_call = call_start_tp_call,
    .tp_vectorcall_offset = offsetof(CallStart, vectorcall),
};

static PyObject *span_field(PyObject *module, PyObject *span)
{
    if (!configured) {
        PyErr_SetString(PyExc_RuntimeError, "_otlp_native.configure() was not called");
        return NULL;
    }
    Buf body;
    buf_init(&body);
    int r = encode_body(&body, span);
    if (r != 1) {
        buf_free(&body);
        if (r < 0) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    PyObject *out = field_of(&body);
    buf_free(&body);
    return out;
}

/* The ScopeSpans.spans (2) field holding an encoded Span message body. */
static PyObject *field_of(Buf *body)
{
    int head_len = 1 + varint_size((uint64_t)body->len);
    PyObject *out = PyBytes_FromStringAndSize(NULL, head_len + body->len);
    if (out != NULL) {
        unsigned char *p = (unsigned char *)PyBytes_AS_STRING(out);
        *p++ = 0x12;
        p += write_varint(p, (uint64_t)body->len);
        memcpy(p, body->data, (size_t)body->len);
    }
    return out;
}

static PyObject *configure(PyObject *module, PyObject *args)
{
    PyObject *kinds, *unset, *state;
    if (!PyArg_ParseTuple(args, "OOO", &kinds, &unset, &state)) {
        return NULL;
    }
    if (!PyTuple_Check(kinds) || PyTuple_GET_SIZE(kinds) != 5) {
        PyErr_SetString(PyExc_ValueError, "kinds: a tuple of the five SpanKind members in OTLP order");
        return NULL;
    }
    for (int i = 0; i < 5; i++) {
        PyObject *k = PyTuple_GET_ITEM(kinds, i);
        Py_INCREF(k);
        Py_XSETREF(kind_members[i], k);
    }
    Py_INCREF(unset);
    Py_XSETREF(unset_status, unset);
    Py_INCREF(state);
    Py_XSETREF(no_state, state);
    configured = 1;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS, "configure(kinds, unset_status, no_state): the API's constants"},
    {"span_field", span_field, METH_O, "span_field(span) -> the ScopeSpans.spans field, or None: encode in Python"},
    {"configure_context", configure_context, METH_VARARGS,
     "configure_context(api_context_var, Context, span_key, Span, INVALID_SPAN): the API's runtime context"},
    {"enter_current", enter_current, METH_O, "enter_current(span) -> token: span current in the API's context"},
    {"leave_current", leave_current, METH_O, "leave_current(token): undo enter_current (foreign tokens ignored)"},
    {"current_span", current_span, METH_NOARGS, "current_span() -> the API's current span, or INVALID_SPAN"},
    {"finish_ok", (PyCFunction)(void (*)(void))finish_ok, METH_FASTCALL,
     "finish_ok(span, token): leave the span's context, rpc.status_code OK, end the span"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_otlp_native", "OTLP encoding of common lean spans (see otlp.py)", -1, methods,
};

PyMODINIT_FUNC PyInit__otlp_native(void)
{
#define INTERN(var, text)                                                                                    \
    if ((var = PyUnicode_InternFromString(text)) == NULL) {                                                  \
        return NULL;                                                                                         \
    }
    INTERN(s_context, "_context");
    INTERN(s_parent, "parent");
    INTERN(s_name, "name");
    INTERN(s_kind, "kind");
    INTERN(s_attributes, "attributes");
    INTERN(s_start_ns, "start_ns");
    INTERN(s_end_ns, "end_ns");
    INTERN(s_events, "events");
    INTERN(s_links, "links");
    INTERN(s_status_code, "status_code");
    INTERN(s_link_context, "context");
    INTERN(s_sink, "sink");
    INTERN(s_shutdown, "shutdown");
    INTERN(s_queue_full, "queue_full");
    INTERN(s_traceparent_key, "traceparent");
    INTERN(s_tracestate_key, "tracestate");
    INTERN(s_status_key, "rpc.status_code");
    INTERN(s_ok, "OK");
#undef INTERN
    if ((empty_tuple = PyTuple_New(0)) == NULL || PyType_Ready(&SpanCoreType) < 0 || PyType_Ready(&StarterType) < 0 ||
        PyType_Ready(&SinkType) < 0 ||
        PyType_Ready(&CallStartType) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL) {
        return NULL;
    }
    Py_INCREF(&SpanCoreType);
    Py_INCREF(&StarterType);
    Py_INCREF(&SinkType);
    Py_INCREF(&CallStartType);
    if (PyModule_AddObject(module, "CallStart", (PyObject *)&CallStartType) < 0 ||
        PyModule_AddObject(module, "SpanSink", (PyObject *)&SinkType) < 0 ||
        PyModule_AddObject(module, "SpanCore", (PyObject *)&SpanCoreType) < 0 ||
        PyModule_AddObject(module, "RequestStarter", (PyObject *)&StarterType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
