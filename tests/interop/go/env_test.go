package interop

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
)

// waitLimit bounds every wait on the agent: long enough for go-spiffe's linear retry backoff
// (1 s, 2 s, 3 s, ...) to come round a few times, short enough to fail a stuck test.
const waitLimit = 60 * time.Second

// expected reads a HERALD_INTEROP_* variable the pytest side sets; without it the test skips.
func expected(t *testing.T, name string) string {
	t.Helper()
	value := os.Getenv("HERALD_INTEROP_" + name)
	if value == "" {
		t.Skipf("HERALD_INTEROP_%s is not set: run through tests/interop/test_gospiffe.py", name)
	}
	return value
}

func expectedID(t *testing.T, name string) spiffeid.ID {
	t.Helper()
	id, err := spiffeid.FromString(expected(t, name))
	if err != nil {
		t.Fatalf("HERALD_INTEROP_%s: %v", name, err)
	}
	return id
}

func bounded(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	t.Cleanup(cancel)
	return ctx
}

// x509Source is a started X509Source, closed when the test ends, and what its client logged;
// the test fails without one.
func x509Source(t *testing.T, ctx context.Context, options ...workloadapi.ClientOption) (*workloadapi.X509Source, *recordingLogger) {
	t.Helper()
	log := &recordingLogger{}
	options = append([]workloadapi.ClientOption{workloadapi.WithLogger(log)}, options...)
	source, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(options...))
	if err != nil {
		t.Fatalf("NewX509Source: %v (the client reported %v)", err, log.reported())
	}
	t.Cleanup(func() { source.Close() })
	return source, log
}

// client is a Workload API client, closed when the test ends.
func client(t *testing.T, ctx context.Context) *workloadapi.Client {
	t.Helper()
	c, err := workloadapi.New(ctx)
	if err != nil {
		t.Fatalf("workloadapi.New: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// dialCounter counts the connections a client opens to the Workload API socket, so a test can
// tell a stream that stayed open from one that was re-established.
type dialCounter struct{ dials atomic.Int32 }

func (c *dialCounter) option() workloadapi.ClientOption {
	return workloadapi.WithDialOptions(grpc.WithContextDialer(
		func(ctx context.Context, target string) (net.Conn, error) {
			c.dials.Add(1)
			// A dialer of one's own is handed go-spiffe's target as written: unix:///path.
			path := strings.TrimPrefix(strings.TrimPrefix(target, "unix://"), "unix:")
			var dialer net.Dialer
			return dialer.DialContext(ctx, "unix", path)
		}))
}

// recordingLogger keeps what go-spiffe's client reports at warning and error level: a broken
// or refused stream is logged there before every retry.
type recordingLogger struct {
	mu       sync.Mutex
	problems []string
}

func (l *recordingLogger) Debugf(string, ...any) {}
func (l *recordingLogger) Infof(string, ...any)  {}
func (l *recordingLogger) Warnf(format string, args ...any) {
	l.record("warn: " + fmt.Sprintf(format, args...))
}
func (l *recordingLogger) Errorf(format string, args ...any) {
	l.record("error: " + fmt.Sprintf(format, args...))
}

func (l *recordingLogger) record(line string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.problems = append(l.problems, line)
}

func (l *recordingLogger) reported() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.problems...)
}
