// A prototype native front end for the sidecar (a benchmark, not the served path): gRPC's C++ server
// (libgrpc++, callback generic API) takes ModelInfer calls on its own threads and queues their bytes;
// Python takes everything queued at once (one wake-up through an eventfd for many calls), answers each
// through the sidecar's own servicer, and hands the answer back (``respond``/``fail``), which gRPC's
// threads send. ServerReady/ModelReady are answered "ready" here; every other method UNIMPLEMENTED.
//
//   front = _native_front.Front(port)      # listening on 127.0.0.1:port
//   loop.add_reader(front.fileno(), drain) # drain: for handle, request in front.take(): ...
//   front.respond(handle, answer_bytes) | front.fail(handle, grpc_code, message)   # exactly once each
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <mutex>
#include <string>
#include <vector>

namespace {

class Front;

class Call : public grpc::ServerGenericBidiReactor {
 public:
  Call(Front* front, grpc::GenericCallbackServerContext* context) : front_(front), context_(context) {
    StartRead(&request_);
  }
  void OnReadDone(bool ok) override;
  void OnDone() override { delete this; }
  void Respond(const char* data, size_t size) {
    grpc::Slice slice(data, size);
    answer_ = grpc::ByteBuffer(&slice, 1);
    StartWriteAndFinish(&answer_, grpc::WriteOptions(), grpc::Status::OK);
  }
  void Fail(int code, const std::string& message) {
    Finish(grpc::Status(static_cast<grpc::StatusCode>(code), message));
  }
  grpc::ByteBuffer request_;
  double deadline_s() const {
    auto d = context_->deadline();
    if (d == std::chrono::system_clock::time_point::max()) return -1.0;
    return std::chrono::duration<double>(d.time_since_epoch()).count();
  }

 private:
  Front* front_;
  grpc::GenericCallbackServerContext* context_;
  grpc::ByteBuffer answer_;
};

class Ready : public grpc::ServerGenericBidiReactor {
 public:
  Ready() { StartRead(&request_); }
  void OnReadDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status::OK);
      return;
    }
    static const char kReady[] = "\x08\x01";
    grpc::Slice slice(kReady, 2);
    answer_ = grpc::ByteBuffer(&slice, 1);
    StartWriteAndFinish(&answer_, grpc::WriteOptions(), grpc::Status::OK);
  }
  void OnDone() override { delete this; }

 private:
  grpc::ByteBuffer request_, answer_;
};

class Unimplemented : public grpc::ServerGenericBidiReactor {
 public:
  Unimplemented() { Finish(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "not served by the prototype")); }
  void OnDone() override { delete this; }
};

class Front final : public grpc::CallbackGenericService {
 public:
  Front() : fd_(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {}
  ~Front() override { close(fd_); }
  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* context) override {
    const std::string& method = context->method();
    if (method == "/inference.GRPCInferenceService/ModelInfer") return new Call(this, context);
    if (method == "/inference.GRPCInferenceService/ServerReady" ||
        method == "/inference.GRPCInferenceService/ModelReady")
      return new Ready();
    return new Unimplemented();
  }
  void Queue(Call* call) {
    bool first;
    {
      std::lock_guard<std::mutex> lock(mu_);
      first = queued_.empty();
      queued_.push_back(call);
    }
    if (first) {
      uint64_t one = 1;
      ssize_t n = write(fd_, &one, sizeof one);
      (void)n;
    }
  }
  std::vector<Call*> Take() {
    uint64_t count;
    ssize_t n = read(fd_, &count, sizeof count);
    (void)n;
    std::vector<Call*> out;
    std::lock_guard<std::mutex> lock(mu_);
    out.swap(queued_);
    return out;
  }
  int fd() const { return fd_; }
  std::unique_ptr<grpc::Server> server;

 private:
  int fd_;
  std::mutex mu_;
  std::vector<Call*> queued_;
};

void Call::OnReadDone(bool ok) {
  if (!ok) {
    Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "expected one request message"));
    return;
  }
  front_->Queue(this);
}

// -- Python type -------------------------------------------------------------------------------------
struct FrontObject {
  PyObject_HEAD Front* front;
};

int Front_init(FrontObject* self, PyObject* args, PyObject*) {
  int port;
  if (!PyArg_ParseTuple(args, "i", &port)) return -1;
  self->front = new Front();
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:" + std::to_string(port), grpc::InsecureServerCredentials());
  builder.RegisterCallbackGenericService(self->front);
  Py_BEGIN_ALLOW_THREADS self->front->server = builder.BuildAndStart();
  Py_END_ALLOW_THREADS if (!self->front->server) {
    PyErr_Format(PyExc_OSError, "cannot listen on 127.0.0.1:%d", port);
    return -1;
  }
  return 0;
}

void Front_dealloc(FrontObject* self) {
  if (self->front) {
    if (self->front->server) {
      Py_BEGIN_ALLOW_THREADS self->front->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
      Py_END_ALLOW_THREADS
    }
    delete self->front;
  }
  Py_TYPE(self)->tp_free(reinterpret_cast<PyObject*>(self));
}

PyObject* Front_fileno(FrontObject* self, PyObject*) { return PyLong_FromLong(self->front->fd()); }

PyObject* Front_take(FrontObject* self, PyObject*) {
  std::vector<Call*> calls = self->front->Take();
  PyObject* list = PyList_New(static_cast<Py_ssize_t>(calls.size()));
  if (!list) return nullptr;
  for (size_t i = 0; i < calls.size(); ++i) {
    Call* call = calls[i];
    grpc::Slice slice;
    PyObject* bytes;
    if (call->request_.TrySingleSlice(&slice).ok()) {
      bytes = PyBytes_FromStringAndSize(reinterpret_cast<const char*>(slice.begin()), slice.size());
    } else {
      call->request_.DumpToSingleSlice(&slice);
      bytes = PyBytes_FromStringAndSize(reinterpret_cast<const char*>(slice.begin()), slice.size());
    }
    PyObject* item = Py_BuildValue("(KNd)", static_cast<unsigned long long>(reinterpret_cast<uintptr_t>(call)), bytes,
                                   call->deadline_s());
    PyList_SET_ITEM(list, static_cast<Py_ssize_t>(i), item);
  }
  return list;
}

PyObject* Front_respond(FrontObject*, PyObject* args) {
  unsigned long long handle;
  Py_buffer view;
  if (!PyArg_ParseTuple(args, "Ky*", &handle, &view)) return nullptr;
  Call* call = reinterpret_cast<Call*>(static_cast<uintptr_t>(handle));
  call->Respond(static_cast<const char*>(view.buf), static_cast<size_t>(view.len));
  PyBuffer_Release(&view);
  Py_RETURN_NONE;
}

PyObject* Front_fail(FrontObject*, PyObject* args) {
  unsigned long long handle;
  int code;
  const char* message;
  if (!PyArg_ParseTuple(args, "Kis", &handle, &code, &message)) return nullptr;
  reinterpret_cast<Call*>(static_cast<uintptr_t>(handle))->Fail(code, message);
  Py_RETURN_NONE;
}

PyObject* Front_shutdown(FrontObject* self, PyObject*) {
  if (self->front && self->front->server) {  // calls still unanswered after a second are cancelled
    Py_BEGIN_ALLOW_THREADS self->front->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
    Py_END_ALLOW_THREADS
  }
  Py_RETURN_NONE;
}

PyMethodDef Front_methods[] = {
    {"shutdown", reinterpret_cast<PyCFunction>(Front_shutdown), METH_NOARGS, "stop taking calls"},
    {"fileno", reinterpret_cast<PyCFunction>(Front_fileno), METH_NOARGS, "the eventfd to wait on"},
    {"take", reinterpret_cast<PyCFunction>(Front_take), METH_NOARGS, "[(handle, request bytes, deadline s)]"},
    {"respond", reinterpret_cast<PyCFunction>(Front_respond), METH_VARARGS, "answer a call (bytes)"},
    {"fail", reinterpret_cast<PyCFunction>(Front_fail), METH_VARARGS, "fail a call (code, message)"},
    {nullptr, nullptr, 0, nullptr}};

PyTypeObject FrontType = {PyVarObject_HEAD_INIT(nullptr, 0)};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native_front", "prototype native front end", -1, nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__native_front(void) {
  FrontType.tp_name = "_native_front.Front";
  FrontType.tp_basicsize = sizeof(FrontObject);
  FrontType.tp_flags = Py_TPFLAGS_DEFAULT;
  FrontType.tp_new = PyType_GenericNew;
  FrontType.tp_init = reinterpret_cast<initproc>(Front_init);
  FrontType.tp_dealloc = reinterpret_cast<destructor>(Front_dealloc);
  FrontType.tp_methods = Front_methods;
  if (PyType_Ready(&FrontType) < 0) return nullptr;
  PyObject* m = PyModule_Create(&module);
  if (!m) return nullptr;
  Py_INCREF(&FrontType);
  PyModule_AddObject(m, "Front", reinterpret_cast<PyObject*>(&FrontType));
  return m;
}
