// Package interop holds go-spiffe's side of herald's Go interop tests: real go-spiffe v2 clients
// (X509Source, JWTSource, spiffetls, spiffegrpc, watchers) against the Workload API socket in
// SPIFFE_ENDPOINT_SOCKET. tests/interop/test_gospiffe.py starts the agent, registers this test
// binary by its path and runs one test at a time, telling it what to expect in HERALD_INTEROP_*
// variables; run by hand without them, every test skips.
package interop
