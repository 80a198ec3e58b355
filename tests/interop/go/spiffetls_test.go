package interop

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
)

// pyResult is what scripts/demo_workload.py (py-spiffe X509Source + spiffe-tls) prints last.
type pyResult struct {
	Peer  string `json:"peer"`
	Reply string `json:"reply"`
	Heard string `json:"heard"`
	SVID  struct {
		SpiffeID string `json:"spiffe_id"`
	} `json:"svid"`
}

// TestSpiffeTLSGoServesPython: a spiffetls mTLS listener that admits only the Python
// workload's ID, dialled by a spiffe-tls client that admits only this binary's ID.
func TestSpiffeTLSGoServesPython(t *testing.T) {
	me, py := expectedID(t, "GO_ID"), expectedID(t, "PY_ID")
	ctx := bounded(t)
	listener, err := spiffetls.ListenWithMode(ctx, "tcp", "127.0.0.1:0",
		spiffetls.MTLSServerWithSourceOptions(tlsconfig.AuthorizeID(py)))
	if err != nil {
		t.Fatalf("spiffetls.ListenWithMode: %v", err)
	}
	defer listener.Close()
	go func() { <-ctx.Done(); listener.Close() }() // Accept has no deadline of its own
	port := listener.Addr().(*net.TCPAddr).Port
	python := pythonWorkload(t, "caller", port, py, me)

	conn, err := listener.Accept()
	if err != nil {
		t.Fatalf("Accept: %v", err)
	}
	defer conn.Close()
	request := make([]byte, 1024)
	n, err := conn.Read(request) // the handshake, and the authoriser, run here
	if err != nil {
		t.Fatalf("reading the Python client's request: %v", err)
	}
	peer, err := spiffetls.PeerIDFromConn(conn)
	if err != nil || peer != py {
		t.Fatalf("the client is %s (%v), want %s", peer, err, py)
	}
	fmt.Fprintf(conn, "hello %s, you said %q", peer, request[:n])
	conn.Close()

	result := python.result(t)
	if result.Peer != me.String() {
		t.Errorf("the Python client verified %q, want %s", result.Peer, me)
	}
	if result.SVID.SpiffeID != py.String() || !strings.HasPrefix(result.Reply, "hello "+py.String()) {
		t.Errorf("the Python client held %q and got %q", result.SVID.SpiffeID, result.Reply)
	}
}

// TestSpiffeTLSGoDialsPython: a spiffetls mTLS client that admits only the Python workload's
// ID, dialling a spiffe-tls listener that admits only this binary's ID.
func TestSpiffeTLSGoDialsPython(t *testing.T) {
	me, py := expectedID(t, "GO_ID"), expectedID(t, "PY_ID")
	ctx := bounded(t)
	port := freePort(t)
	python := pythonWorkload(t, "greeter", port, py, me)
	python.waitReady(t)

	source, _ := x509Source(t, ctx)
	conn, err := spiffetls.DialWithMode(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		spiffetls.MTLSClientWithSource(tlsconfig.AuthorizeID(py), source))
	if err != nil {
		t.Fatalf("spiffetls.DialWithMode: %v", err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "hi from go"); err != nil {
		t.Fatalf("write: %v", err)
	}
	reply, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("reading the Python server's reply: %v", err)
	}
	if want := "hello " + me.String(); !strings.HasPrefix(string(reply), want) {
		t.Errorf("the Python server replied %q, want it to start %q", reply, want)
	}
	result := python.result(t)
	if result.Peer != me.String() || result.Heard != "hi from go" {
		t.Errorf("the Python server verified %q and heard %q", result.Peer, result.Heard)
	}
}

type pythonProcess struct {
	cmd    *exec.Cmd
	stdout *bufio.Reader
	stderr *strings.Builder
}

// pythonWorkload starts scripts/demo_workload.py in “role“ as the workload “me“.
func pythonWorkload(t *testing.T, role string, port int, me, peer spiffeid.ID) *pythonProcess {
	t.Helper()
	cmd := exec.Command(expected(t, "PYTHON"), expected(t, "PY_WORKLOAD"),
		role, strconv.Itoa(port), me.String(), peer.String())
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	process := &pythonProcess{cmd: cmd, stdout: bufio.NewReader(stdout), stderr: &strings.Builder{}}
	cmd.Stderr = process.stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting the Python workload: %v", err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	return process
}

func (p *pythonProcess) waitReady(t *testing.T) {
	t.Helper()
	line, err := p.stdout.ReadString('\n')
	if strings.TrimSpace(line) != "READY" {
		_ = p.cmd.Wait()
		t.Fatalf("the Python workload did not start (%q, %v): %s", line, err, p.stderr)
	}
}

func (p *pythonProcess) result(t *testing.T) pyResult {
	t.Helper()
	out, _ := io.ReadAll(p.stdout)
	if err := p.cmd.Wait(); err != nil {
		t.Fatalf("the Python workload failed (%v): %s%s", err, out, p.stderr)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	var result pyResult
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &result); err != nil {
		t.Fatalf("the Python workload's last line is not its JSON result (%v): %s", err, out)
	}
	return result
}

func freePort(t *testing.T) int {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer listener.Close()
	return listener.Addr().(*net.TCPAddr).Port
}
