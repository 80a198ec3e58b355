// Command workload is the Workload API client bench/vs_spire.py runs against herald and SPIRE:
// the same Go program, speaking the Workload API through go-spiffe's generated stubs, so both
// agents are measured with one client. Each mode prints JSON lines on stdout.
//
//	workload wait    -id ID            poll FetchX509SVID until it returns ID; when it did
//	workload fetch   -clients N -seconds S -warmup W   first-message latency and rate
//	workload streams -n N [-per-connection C] [-svids K] [-rotation]   hold N open streams
//
// The socket is SPIFFE_ENDPOINT_SOCKET. Every mode stops by itself: waits are bounded by
// -timeout, streams ends when its stdin closes.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
)

func main() {
	if len(os.Args) < 2 {
		fail("usage: workload wait|fetch|streams [flags]")
	}
	flags := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	timeout := flags.Duration("timeout", 120*time.Second, "give up after this long")
	switch os.Args[1] {
	case "wait":
		id := flags.String("id", "", "the SPIFFE ID to wait for")
		interval := flags.Duration("interval", 5*time.Millisecond, "between attempts")
		parse(flags)
		wait(*id, *interval, *timeout)
	case "fetch":
		clients := flags.Int("clients", 1, "concurrent clients, one connection each")
		seconds := flags.Float64("seconds", 3, "measured seconds")
		warmup := flags.Float64("warmup", 1, "unmeasured seconds first")
		parse(flags)
		fetch(*clients, *warmup, *seconds)
	case "streams":
		n := flags.Int("n", 1, "open streams")
		perConnection := flags.Int("per-connection", 1, "streams sharing one connection")
		svids := flags.Int("svids", 1, "SVIDs a stream's message must hold to count as served")
		rotation := flags.Bool("rotation", false, "report when every stream got a new SVID")
		parse(flags)
		streams(*n, *perConnection, *svids, *rotation, *timeout)
	default:
		fail("unknown mode " + os.Args[1])
	}
}

func parse(flags *flag.FlagSet) {
	if err := flags.Parse(os.Args[2:]); err != nil {
		fail(err.Error())
	}
}

func fail(message string) {
	fmt.Fprintln(os.Stderr, "workload:", message)
	os.Exit(2)
}

func emit(fields map[string]any) {
	line, _ := json.Marshal(fields)
	fmt.Println(string(line))
}

func connect() (*grpc.ClientConn, workload.SpiffeWorkloadAPIClient) {
	addr, ok := workloadapi.GetDefaultAddress()
	if !ok {
		fail("SPIFFE_ENDPOINT_SOCKET is not set")
	}
	// Redial every 5 ms while the socket is missing or refusing: grpc's default reconnect
	// backoff (1 s, 1.6 s, 2.6 s, ...) would be measured instead of the agent. A connection
	// attempt itself keeps grpc's default 20 s (left at zero, it would be the 5 ms too).
	retry := grpc.ConnectParams{
		Backoff: backoff.Config{
			BaseDelay: 5 * time.Millisecond, Multiplier: 1, MaxDelay: 5 * time.Millisecond},
		MinConnectTimeout: 20 * time.Second,
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(retry),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		fail(err.Error())
	}
	return conn, workload.NewSpiffeWorkloadAPIClient(conn)
}

func headed(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true")
}

// first is one cached fetch: FetchX509SVID's first message, then the stream is cancelled.
func first(ctx context.Context, client workload.SpiffeWorkloadAPIClient) (*workload.X509SVIDResponse, error) {
	ctx, cancel := context.WithCancel(headed(ctx))
	defer cancel()
	stream, err := client.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err != nil {
		return nil, err
	}
	return stream.Recv()
}

func wait(id string, interval, timeout time.Duration) {
	conn, client := connect()
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	refused := false
	for {
		response, err := first(ctx, client)
		if err == nil {
			for _, svid := range response.Svids {
				if svid.SpiffeId == id {
					emit(map[string]any{"event": "svid", "unix_ns": time.Now().UnixNano()})
					return
				}
			}
		} else if !refused {
			refused = true
			emit(map[string]any{"event": "refused", "error": err.Error()})
		}
		select {
		case <-ctx.Done():
			fail("no SVID for " + id + " in time")
		case <-time.After(interval):
		}
	}
}

func fetch(clients int, warmup, seconds float64) {
	start := time.Now().Add(time.Duration(warmup * float64(time.Second)))
	end := start.Add(time.Duration(seconds * float64(time.Second)))
	latencies := make([][]time.Duration, clients)
	errors := make([]int, clients)
	lastError := make([]string, clients)
	var group sync.WaitGroup
	for i := range clients {
		group.Add(1)
		go func() {
			defer group.Done()
			conn, client := connect()
			defer conn.Close()
			for {
				began := time.Now()
				if began.After(end) {
					return
				}
				_, err := first(context.Background(), client)
				if began.After(start) {
					if err != nil {
						errors[i]++
						lastError[i] = err.Error()
					} else {
						latencies[i] = append(latencies[i], time.Since(began))
					}
				}
			}
		}()
	}
	time.Sleep(time.Until(start))
	emit(map[string]any{"event": "measuring"})
	group.Wait()
	var all []time.Duration
	failed, example := 0, ""
	for i := range clients {
		all = append(all, latencies[i]...)
		failed += errors[i]
		if lastError[i] != "" {
			example = lastError[i]
		}
	}
	sort.Slice(all, func(a, b int) bool { return all[a] < all[b] })
	emit(map[string]any{
		"event": "done", "fetches": len(all), "errors": failed, "error": example, "seconds": seconds,
		"p50_ms": quantile(all, 0.50), "p99_ms": quantile(all, 0.99),
	})
}

func quantile(sorted []time.Duration, q float64) float64 {
	if len(sorted) == 0 {
		return -1
	}
	index := min(len(sorted)-1, int(q*float64(len(sorted))))
	return float64(sorted[index].Microseconds()) / 1000
}
