package interop

import (
	"os"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// watcher records the X.509 contexts and errors a WatchX509Context delivers.
type watcher struct {
	mu      sync.Mutex
	serials []string
	errors  []error
	// errorsAt[i] is how many updates had arrived when errors[i] did.
	errorsAt []int
	changed  chan struct{}
}

func (w *watcher) OnX509ContextUpdate(c *workloadapi.X509Context) {
	w.mu.Lock()
	w.serials = append(w.serials, c.DefaultSVID().Certificates[0].SerialNumber.Text(16))
	w.mu.Unlock()
	w.notify()
}

func (w *watcher) OnX509ContextWatchError(err error) {
	w.mu.Lock()
	w.errors = append(w.errors, err)
	w.errorsAt = append(w.errorsAt, len(w.serials))
	w.mu.Unlock()
	w.notify()
}

func (w *watcher) notify() {
	select {
	case w.changed <- struct{}{}:
	default:
	}
}

// updatedAfterError says whether an update arrived after the first error.
func (w *watcher) updatedAfterError() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.errors) > 0 && len(w.serials) > w.errorsAt[0]
}

// TestWatcherOutlivesAgentRestart: one WatchX509Context call and one X509Source, both opened
// before the agent restarts, receive the SVIDs the restarted agent serves without being
// recreated. The test creates HERALD_INTEROP_SIGNAL once it is watching; the pytest side then
// restarts the agent.
func TestWatcherOutlivesAgentRestart(t *testing.T) {
	me := expectedID(t, "GO_ID")
	signal := expected(t, "SIGNAL")
	ctx := bounded(t)
	w := &watcher{changed: make(chan struct{}, 1)}
	watching := make(chan error, 1)
	watchingClient := client(t, ctx)
	go func() { watching <- watchingClient.WatchX509Context(ctx, w) }()
	source, _ := x509Source(t, ctx)
	before, err := source.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}

	waitFor(t, w, func() bool { w.mu.Lock(); defer w.mu.Unlock(); return len(w.serials) > 0 })
	if err := os.WriteFile(signal, []byte("watching\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, w, w.updatedAfterError)
	w.mu.Lock()
	t.Logf("updates %v; errors while the agent was away: %v", w.serials, w.errors)
	w.mu.Unlock()

	after := awaitNewSVID(t, source, before.Certificates[0].SerialNumber.Text(16))
	if after.ID != me {
		t.Errorf("after the restart the source holds %s, want %s", after.ID, me)
	}
	select {
	case err := <-watching:
		t.Fatalf("WatchX509Context returned: %v", err)
	default:
	}
}

func waitFor(t *testing.T, w *watcher, done func() bool) {
	t.Helper()
	deadline := time.After(waitLimit)
	for !done() {
		select {
		case <-w.changed:
		case <-deadline:
			t.Fatalf("the watcher saw nothing new within %v", waitLimit)
		}
	}
}
