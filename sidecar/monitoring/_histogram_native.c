/*
 * Thin CPython binding of the histogram kernel (native/histogram.c, whose one body native/histogram_body.h
 * is compiled per value type and instruction set). It trusts its caller,
 * sidecar/monitoring/histogram.py, which validates shapes, dtypes, contiguity and edges; the only
 * checks here are that each buffer holds exactly the bytes its shape says, so a wrong call from Python
 * can never read or write outside an array. The kernel runs with the GIL released (batches of at least
 * RELEASE_GIL_MIN_VALUES values).
 *
 *   update_f32(counts, values, edges, n, f, k) / update_f64(...)  accumulate one batch
 *   first_invalid_edge(edges, k, f) -> int                       -1 when edges are finite and sorted
 *   VARIANT, VARIANTS                                            active / supported instruction sets
 *   set_variant(name) -> previous name                           for benchmarks comparing variants
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "histogram.h"

static int active_variant = HK_VARIANT_GENERIC;

/* Below this many values the kernel takes well under a microsecond: keep the GIL rather than pay for
 * releasing and re-taking it. */
#define RELEASE_GIL_MIN_VALUES 16384

static int get_sizes(PyObject *const *args, Py_ssize_t *n, Py_ssize_t *f, Py_ssize_t *k)
{
    *n = PyLong_AsSsize_t(args[0]);
    *f = PyLong_AsSsize_t(args[1]);
    *k = PyLong_AsSsize_t(args[2]);
    if ((*n == -1 || *f == -1 || *k == -1) && PyErr_Occurred()) {
        return -1;
    }
    if (*n < 0 || *f < 0 || *k < 2) {
        PyErr_SetString(PyExc_ValueError, "histogram kernel: invalid sizes");
        return -1;
    }
    return 0;
}

static int get_buffer(PyObject *obj, Py_buffer *view, int flags, Py_ssize_t expected_bytes, const char *name)
{
    if (PyObject_GetBuffer(obj, view, flags) != 0) {
        return -1;
    }
    if (view->len != expected_bytes) {
        PyErr_Format(PyExc_ValueError, "histogram kernel: %s holds %zd bytes, expected %zd", name, view->len,
                     expected_bytes);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* The one kernel call of update(), for either value type; the caller decides whether the GIL is held. */
static inline int run_kernel(int is_f32, int variant, const Py_buffer *counts, const Py_buffer *values,
                             const Py_buffer *edges, Py_ssize_t n, Py_ssize_t f, Py_ssize_t k)
{
    return is_f32 ? hk_update_f32_ex(variant, HK_PATH_AUTO, counts->buf, values->buf, edges->buf, n, f, k)
                  : hk_update_f64_ex(variant, HK_PATH_AUTO, counts->buf, values->buf, edges->buf, n, f, k);
}

static PyObject *update(PyObject *const *args, Py_ssize_t nargs, int is_f32)
{
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "update takes (counts, values, edges, n, f, k)");
        return NULL;
    }
    Py_ssize_t n, f, k;
    if (get_sizes(args + 3, &n, &f, &k) != 0) {
        return NULL;
    }
    Py_buffer counts, values, edges;
    const Py_ssize_t itemsize = is_f32 ? 4 : 8;
    if (get_buffer(args[0], &counts, PyBUF_WRITABLE, f * (k + 3) * 8, "counts") != 0) {
        return NULL;
    }
    if (get_buffer(args[1], &values, PyBUF_SIMPLE, n * f * itemsize, "values") != 0) {
        PyBuffer_Release(&counts);
        return NULL;
    }
    if (get_buffer(args[2], &edges, PyBUF_SIMPLE, k * f * 8, "edges") != 0) {
        PyBuffer_Release(&counts);
        PyBuffer_Release(&values);
        return NULL;
    }
    int rc;
    const int variant = active_variant;
    if (n * f >= RELEASE_GIL_MIN_VALUES) {
        Py_BEGIN_ALLOW_THREADS;
        rc = run_kernel(is_f32, variant, &counts, &values, &edges, n, f, k);
        Py_END_ALLOW_THREADS;
    } else {
        rc = run_kernel(is_f32, variant, &counts, &values, &edges, n, f, k);
    }
    PyBuffer_Release(&counts);
    PyBuffer_Release(&values);
    PyBuffer_Release(&edges);
    if (rc == HK_ENOMEM) {
        return PyErr_NoMemory();
    }
    if (rc != HK_OK) {
        PyErr_Format(PyExc_RuntimeError, "histogram kernel failed with status %d", rc);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *update_f32(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    return update(args, nargs, 1);
}

static PyObject *update_f64(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    return update(args, nargs, 0);
}

static PyObject *first_invalid_edge(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "first_invalid_edge takes (edges, k, f)");
        return NULL;
    }
    const Py_ssize_t k = PyLong_AsSsize_t(args[1]);
    const Py_ssize_t f = PyLong_AsSsize_t(args[2]);
    if ((k == -1 || f == -1) && PyErr_Occurred()) {
        return NULL;
    }
    if (k < 0 || f < 0) {
        PyErr_SetString(PyExc_ValueError, "histogram kernel: invalid sizes");
        return NULL;
    }
    Py_buffer edges;
    if (get_buffer(args[0], &edges, PyBUF_SIMPLE, k * f * 8, "edges") != 0) {
        return NULL;
    }
    const int64_t bad = hk_first_invalid_edge(edges.buf, (size_t)k, (size_t)f);
    PyBuffer_Release(&edges);
    return PyLong_FromLongLong((long long)bad);
}

static PyObject *set_variant(PyObject *self, PyObject *name)
{
    const char *wanted = PyUnicode_AsUTF8(name);
    if (wanted == NULL) {
        return NULL;
    }
    for (int v = 0; v < HK_VARIANT_COUNT; ++v) {
        if (strcmp(wanted, hk_variant_name(v)) == 0) {
            if (!hk_variant_supported(v)) {
                PyErr_Format(PyExc_ValueError, "histogram kernel variant %s is not supported on this CPU", wanted);
                return NULL;
            }
            const int previous = active_variant;
            active_variant = v;
            if (PyObject_SetAttrString(self, "VARIANT", name) != 0) { /* self: the module */
                active_variant = previous;
                return NULL;
            }
            return PyUnicode_FromString(hk_variant_name(previous));
        }
    }
    PyErr_Format(PyExc_ValueError, "unknown histogram kernel variant %s", wanted);
    return NULL;
}

static PyMethodDef methods[] = {
    {"update_f32", (PyCFunction)(void (*)(void))update_f32, METH_FASTCALL,
     "update_f32(counts, values, edges, n, f, k): accumulate a float32 batch (validated by the caller)."},
    {"update_f64", (PyCFunction)(void (*)(void))update_f64, METH_FASTCALL,
     "update_f64(counts, values, edges, n, f, k): accumulate a float64 batch (validated by the caller)."},
    {"first_invalid_edge", (PyCFunction)(void (*)(void))first_invalid_edge, METH_FASTCALL,
     "first_invalid_edge(edges, k, f) -> flat index of the first non-finite or unsorted edge, or -1."},
    {"set_variant", set_variant, METH_O, "set_variant(name) -> previous: choose the instruction set (benchmarks)."},
    {NULL, NULL, 0, NULL},
};

static int exec_module(PyObject *module)
{
    active_variant = hk_best_variant();
    if (PyModule_AddStringConstant(module, "VARIANT", hk_variant_name(active_variant)) != 0) {
        return -1;
    }
    PyObject *supported = PyList_New(0);
    if (supported == NULL) {
        return -1;
    }
    for (int v = 0; v < HK_VARIANT_COUNT; ++v) {
        if (!hk_variant_supported(v)) {
            continue;
        }
        PyObject *name = PyUnicode_FromString(hk_variant_name(v));
        if (name == NULL || PyList_Append(supported, name) != 0) {
            Py_XDECREF(name);
            Py_DECREF(supported);
            return -1;
        }
        Py_DECREF(name);
    }
    PyObject *tuple = PyList_AsTuple(supported);
    Py_DECREF(supported);
    if (tuple == NULL) {
        return -1;
    }
    if (PyModule_AddObject(module, "VARIANTS", tuple) != 0) {
        Py_DECREF(tuple);
        return -1;
    }
    return 0;
}

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, exec_module},
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "sidecar.monitoring._histogram_native",
    .m_doc = "Histogram kernel binding (see sidecar.monitoring.histogram).",
    .m_size = 0,
    .m_methods = methods,
    .m_slots = slots,
};

PyMODINIT_FUNC PyInit__histogram_native(void)
{
    return PyModuleDef_Init(&module_def);
}
