package interop

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	grpc_reflection_v1alpha "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/grpc/status"
)

// TestObserve records what go-spiffe, and a raw client of the same proto, see from the agent:
// SVID and bundle shapes, JWT header and claims, and the status of every error path. It writes
// the observations as JSON to HERALD_INTEROP_OBSERVE; tests/interop/test_conformance.py runs it
// against herald and against SPIRE and compares. HERALD_INTEROP_OBSERVE_AS says whether this
// binary is registered ("registered": its ID is HERALD_INTEROP_GO_ID) or not ("unregistered":
// HERALD_INTEROP_TOKEN is a JWT-SVID the registered run was given, to validate).
func TestObserve(t *testing.T) {
	out := expected(t, "OBSERVE")
	ctx := bounded(t)
	conn := rawConnection(t)
	raw := workload.NewSpiffeWorkloadAPIClient(conn)
	seen := observations{}
	switch as := expected(t, "OBSERVE_AS"); as {
	case "registered":
		observeRegistered(t, ctx, raw, seen)
	case "unregistered":
		observeUnregistered(ctx, raw, seen, expected(t, "TOKEN"))
	default:
		t.Fatalf("HERALD_INTEROP_OBSERVE_AS=%q: want registered or unregistered", as)
	}
	observeRequestErrors(ctx, raw, seen)
	observeServices(ctx, conn, seen)
	encoded, err := json.MarshalIndent(seen, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(out, encoded, 0o600); err != nil {
		t.Fatal(err)
	}
}

func rawConnection(t *testing.T) *grpc.ClientConn {
	t.Helper()
	addr, ok := workloadapi.GetDefaultAddress()
	if !ok {
		t.Skip("SPIFFE_ENDPOINT_SOCKET is not set")
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// observeServices records what else the socket serves: the services server reflection lists
// (v1alpha, which both grpc-go and grpcio serve; a v1 service shows in its list) and the gRPC
// health status of the server as a whole.
func observeServices(ctx context.Context, conn *grpc.ClientConn, o observations) {
	services, err := listServices(ctx, grpc_reflection_v1alpha.NewServerReflectionClient(conn))
	o.set("reflection.services", services)
	o.recordStatus("reflection", err)
	health, err := grpc_health_v1.NewHealthClient(conn).Check(ctx, &grpc_health_v1.HealthCheckRequest{})
	if err == nil {
		o.set("health.status", health.GetStatus().String())
	}
	o.recordStatus("health", err)
}

func listServices(ctx context.Context, client grpc_reflection_v1alpha.ServerReflectionClient) ([]string, error) {
	stream, err := client.ServerReflectionInfo(ctx)
	if err != nil {
		return nil, err
	}
	defer stream.CloseSend()
	request := &grpc_reflection_v1alpha.ServerReflectionRequest{
		MessageRequest: &grpc_reflection_v1alpha.ServerReflectionRequest_ListServices{}}
	if err := stream.Send(request); err != nil {
		return nil, err
	}
	response, err := stream.Recv()
	if err != nil {
		return nil, err
	}
	var names []string
	for _, service := range response.GetListServicesResponse().GetService() {
		names = append(names, service.GetName())
	}
	sort.Strings(names)
	return names, nil
}

func withHeader(ctx context.Context, value string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", value)
}

// recordStatus stores an RPC's outcome under name: OK, or its code and message.
func (o observations) recordStatus(name string, err error) {
	s := status.Convert(err)
	o.set(name+".code", s.Code().String())
	o.set(name+".message", s.Message())
}

func firstX509(ctx context.Context, raw workload.SpiffeWorkloadAPIClient) (*workload.X509SVIDResponse, error) {
	stream, err := raw.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err != nil {
		return nil, err
	}
	return stream.Recv()
}

func observeRegistered(t *testing.T, ctx context.Context, raw workload.SpiffeWorkloadAPIClient, o observations) {
	me := expectedID(t, "GO_ID")
	// The agent may not have the entry yet; wait as a workload would.
	headed := withHeader(ctx, "true")
	var response *workload.X509SVIDResponse
	for {
		var err error
		if response, err = firstX509(headed, raw); err == nil {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no X.509-SVID for %s: %v", me, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
	o.set("x509.svids", len(response.Svids))
	o.set("x509.crl", len(response.Crl))
	o.set("x509.federated_bundles", len(response.FederatedBundles))
	first := response.Svids[0]
	o.set("x509.spiffe_id", first.SpiffeId)
	o.set("x509.hint", first.Hint)
	chain, _ := x509.ParseCertificates(first.X509Svid)
	o.set("x509.chain_length", len(chain))
	roots, _ := x509.ParseCertificates(first.Bundle)
	o.set("x509.bundle_certificates", len(roots))

	client := client(t, ctx)
	x509Context, err := client.FetchX509Context(ctx)
	if err != nil {
		t.Fatalf("go-spiffe FetchX509Context: %v", err)
	}
	svid := x509Context.DefaultSVID()
	o.set("x509.gospiffe.id", svid.ID.String())
	o.set("x509.gospiffe.key", publicKeyKind(svid.PrivateKey.Public()))
	leaf := svid.Certificates[0]
	o.describeCert("x509.leaf", leaf)
	var issuer *x509.Certificate
	for _, root := range roots {
		if bytes.Equal(root.SubjectKeyId, leaf.AuthorityKeyId) {
			issuer = root
		}
	}
	o.set("x509.leaf.issued_by_bundle_key", issuer != nil)
	if issuer != nil {
		o.describeCert("x509.ca", issuer)
		o.set("x509.ca.self_signed", issuer.CheckSignatureFrom(issuer) == nil)
	}
	var domains []string
	for _, bundle := range x509Context.Bundles.Bundles() {
		domains = append(domains, bundle.TrustDomain().String())
	}
	o.set("x509.gospiffe.bundle_trust_domains", domains)

	bundles, err := raw.FetchX509Bundles(headed, &workload.X509BundlesRequest{})
	if err == nil {
		var message *workload.X509BundlesResponse
		if message, err = bundles.Recv(); err == nil {
			o.set("x509_bundles.keys", sortedKeys(message.Bundles))
			own := message.Bundles["spiffe://"+me.TrustDomain().Name()]
			o.set("x509_bundles.own_equals_svid_bundle", bytes.Equal(own, first.Bundle))
		}
	}
	o.recordStatus("x509_bundles", err)

	observeJWT(t, ctx, raw, client, o)
}

func observeJWT(t *testing.T, ctx context.Context, raw workload.SpiffeWorkloadAPIClient, client *workloadapi.Client, o observations) {
	headed := withHeader(ctx, "true")
	one, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "aud1"})
	if err != nil {
		t.Fatalf("go-spiffe FetchJWTSVID: %v", err)
	}
	o.set("_token", one.Marshal())
	o.describeJWT("jwt.one_audience", one.Marshal())
	two, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "aud1", ExtraAudiences: []string{"aud2"}})
	if err == nil {
		o.describeJWT("jwt.two_audiences", two.Marshal())
	}
	o.recordStatus("jwt.two_audiences", err)
	response, err := raw.FetchJWTSVID(headed, &workload.JWTSVIDRequest{Audience: []string{"aud1"}})
	if err == nil {
		o.set("jwt.svids", len(response.Svids))
		o.set("jwt.spiffe_id", response.Svids[0].SpiffeId)
		o.set("jwt.hint", response.Svids[0].Hint)
	}

	header, _, _ := strings.Cut(one.Marshal(), ".")
	kid, _ := decodeSegment(header)["kid"].(string)
	stream, err := raw.FetchJWTBundles(headed, &workload.JWTBundlesRequest{})
	if err == nil {
		var message *workload.JWTBundlesResponse
		if message, err = stream.Recv(); err == nil {
			o.set("jwt_bundles.keys", sortedKeys(message.Bundles))
			for domain, jwks := range message.Bundles {
				o.describeJWKS("jwt_bundles["+domain+"]", jwks, kid)
			}
		}
	}
	o.recordStatus("jwt_bundles", err)

	validated, err := raw.ValidateJWTSVID(headed, &workload.ValidateJWTSVIDRequest{
		Audience: "aud1", Svid: one.Marshal()})
	if err == nil {
		o.set("validate.spiffe_id", validated.SpiffeId)
		fields := validated.Claims.GetFields()
		o.set("validate.claims", sortedKeys(fields))
		var kinds []string
		for name, value := range fields {
			kinds = append(kinds, name+":"+kindName(value.GetKind()))
		}
		sort.Strings(kinds)
		o.set("validate.claim_kinds", kinds)
	}
	o.recordStatus("validate", err)

	o.recordStatus("jwt.empty_audience_list", rawJWT(headed, raw, &workload.JWTSVIDRequest{}))
	_, err = client.FetchJWTSVID(ctx, jwtsvid.Params{})
	o.set("jwt.gospiffe_empty_audience", errorText(err))
	o.recordStatus("jwt.malformed_spiffe_id", rawJWT(headed, raw, &workload.JWTSVIDRequest{
		Audience: []string{"aud1"}, SpiffeId: "not a spiffe id"}))
	o.recordStatus("jwt.not_entitled_spiffe_id", rawJWT(headed, raw, &workload.JWTSVIDRequest{
		Audience: []string{"aud1"}, SpiffeId: "spiffe://" + one.ID.TrustDomain().Name() + "/not-mine"}))
	o.recordStatus("validate.wrong_audience", rawValidate(headed, raw, "aud3", one.Marshal()))
}

func observeUnregistered(ctx context.Context, raw workload.SpiffeWorkloadAPIClient, o observations, token string) {
	headed := withHeader(ctx, "true")
	_, err := firstX509(headed, raw)
	o.recordStatus("unregistered.x509", err)
	bundles, err := raw.FetchX509Bundles(headed, &workload.X509BundlesRequest{})
	if err == nil {
		_, err = bundles.Recv()
	}
	o.recordStatus("unregistered.x509_bundles", err)
	o.recordStatus("unregistered.jwt", rawJWT(headed, raw, &workload.JWTSVIDRequest{Audience: []string{"aud1"}}))
	jwtBundles, err := raw.FetchJWTBundles(headed, &workload.JWTBundlesRequest{})
	if err == nil {
		_, err = jwtBundles.Recv()
	}
	o.recordStatus("unregistered.jwt_bundles", err)
	o.recordStatus("unregistered.validate", rawValidate(headed, raw, "aud1", token))
	client, err := workloadapi.New(ctx)
	if err == nil {
		defer client.Close()
		_, err = client.FetchX509SVID(ctx)
	}
	o.set("unregistered.gospiffe_x509", errorText(err))
}

// observeRequestErrors: requests that are wrong whoever sends them.
func observeRequestErrors(ctx context.Context, raw workload.SpiffeWorkloadAPIClient, o observations) {
	headed := withHeader(ctx, "true")
	for _, header := range []struct{ name, value string }{{"no_header", ""}, {"header_false", "false"}} {
		call := ctx
		if header.value != "" {
			call = withHeader(ctx, header.value)
		}
		_, err := firstX509(call, raw)
		o.recordStatus(header.name+".FetchX509SVID", err)
		o.recordStatus(header.name+".FetchJWTSVID", rawJWT(call, raw, &workload.JWTSVIDRequest{Audience: []string{"aud1"}}))
		o.recordStatus(header.name+".ValidateJWTSVID", rawValidate(call, raw, "aud1", "x.y.z"))
		stream, err := raw.FetchJWTBundles(call, &workload.JWTBundlesRequest{})
		if err == nil {
			_, err = stream.Recv()
		}
		o.recordStatus(header.name+".FetchJWTBundles", err)
		bundles, err := raw.FetchX509Bundles(call, &workload.X509BundlesRequest{})
		if err == nil {
			_, err = bundles.Recv()
		}
		o.recordStatus(header.name+".FetchX509Bundles", err)
	}
	o.recordStatus("validate.empty_audience", rawValidate(headed, raw, "", "x.y.z"))
	o.recordStatus("validate.empty_svid", rawValidate(headed, raw, "aud1", ""))
	o.recordStatus("validate.garbage", rawValidate(headed, raw, "aud1", "not-a-jwt"))
	wit, err := raw.FetchWITSVID(headed, &workload.WITSVIDRequest{})
	if err == nil {
		_, err = wit.Recv()
	}
	o.recordStatus("wit.FetchWITSVID", err)
	witBundles, err := raw.FetchWITBundles(headed, &workload.WITBundlesRequest{})
	if err == nil {
		_, err = witBundles.Recv()
	}
	o.recordStatus("wit.FetchWITBundles", err)
}

func rawJWT(ctx context.Context, raw workload.SpiffeWorkloadAPIClient, request *workload.JWTSVIDRequest) error {
	_, err := raw.FetchJWTSVID(ctx, request)
	return err
}

func rawValidate(ctx context.Context, raw workload.SpiffeWorkloadAPIClient, audience, token string) error {
	_, err := raw.ValidateJWTSVID(ctx, &workload.ValidateJWTSVIDRequest{Audience: audience, Svid: token})
	return err
}

func errorText(err error) string {
	if err == nil {
		return "no error"
	}
	return err.Error()
}
