package main

import (
	"bufio"
	"context"
	"crypto/x509"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
)

// stream is one open FetchX509SVID call and when it saw what.
type stream struct {
	servedAt  time.Time
	rotatedAt time.Time
}

// streams opens n streams, perConnection to a connection (asking again while refused), reports once every one holds a message
// of at least svids SVIDs,
// then (with rotation) once every one got a message whose first SVID has another serial, and
// holds them all until stdin closes or the timeout.
func streams(n, perConnection, svids int, rotation bool, timeout time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	opened := time.Now()
	records := make([]stream, n)
	var served, rotated sync.WaitGroup
	served.Add(n)
	rotated.Add(n)
	var conns []*grpc.ClientConn
	defer func() {
		cancel() // the streams end before their connections close under them
		for _, conn := range conns {
			conn.Close()
		}
	}()
	var client workload.SpiffeWorkloadAPIClient
	for i := range n {
		if i%perConnection == 0 {
			var conn *grpc.ClientConn
			conn, client = connect()
			conns = append(conns, conn)
		}
		go watch(ctx, client, &records[i], svids, &served, &rotated)
	}
	if !waitGroup(ctx, &served) {
		fail("not every stream was served in time")
	}
	last := opened
	for _, record := range records {
		if record.servedAt.After(last) {
			last = record.servedAt
		}
	}
	emit(map[string]any{"event": "open", "streams": n, "all_served_ms": ms(last.Sub(opened)),
		"last_served_unix": last.UnixNano()})
	if rotation {
		if !waitGroup(ctx, &rotated) {
			fail("not every stream saw a rotation in time")
		}
		times := make([]time.Time, n)
		for i, record := range records {
			times[i] = record.rotatedAt
		}
		sort.Slice(times, func(a, b int) bool { return times[a].Before(times[b]) })
		emit(map[string]any{
			"event":      "rotated",
			"spread_ms":  ms(times[n-1].Sub(times[0])),
			"p50_ms":     ms(times[n/2].Sub(times[0])),
			"first_unix": times[0].UnixNano(),
			"last_unix":  times[n-1].UnixNano(),
		})
	}
	done := make(chan struct{})
	go func() {
		_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

func watch(ctx context.Context, client workload.SpiffeWorkloadAPIClient, record *stream, svids int, served, rotated *sync.WaitGroup) {
	firstSerial := ""
	for ctx.Err() == nil {
		call, err := client.FetchX509SVID(headed(ctx), &workload.X509SVIDRequest{})
		if err != nil {
			fail(err.Error())
		}
		for {
			response, err := call.Recv()
			if err != nil {
				if firstSerial != "" && ctx.Err() == nil {
					fail("a served stream ended: " + err.Error())
				}
				break // refused before it was served (no identity yet): ask again
			}
			if len(response.Svids) < svids {
				continue
			}
			serial := leafSerial(response.Svids[0].X509Svid)
			switch {
			case firstSerial == "":
				firstSerial = serial
				record.servedAt = time.Now()
				served.Done()
			case serial != firstSerial && record.rotatedAt.IsZero():
				record.rotatedAt = time.Now()
				rotated.Done()
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func leafSerial(chain []byte) string {
	certs, err := x509.ParseCertificates(chain)
	if err != nil || len(certs) == 0 {
		return "unparsable"
	}
	return certs[0].SerialNumber.Text(16)
}

func waitGroup(ctx context.Context, group *sync.WaitGroup) bool {
	done := make(chan struct{})
	go func() { group.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-ctx.Done():
		return false
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
