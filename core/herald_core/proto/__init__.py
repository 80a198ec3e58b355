"""Generated protobuf and gRPC modules; do not edit, run scripts/gen_proto.py.

Every module below this package is produced by scripts/gen_proto.py from the .proto
files in proto/ at the repository root.

The SPIFFE Workload API messages (herald_core.proto.spiffe.workload) have no proto
package, exactly like the SPIFFE specification, so their fully-qualified names
(``X509SVIDRequest``, ...) are global in the default descriptor pool. py-spiffe ships
its own copy of the same messages (spiffe._proto.workload_pb2); the two must never be
imported in the same process, or the descriptor pool rejects the duplicate symbols.
"""
