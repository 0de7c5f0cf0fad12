"""The gRPC edge: the servicer, proto <-> model translation (wire), interceptors and access.

The only layer that touches the generated protobuf code and grpc's server types.
"""
