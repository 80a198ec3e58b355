package interop

import (
	"context"
	"net"
	"sync"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	"google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// TestSpiffeGRPCCredentials: a gRPC call over spiffegrpc mTLS credentials made from the agent's
// SVIDs, the server reading the caller's SPIFFE ID from the call; a client that expects another
// ID refuses the server.
func TestSpiffeGRPCCredentials(t *testing.T) {
	me := expectedID(t, "GO_ID")
	ctx := bounded(t)
	source, _ := x509Source(t, ctx)

	var mu sync.Mutex
	var callers []spiffeid.ID
	remember := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
		id, ok := grpccredentials.PeerIDFromContext(ctx)
		if !ok {
			return nil, status.Error(codes.Unauthenticated, "no SPIFFE ID on the call")
		}
		mu.Lock()
		callers = append(callers, id)
		mu.Unlock()
		return next(ctx, req)
	}
	server := grpc.NewServer(
		grpc.Creds(grpccredentials.MTLSServerCredentials(source, source, tlsconfig.AuthorizeID(me))),
		grpc.UnaryInterceptor(remember),
	)
	grpc_health_v1.RegisterHealthServer(server, health.NewServer())
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = server.Serve(listener) }()
	defer server.Stop()

	call := func(authorizer tlsconfig.Authorizer) error {
		conn, err := grpc.NewClient(listener.Addr().String(), grpc.WithTransportCredentials(
			grpccredentials.MTLSClientCredentials(source, source, authorizer)))
		if err != nil {
			return err
		}
		defer conn.Close()
		_, err = grpc_health_v1.NewHealthClient(conn).Check(ctx, &grpc_health_v1.HealthCheckRequest{})
		return err
	}
	if err := call(tlsconfig.AuthorizeID(me)); err != nil {
		t.Fatalf("the call over spiffegrpc credentials failed: %v", err)
	}
	other := spiffeid.RequireFromPath(me.TrustDomain(), "/someone-else")
	if err := call(tlsconfig.AuthorizeID(other)); status.Code(err) != codes.Unavailable {
		t.Errorf("a client expecting %s reached the server: %v", other, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(callers) != 1 || callers[0] != me {
		t.Errorf("the server saw callers %v, want exactly [%s]", callers, me)
	}
}
