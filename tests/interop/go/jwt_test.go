package interop

import (
	"slices"
	"testing"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

var audiences = []string{"spiffe://example.org/billing", "reports", "audit"}

// TestJWTSVIDsWithSeveralAudiences: FetchJWTSVID with three audiences, ValidateJWTSVID for each
// of them and not for another, and a JWTSource whose bundles validate the token locally.
func TestJWTSVIDsWithSeveralAudiences(t *testing.T) {
	me := expectedID(t, "GO_ID")
	ctx := bounded(t)
	// The source waits until the caller has an identity (an agent may not have the entry yet).
	source, err := workloadapi.NewJWTSource(ctx)
	if err != nil {
		t.Fatalf("NewJWTSource: %v", err)
	}
	defer source.Close()
	client := client(t, ctx)

	params := jwtsvid.Params{Audience: audiences[0], ExtraAudiences: audiences[1:]}
	svid, err := client.FetchJWTSVID(ctx, params)
	if err != nil {
		t.Fatalf("FetchJWTSVID: %v", err)
	}
	if svid.ID != me {
		t.Fatalf("JWT-SVID is for %s, want %s", svid.ID, me)
	}
	for _, audience := range audiences {
		if !slices.Contains(svid.Audience, audience) {
			t.Errorf("audience %q missing from %v", audience, svid.Audience)
		}
		validated, err := client.ValidateJWTSVID(ctx, svid.Marshal(), audience)
		if err != nil {
			t.Errorf("ValidateJWTSVID(%q): %v", audience, err)
			continue
		}
		if validated.ID != me {
			t.Errorf("ValidateJWTSVID(%q) says %s, want %s", audience, validated.ID, me)
		}
	}
	if _, err := client.ValidateJWTSVID(ctx, svid.Marshal(), "someone-else"); err == nil {
		t.Errorf("ValidateJWTSVID accepted an audience the token was not minted for")
	}

	fromSource, err := source.FetchJWTSVID(ctx, params)
	if err != nil {
		t.Fatalf("JWTSource.FetchJWTSVID: %v", err)
	}
	for _, token := range []string{svid.Marshal(), fromSource.Marshal()} {
		local, err := jwtsvid.ParseAndValidate(token, source, audiences[1:2])
		if err != nil {
			t.Fatalf("the token does not validate against the JWTSource's bundles: %v", err)
		}
		if local.ID != me {
			t.Errorf("validated locally as %s, want %s", local.ID, me)
		}
	}
	if _, err := jwtsvid.ParseAndValidate(svid.Marshal(), source, []string{"someone-else"}); err == nil {
		t.Errorf("a local validation accepted an audience the token was not minted for")
	}
}
