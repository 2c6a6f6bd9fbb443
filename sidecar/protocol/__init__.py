"""Wire <-> domain: the codec, the gRPC servicers, health, reflection and the status mapping."""
