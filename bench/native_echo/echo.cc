// The native ceiling for bench.run_batching: a bare C++ gRPC server (libgrpc++, callback generic API)
// that answers every ModelInfer call with the bytes of a file (the model's real response), as
// bench/echo_server.py does on grpc.aio. ServerReady and ModelReady answer "ready". No parsing, no
// model: what one request costs gRPC's C++ stack itself, against what it costs grpc.aio's.
//
//   bench/native_echo/build.sh                      # needs g++, pkg-config and libgrpc++-dev
//   bench/native_echo/build/echo PORT RESPONSE_FILE  # prints "ready" once it listens on 127.0.0.1:PORT
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>

#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

namespace {

grpc::ByteBuffer Bytes(const std::string& data) {
  grpc::Slice slice(data);
  return grpc::ByteBuffer(&slice, 1);
}

class Echo final : public grpc::CallbackGenericService {
 public:
  explicit Echo(const std::string& response) : response_(Bytes(response)), ready_(Bytes(std::string("\x08\x01", 2))) {}

  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* context) override {
    const std::string& method = context->method();
    bool probe = method == "/inference.GRPCInferenceService/ServerReady" ||
                 method == "/inference.GRPCInferenceService/ModelReady";
    return new Unary(probe ? ready_ : response_);
  }

 private:
  // One request in, one answer out, then the status.
  class Unary : public grpc::ServerGenericBidiReactor {
   public:
    explicit Unary(const grpc::ByteBuffer& answer) : answer_(answer) { StartRead(&request_); }
    void OnReadDone(bool ok) override {
      if (!ok) {
        Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "expected one request message"));
        return;
      }
      StartWriteAndFinish(&answer_, grpc::WriteOptions(), grpc::Status::OK);
    }
    void OnDone() override { delete this; }

   private:
    grpc::ByteBuffer request_;
    grpc::ByteBuffer answer_;
  };

  grpc::ByteBuffer response_;
  grpc::ByteBuffer ready_;
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: echo PORT RESPONSE_FILE" << std::endl;
    return 2;
  }
  std::ifstream file(argv[2], std::ios::binary);
  if (!file) {
    std::cerr << "cannot read " << argv[2] << std::endl;
    return 2;
  }
  std::stringstream content;
  content << file.rdbuf();
  Echo service(content.str());
  grpc::ServerBuilder builder;
  builder.AddListeningPort(std::string("127.0.0.1:") + argv[1], grpc::InsecureServerCredentials());
  builder.RegisterCallbackGenericService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server) {
    std::cerr << "cannot listen on 127.0.0.1:" << argv[1] << std::endl;
    return 1;
  }
  std::cout << "ready" << std::endl;
  server->Wait();
  return 0;
}
