// The sidecar's native front end (``server.front = "native"``; ``sidecar.protocol.native_front``): gRPC's
// C++ server (libgrpc++, callback generic API) takes every call on the inference port on its own
// threads, reads its first request message and queues it with its method, deadline and metadata.
// Python takes everything queued at once (one wake-up through an eventfd for many calls) with the ids
// of calls cancelled meanwhile and the later messages of streams, answers each through the handlers the
// sidecar registers for that method, and hands the answers back, which a thread of the front's own
// gives to gRPC (Responder).
//
//   front = _native_front.Front(address, max_message_bytes)   # "host:port"; front.port(): the bound port
//   loop.add_reader(front.fileno(), drain)   # drain: calls, cancelled, messages = front.take()
//                                            # (a call's request: bytes, or a memoryview when big)
//   front.stage(id, answer_bytes) | front.end(id, grpc_code, message)   # a unary call, once: an
//       answer is sent at the next front.flush() (stage: True = the first since the last flush)
//   front.stream(id); front.write(id, bytes)...; front.end(id, grpc_code, message)   # a stream
//   front.shutdown(grace_s)   # from a thread other than the event loop's: unanswered calls are
//                             # cancelled after grace_s, and Python must still finish them
//
// A call's id (never reused) is Python's handle: a cancel that comes late, after the answer, names an
// id Python no longer holds.
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace {

class Front;

// One call: its first (for unary methods, only) request message is read, then the call waits in the
// front's queue, then in Python, until ``stage``/``end`` finishes it. Its id, never reused, is
// Python's handle: a cancel that comes late (after the answer) names an id Python no longer holds.
class Call : public grpc::ServerGenericBidiReactor {
 public:
  Call(Front* front, grpc::GenericCallbackServerContext* context) : front_(front), context_(context) {
    StartRead(&request_);
  }
  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override { delete this; }
  void Respond(const grpc::Slice& answer) {
    answer_ = grpc::ByteBuffer(&answer, 1);
    StartWriteAndFinish(&answer_, grpc::WriteOptions(), grpc::Status::OK);
  }
  // Streams: every message after the first is read as it comes (``Stream``), and answers are written
  // one at a time from a queue (``Write``), then the status once the queue is empty (``End``).
  void Stream() {
    streaming_ = true;
    StartRead(&request_);
  }
  void Write(std::string data) {
    bool start;
    {
      std::lock_guard<std::mutex> lock(write_mu_);
      writes_.push_back(std::move(data));
      start = !writing_;
      if (start) Next();
    }
    if (start) StartWrite(&answer_);  // (no lock held across gRPC's calls: a reaction may run inline)
  }
  void End(int code, const std::string& message) {
    bool finish;
    {
      std::lock_guard<std::mutex> lock(write_mu_);
      status_ = grpc::Status(static_cast<grpc::StatusCode>(code), message);
      ending_ = true;
      finish = !writing_ && !finished_;
      finished_ = finished_ || finish;
    }
    if (finish) Finish(status_);
  }
  double deadline_s() const {
    auto d = context_->deadline();
    if (d == std::chrono::system_clock::time_point::max()) return -1.0;
    return std::chrono::duration<double>(d.time_since_epoch()).count();
  }
  const std::string& method() const { return context_->method(); }
  const std::multimap<grpc::string_ref, grpc::string_ref>& metadata() const { return context_->client_metadata(); }

  grpc::ByteBuffer request_;
  // The first request message in one piece, made on gRPC's thread before the call is queued (so that
  // take() never joins slices on the event loop); handed to Python by take() (RequestObject).
  grpc::Slice body_;
  std::atomic<uint64_t> id_{0};  // set when queued (read by OnCancel on another thread)

 private:
  void Next() {  // write_mu_ held, writes_ not empty: the next answer into answer_, a write in flight
    writing_ = true;
    grpc::Slice slice(writes_.front());
    answer_ = grpc::ByteBuffer(&slice, 1);
    writes_.pop_front();
  }
  Front* front_;
  grpc::GenericCallbackServerContext* context_;
  grpc::ByteBuffer answer_;
  bool streaming_ = false;
  std::mutex write_mu_;
  std::deque<std::string> writes_;
  bool writing_ = false;
  bool ending_ = false;
  bool finished_ = false;
  grpc::Status status_;
};

// Answers go out from a thread of the front's own, in the order Python gave them. Handing an answer to
// gRPC (StartWriteAndFinish and the like) runs gRPC's write path on the calling thread: HTTP/2 framing
// and often the socket write itself, ~36 us a call on this project's 2-core machine. Done on the event
// loop, that was the largest part of its work per call; here the loop only copies the answer and
// queues it.
class Responder {
 public:
  Responder() : thread_([this] { Run(); }) {}
  ~Responder() {  // after the server's shutdown: every job queued is run first
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_one();
    thread_.join();
  }
  void Post(std::function<void()> job) {
    bool wake;
    {
      std::lock_guard<std::mutex> lock(mu_);
      wake = jobs_.empty();  // else the thread is awake, or will find it before it waits again
      jobs_.push_back(std::move(job));
    }
    if (wake) cv_.notify_one();
  }
  // The event loop's unary answers: staged (Python's GIL held, the only lock they need) and posted
  // together by Flush, which Python calls once per loop iteration. Posting each one woke this thread
  // once per answer (a futex call with the GIL held, and on few cores a switch to this thread): on 2
  // cores that was ~10 us of GIL-held time an answer at c=64, more than the answer's own work.
  // Returns true for the first job staged since the last Flush (the caller then arranges one).
  bool Stage(std::function<void()> job) {
    staged_.push_back(std::move(job));
    return staged_.size() == 1;
  }
  void Flush() {  // GIL held
    if (staged_.empty()) return;
    bool wake;
    {
      std::lock_guard<std::mutex> lock(mu_);
      wake = jobs_.empty();
      for (auto& job : staged_) jobs_.push_back(std::move(job));
    }
    staged_.clear();
    if (wake) cv_.notify_one();
  }

 private:
  void Run() {
    std::deque<std::function<void()>> batch;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return stop_ || !jobs_.empty(); });
        if (jobs_.empty()) return;
        batch.swap(jobs_);
      }
      for (auto& job : batch) job();
      batch.clear();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  std::vector<std::function<void()>> staged_;  // Stage/Flush: touched with the GIL held only
  bool stop_ = false;
  std::thread thread_;  // last: it starts once the rest exists
};

class Front final : public grpc::CallbackGenericService {
 public:
  Front() : fd_(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {}
  ~Front() override { close(fd_); }
  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* context) override {
    return new Call(this, context);
  }
  void Queue(Call* call) {
    bool wake;
    {
      std::lock_guard<std::mutex> lock(mu_);
      call->id_ = ++last_id_;
      live_[call->id_] = call;
      wake = queued_.empty() && cancelled_.empty() && messages_.empty();
      queued_.push_back(call);
    }
    if (wake) Wake();
  }
  void Cancelled(uint64_t id) {
    bool wake;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (live_.find(id) == live_.end()) return;  // answered already
      wake = queued_.empty() && cancelled_.empty() && messages_.empty();
      cancelled_.push_back(id);
    }
    if (wake) Wake();
  }
  // A stream's next message (``ended``: the client has sent its last).
  void Message(uint64_t id, std::string bytes, bool ended) {
    bool wake;
    {
      std::lock_guard<std::mutex> lock(mu_);
      wake = queued_.empty() && cancelled_.empty() && messages_.empty();
      messages_.push_back({id, std::move(bytes), ended});
    }
    if (wake) Wake();
  }
  struct Msg {
    uint64_t id;
    std::string bytes;
    bool ended;
  };
  void Take(std::vector<Call*>* calls, std::vector<uint64_t>* cancelled, std::vector<Msg>* messages) {
    uint64_t count;
    ssize_t n = read(fd_, &count, sizeof count);
    (void)n;
    std::lock_guard<std::mutex> lock(mu_);
    calls->swap(queued_);
    cancelled->swap(cancelled_);
    messages->swap(messages_);
  }
  Call* Live(uint64_t id) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = live_.find(id);
    return it == live_.end() ? nullptr : it->second;
  }
  // The call with this id, no longer live (it is being finished); nullptr if it was finished already.
  Call* Finishing(uint64_t id) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = live_.find(id);
    if (it == live_.end()) return nullptr;
    Call* call = it->second;
    live_.erase(it);
    return call;
  }
  int fd() const { return fd_; }
  Responder responder;            // destroyed after the server (members go in reverse order) ...
  std::unique_ptr<grpc::Server> server;  // ... whose shutdown may still need it

 private:
  void Wake() {
    uint64_t one = 1;
    ssize_t n = write(fd_, &one, sizeof one);
    (void)n;
  }
  int fd_;
  std::mutex mu_;
  uint64_t last_id_ = 0;
  std::unordered_map<uint64_t, Call*> live_;
  std::vector<Call*> queued_;
  std::vector<uint64_t> cancelled_;
  std::vector<Msg> messages_;
};

void Call::OnReadDone(bool ok) {
  if (streaming_) {  // a later message of a stream, or its end
    std::string bytes;
    if (ok) {
      grpc::Slice slice;
      if (!request_.TrySingleSlice(&slice).ok()) request_.DumpToSingleSlice(&slice);
      bytes.assign(reinterpret_cast<const char*>(slice.begin()), slice.size());
    }
    front_->Message(id_, std::move(bytes), !ok);
    if (ok) StartRead(&request_);
    return;
  }
  if (!ok) {  // no message: the client half-closed at once, or the call was cancelled
    Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "expected a request message"));
    return;
  }
  // A message of more than one slice (anything big) is joined here, on gRPC's thread, not in take().
  if (!request_.TrySingleSlice(&body_).ok()) request_.DumpToSingleSlice(&body_);
  request_.Clear();
  front_->Queue(this);
}

void Call::OnWriteDone(bool ok) {
  bool next = false, finish = false;
  {
    std::lock_guard<std::mutex> lock(write_mu_);
    if (!ok) writes_.clear();  // the stream is broken (cancelled): the rest is not sent
    if (!writes_.empty()) {
      Next();
      next = true;
    } else {
      writing_ = false;
      finish = ending_ && !finished_;
      finished_ = finished_ || finish;
    }
  }
  if (next) {
    StartWrite(&answer_);
  } else if (finish) {
    Finish(status_);
  }
}

void Call::OnCancel() {
  if (id_ != 0) front_->Cancelled(id_);
}

// -- Python type -------------------------------------------------------------------------------------
struct FrontObject {
  PyObject_HEAD Front* front;
  int port;
  bool shut;
};

int Front_init(FrontObject* self, PyObject* args, PyObject*) {
  const char* address;
  int max_message_bytes;
  if (!PyArg_ParseTuple(args, "si", &address, &max_message_bytes)) return -1;
  self->front = new Front();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &self->port);
  builder.SetMaxReceiveMessageSize(max_message_bytes);
  builder.SetMaxSendMessageSize(max_message_bytes);
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);  // a port clash must fail
  builder.RegisterCallbackGenericService(self->front);
  Py_BEGIN_ALLOW_THREADS self->front->server = builder.BuildAndStart();
  Py_END_ALLOW_THREADS if (!self->front->server || self->port == 0) {
    PyErr_Format(PyExc_OSError, "cannot bind the gRPC port %s", address);
    return -1;
  }
  return 0;
}

PyObject* Front_port(FrontObject* self, PyObject*) { return PyLong_FromLong(self->port); }

void Front_dealloc(FrontObject* self) {
  if (self->front) {
    self->front->responder.Flush();  // staged answers first: the server's shutdown waits for their calls
    if (self->front->server && !self->shut) {  // never shut down (an error at start): at once
      Py_BEGIN_ALLOW_THREADS self->front->server->Shutdown(std::chrono::system_clock::now());
      Py_END_ALLOW_THREADS
    }
    delete self->front;
  }
  Py_TYPE(self)->tp_free(reinterpret_cast<PyObject*>(self));
}

PyObject* Front_fileno(FrontObject* self, PyObject*) { return PyLong_FromLong(self->front->fd()); }

PyObject* Str(const grpc::string_ref& ref) { return PyUnicode_DecodeUTF8(ref.data(), ref.size(), "replace"); }

// A request's bytes for Python. A big one (kViewBytes or more: an image, 602 KB for ResNet-50) is not
// copied: Python gets a read-only memoryview of the gRPC slice itself (a Body keeps the slice), which the
// servicer reads in place (its tensors are views of it, as a relayed request's are of shared memory) and
// which is freed when nothing refers to it any more. Copying it here instead cost the event loop, with the
// GIL held, a pass over fresh memory per request (~470 us for 602 KB on this project's 2-core machine,
// page faults included), during which no other thread (a batch's merge, the engine) could take the GIL.
// A small one is copied into bytes (cheaper to read from Python than a view). ``body`` is left empty.
constexpr size_t kViewBytes = 64 * 1024;

struct BodyObject {
  PyObject_HEAD grpc::Slice* slice;
};

int Body_getbuffer(BodyObject* self, Py_buffer* view, int flags) {
  return PyBuffer_FillInfo(view, reinterpret_cast<PyObject*>(self), const_cast<uint8_t*>(self->slice->begin()),
                           static_cast<Py_ssize_t>(self->slice->size()), 1, flags);
}

void Body_dealloc(BodyObject* self) {
  delete self->slice;
  Py_TYPE(self)->tp_free(reinterpret_cast<PyObject*>(self));
}

PyBufferProcs Body_buffer = {reinterpret_cast<getbufferproc>(Body_getbuffer), nullptr};
PyTypeObject BodyType = {PyVarObject_HEAD_INIT(nullptr, 0)};

PyObject* RequestObject(grpc::Slice* body) {
  PyObject* out;
  if (body->size() < kViewBytes) {
    out = PyBytes_FromStringAndSize(reinterpret_cast<const char*>(body->begin()), body->size());
  } else {
    BodyObject* owner = PyObject_New(BodyObject, &BodyType);
    if (!owner) return nullptr;
    owner->slice = new grpc::Slice(*body);  // a reference, not a copy
    out = PyMemoryView_FromObject(reinterpret_cast<PyObject*>(owner));
    Py_DECREF(owner);  // the view holds it
  }
  *body = grpc::Slice();
  return out;
}

PyObject* Front_take(FrontObject* self, PyObject*) {
  std::vector<Call*> calls;
  std::vector<uint64_t> cancelled;
  std::vector<Front::Msg> messages;
  self->front->Take(&calls, &cancelled, &messages);
  PyObject* list = PyList_New(static_cast<Py_ssize_t>(calls.size()));
  if (!list) return nullptr;
  for (size_t i = 0; i < calls.size(); ++i) {
    Call* call = calls[i];
    PyObject* bytes = RequestObject(&call->body_);
    const auto& md = call->metadata();
    PyObject* metadata = PyTuple_New(static_cast<Py_ssize_t>(md.size()));
    Py_ssize_t k = 0;
    for (const auto& entry : md) {
      PyObject* key = Str(entry.first);
      // binary ("-bin") values stay bytes, as grpc.aio gives them
      PyObject* value = entry.first.ends_with("-bin")
                            ? PyBytes_FromStringAndSize(entry.second.data(), entry.second.size())
                            : Str(entry.second);
      PyTuple_SET_ITEM(metadata, k++, Py_BuildValue("(NN)", key, value));
    }
    PyObject* item = Py_BuildValue("(KNNdN)", static_cast<unsigned long long>(call->id_),
                                   PyUnicode_FromStringAndSize(call->method().data(), call->method().size()), bytes,
                                   call->deadline_s(), metadata);
    if (!item) {  // out of memory: these calls stay unanswered until their clients give up
      Py_DECREF(list);
      return nullptr;
    }
    PyList_SET_ITEM(list, static_cast<Py_ssize_t>(i), item);
  }
  PyObject* gone = PyList_New(static_cast<Py_ssize_t>(cancelled.size()));
  for (size_t i = 0; i < cancelled.size(); ++i)
    PyList_SET_ITEM(gone, static_cast<Py_ssize_t>(i), PyLong_FromUnsignedLongLong(cancelled[i]));
  PyObject* msgs = PyList_New(static_cast<Py_ssize_t>(messages.size()));
  for (size_t i = 0; i < messages.size(); ++i) {
    const Front::Msg& m = messages[i];
    PyObject* body = m.ended ? Py_NewRef(Py_None) : PyBytes_FromStringAndSize(m.bytes.data(), m.bytes.size());
    PyList_SET_ITEM(msgs, static_cast<Py_ssize_t>(i),
                    Py_BuildValue("(KN)", static_cast<unsigned long long>(m.id), body));
  }
  return Py_BuildValue("(NNN)", list, gone, msgs);
}

PyObject* Front_stream(FrontObject* self, PyObject* args) {
  unsigned long long id;
  if (!PyArg_ParseTuple(args, "K", &id)) return nullptr;
  Call* call = self->front->Live(id);
  if (call) call->Stream();
  return PyBool_FromLong(call != nullptr);
}

// A stream's next answer for call ``id`` (bytes), copied now (the buffer is Python's) and sent from the
// responder's thread after those before it.
PyObject* Front_write(FrontObject* self, PyObject* args) {
  unsigned long long id;
  Py_buffer view;
  if (!PyArg_ParseTuple(args, "Ky*", &id, &view)) return nullptr;
  Call* call = self->front->Live(id);
  if (call) {
    self->front->responder.Post(
        [call, answer = std::string(static_cast<const char*>(view.buf), static_cast<size_t>(view.len))]() mutable {
          call->Write(std::move(answer));
        });
  }
  PyBuffer_Release(&view);
  return PyBool_FromLong(call != nullptr);
}

// A unary call's answer with status OK, staged for the next ``flush`` (Responder::Stage): True when it
// is the first staged since the last flush, so that the caller arranges one (loop.call_soon(flush)).
PyObject* Front_stage(FrontObject* self, PyObject* args) {
  unsigned long long id;
  Py_buffer view;
  if (!PyArg_ParseTuple(args, "Ky*", &id, &view)) return nullptr;
  Call* call = self->front->Finishing(id);
  bool first = false;
  if (call) {
    grpc::Slice answer(view.buf, static_cast<size_t>(view.len));  // copied now: the buffer is Python's
    first = self->front->responder.Stage([call, answer] { call->Respond(answer); });
  }
  PyBuffer_Release(&view);
  return PyBool_FromLong(first);
}

PyObject* Front_flush(FrontObject* self, PyObject*) {
  self->front->responder.Flush();
  Py_RETURN_NONE;
}

PyObject* Front_end(FrontObject* self, PyObject* args) {
  unsigned long long id;
  int code;
  const char* message;
  if (!PyArg_ParseTuple(args, "Kis", &id, &code, &message)) return nullptr;
  Call* call = self->front->Finishing(id);
  if (call) self->front->responder.Post([call, code, text = std::string(message)] { call->End(code, text); });
  return PyBool_FromLong(call != nullptr);
}

PyObject* Front_shutdown(FrontObject* self, PyObject* args) {
  double grace_s;
  if (!PyArg_ParseTuple(args, "d", &grace_s)) return nullptr;
  if (self->front && self->front->server) {  // calls still unanswered after grace_s are cancelled
    self->front->responder.Flush();  // (answers staged later are flushed by the loop, which goes on)
    auto deadline = std::chrono::system_clock::now() +
                    std::chrono::duration_cast<std::chrono::system_clock::duration>(std::chrono::duration<double>(grace_s));
    self->shut = true;
    Py_BEGIN_ALLOW_THREADS self->front->server->Shutdown(deadline);
    self->front->server->Wait();
    Py_END_ALLOW_THREADS
  }
  Py_RETURN_NONE;
}

PyMethodDef Front_methods[] = {
    {"shutdown", reinterpret_cast<PyCFunction>(Front_shutdown), METH_VARARGS, "stop; cancel what is left after grace_s"},
    {"port", reinterpret_cast<PyCFunction>(Front_port), METH_NOARGS, "the port bound"},
    {"fileno", reinterpret_cast<PyCFunction>(Front_fileno), METH_NOARGS, "the eventfd to wait on"},
    {"take", reinterpret_cast<PyCFunction>(Front_take), METH_NOARGS,
     "([(id, method, request (bytes; 64 KiB or more: a read-only memoryview), deadline s or -1, metadata)], "
     "[cancelled ids], [(stream id, message or None)])"},
    {"stage", reinterpret_cast<PyCFunction>(Front_stage), METH_VARARGS,
     "answer unary call id (bytes) at the next flush(); True: the first staged since the last flush"},
    {"flush", reinterpret_cast<PyCFunction>(Front_flush), METH_NOARGS, "send what stage() staged, in order"},
    {"stream", reinterpret_cast<PyCFunction>(Front_stream), METH_VARARGS, "read call id's later messages too"},
    {"write", reinterpret_cast<PyCFunction>(Front_write), METH_VARARGS, "queue one answer of stream id (bytes)"},
    {"end", reinterpret_cast<PyCFunction>(Front_end), METH_VARARGS,
     "finish call id with (code, message) once its answers are written (a failed unary call: at once)"},
    {nullptr, nullptr, 0, nullptr}};

PyTypeObject FrontType = {PyVarObject_HEAD_INIT(nullptr, 0)};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native_front", "the sidecar's native gRPC front end", -1, nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__native_front(void) {
  FrontType.tp_name = "sidecar.protocol._native_front.Front";
  FrontType.tp_basicsize = sizeof(FrontObject);
  FrontType.tp_flags = Py_TPFLAGS_DEFAULT;
  FrontType.tp_new = PyType_GenericNew;
  FrontType.tp_init = reinterpret_cast<initproc>(Front_init);
  FrontType.tp_dealloc = reinterpret_cast<destructor>(Front_dealloc);
  FrontType.tp_methods = Front_methods;
  if (PyType_Ready(&FrontType) < 0) return nullptr;
  BodyType.tp_name = "sidecar.protocol._native_front.Body";
  BodyType.tp_basicsize = sizeof(BodyObject);
  BodyType.tp_flags = Py_TPFLAGS_DEFAULT;
  BodyType.tp_dealloc = reinterpret_cast<destructor>(Body_dealloc);
  BodyType.tp_as_buffer = &Body_buffer;
  if (PyType_Ready(&BodyType) < 0) return nullptr;
  PyObject* m = PyModule_Create(&module);
  if (!m) return nullptr;
  Py_INCREF(&FrontType);
  PyModule_AddObject(m, "Front", reinterpret_cast<PyObject*>(&FrontType));
  return m;
}
