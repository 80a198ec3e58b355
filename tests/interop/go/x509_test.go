package interop

import (
	"crypto/x509"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// TestX509SourceRotates: NewX509Source gets the SVID and the bundle it verifies against, and a
// short-lived SVID's rotation reaches the source on the stream it opened first.
func TestX509SourceRotates(t *testing.T) {
	me := expectedID(t, "GO_ID")
	ctx := bounded(t)
	var dials dialCounter
	source, log := x509Source(t, ctx, dials.option())

	first := checkedSVID(t, source)
	// Refusals before the first SVID (an entry the agent has not synced yet) are retries, not
	// reconnections; only what the client reports from here on counts.
	refusals := len(log.reported())
	if first.ID != me {
		t.Fatalf("SVID is %s, want %s", first.ID, me)
	}
	t.Logf("first SVID serial %x, %.1f s left", first.Certificates[0].SerialNumber,
		time.Until(first.Certificates[0].NotAfter).Seconds())

	next := awaitNewSVID(t, source, first.Certificates[0].SerialNumber.Text(16))
	if next.ID != me {
		t.Fatalf("rotated SVID is %s, want %s", next.ID, me)
	}
	if !next.Certificates[0].NotAfter.After(first.Certificates[0].NotAfter) {
		t.Fatalf("rotated SVID expires %v, not after the first's %v",
			next.Certificates[0].NotAfter, first.Certificates[0].NotAfter)
	}
	t.Logf("rotated to serial %x", next.Certificates[0].SerialNumber)
	if n := dials.dials.Load(); n != 1 {
		t.Errorf("the source connected %d times, want 1", n)
	}
	if problems := log.reported()[refusals:]; len(problems) > 0 {
		t.Errorf("the stream was not kept open: %v", problems)
	}
}

// checkedSVID is the source's SVID, verified against the source's bundle for its trust domain.
func checkedSVID(t *testing.T, source *workloadapi.X509Source) *x509svid.SVID {
	t.Helper()
	svid, err := source.GetX509SVID()
	if err != nil {
		t.Fatalf("GetX509SVID: %v", err)
	}
	bundle, err := source.GetX509BundleForTrustDomain(svid.ID.TrustDomain())
	if err != nil {
		t.Fatalf("no bundle for %s: %v", svid.ID.TrustDomain(), err)
	}
	if len(bundle.X509Authorities()) == 0 {
		t.Fatalf("the bundle for %s has no X.509 authorities", svid.ID.TrustDomain())
	}
	id, chains, err := x509svid.Verify(svid.Certificates, source)
	if err != nil {
		t.Fatalf("the SVID does not verify against the bundle: %v", err)
	}
	if id != svid.ID || len(chains) == 0 {
		t.Fatalf("verified as %s with %d chains, want %s", id, len(chains), svid.ID)
	}
	if svid.Certificates[0].KeyUsage&x509.KeyUsageDigitalSignature == 0 {
		t.Fatalf("the leaf lacks digitalSignature")
	}
	return svid
}

// awaitNewSVID waits for the source to hold an SVID whose serial (hex) is not “old“.
func awaitNewSVID(t *testing.T, source *workloadapi.X509Source, old string) *x509svid.SVID {
	t.Helper()
	deadline := time.After(waitLimit)
	for {
		svid := checkedSVID(t, source)
		if svid.Certificates[0].SerialNumber.Text(16) != old {
			return svid
		}
		select {
		case <-source.Updated():
		case <-deadline:
			t.Fatalf("the source still holds serial %s after %v", old, waitLimit)
		}
	}
}
