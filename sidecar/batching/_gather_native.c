/*
 * A batch's merge copy in C, with the GIL released once for the whole batch (sidecar/batching/gather.py).
 *
 * numpy.concatenate(parts, out=...) copies part by part and takes the GIL back after each part's copy.
 * On the merge's worker thread, behind an event loop that holds the GIL most of the time, each of those
 * takes waits up to the interpreter's switch interval (5 ms): a 72-image ResNet-50 merge measured 5 ms
 * alone and 378 ms beside a busy Python thread, and on a GPU machine it took 36 ms a batch, more than
 * the model. Here the parts' buffers are taken with the GIL, then all of them are copied without it.
 *
 *   gather(dest, parts) -> int   dest: a writable C-contiguous buffer; parts: a list or tuple of
 *                                C-contiguous buffers. Copies the parts back to back from dest's start
 *                                and returns the bytes written. ValueError where they do not fit in dest;
 *                                the exporter's error (numpy: ValueError) where a buffer is not
 *                                C-contiguous or dest is read-only.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static PyObject *gather(PyObject *self, PyObject *args)
{
    PyObject *dest_obj, *parts_obj;
    if (!PyArg_ParseTuple(args, "OO:gather", &dest_obj, &parts_obj)) return NULL;
    PyObject *parts = PySequence_Fast(parts_obj, "gather: parts must be a list or tuple of buffers");
    if (parts == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(parts);
    Py_buffer dest;
    if (PyObject_GetBuffer(dest_obj, &dest, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        Py_DECREF(parts);
        return NULL;
    }
    Py_buffer *views = PyMem_Calloc(n > 0 ? (size_t)n : 1, sizeof(Py_buffer));
    if (views == NULL) {
        PyBuffer_Release(&dest);
        Py_DECREF(parts);
        return PyErr_NoMemory();
    }
    Py_ssize_t taken = 0, total = 0;
    PyObject *result = NULL;
    for (; taken < n; taken++) {
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(parts, taken), &views[taken], PyBUF_C_CONTIGUOUS) < 0)
            goto done;
        total += views[taken].len;
    }
    if (total > dest.len) {
        PyErr_Format(PyExc_ValueError, "gather: the parts hold %zd bytes, the destination %zd", total, dest.len);
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    char *at = dest.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        memcpy(at, views[i].buf, (size_t)views[i].len);
        at += views[i].len;
    }
    Py_END_ALLOW_THREADS
    result = PyLong_FromSsize_t(total);
done:
    for (Py_ssize_t i = 0; i < taken; i++) PyBuffer_Release(&views[i]);
    PyMem_Free(views);
    PyBuffer_Release(&dest);
    Py_DECREF(parts);
    return result;
}

static PyMethodDef methods[] = {
    {"gather", gather, METH_VARARGS, "gather(dest, parts) -> int: copy the parts back to back into dest, without the GIL"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_gather_native", NULL, -1, methods};

PyMODINIT_FUNC PyInit__gather_native(void) { return PyModule_Create(&module); }
