// Command conveyor-example-philosophers seats the dining philosophers on
// Conveyor's concurrency keys.
//
// Five philosophers sit around a table with a fork between each two. The
// forks are concurrency keys fork:0 .. fork:4 with limit 1, and philosopher
// i's meal (a task "eat") needs forks i and (i+1)%5. The server starts a meal
// only when both of its forks are free and takes them together, so nobody
// holds one fork while waiting for the other: no deadlock, whatever the order.
//
// It submits 5 meals per philosopher, runs a worker (5 slots) in this process
// until all are eaten, then prints the meals per philosopher, the most
// philosophers seen eating at once (at most 2: five forks make two pairs) and
// whether a fork was ever held by two. It exits 1 when either went wrong.
//
// Environment: CONVEYOR_ADDR (default http://127.0.0.1:50051), CONVEYOR_QUEUE
// (default "philosophers"), CONVEYOR_NAMESPACE (read by the SDK; default
// "default").
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"go.conveyor.dev/conveyor"
)

const (
	philosophers = 5
	meals        = 5
)

func forks(i int) []int { return []int{i, (i + 1) % philosophers} }

// table is what the worker saw: forks in use, philosophers eating.
type table struct {
	mu         sync.Mutex
	held       map[int]bool
	eating     int
	mostEating int
	forkClash  bool
}

// eat(i) is philosopher i's meal: it takes forks i and i+1 for 50 ms.
func (tb *table) eat(_ context.Context, t *conveyor.Task) (any, error) {
	var i int
	if err := t.Arg(0, &i); err != nil {
		return nil, err
	}
	tb.mu.Lock()
	for _, f := range forks(i) {
		tb.forkClash = tb.forkClash || tb.held[f]
		tb.held[f] = true
	}
	tb.eating++
	tb.mostEating = max(tb.mostEating, tb.eating)
	tb.mu.Unlock()
	time.Sleep(50 * time.Millisecond)
	tb.mu.Lock()
	for _, f := range forks(i) {
		delete(tb.held, f)
	}
	tb.eating--
	tb.mu.Unlock()
	return i, nil
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "conveyor-example-philosophers:", err)
		os.Exit(1)
	}
}

func run() error {
	addr := getenv("CONVEYOR_ADDR", "http://127.0.0.1:50051")
	queue := getenv("CONVEYOR_QUEUE", "philosophers")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// The worker, in this process.
	conn, err := conveyor.NewConn(addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	tb := &table{held: map[int]bool{}}
	w := conveyor.NewWorker(conn, conveyor.WorkerOptions{
		Queues:      []string{queue},
		Concurrency: philosophers,
		Logger:      slog.New(slog.DiscardHandler),
	})
	w.Register("eat", tb.eat)
	workerCtx, stopWorker := context.WithCancel(ctx)
	defer stopWorker()
	done := make(chan error, 1)
	go func() { done <- w.Run(workerCtx) }()

	// The meals: each needs both of its forks at once.
	c, err := conveyor.Dial(ctx, addr)
	if err != nil {
		return err
	}
	defer c.Close()
	var requests []conveyor.TaskRequest
	for range meals {
		for i := range philosophers {
			var keys []conveyor.ConcurrencyKey
			for _, f := range forks(i) {
				keys = append(keys, conveyor.ConcurrencyKey{Key: fmt.Sprintf("fork:%d", f), Limit: 1})
			}
			requests = append(requests, conveyor.NewRequest("eat",
				conveyor.Args(i), conveyor.WithQueue(queue), conveyor.WithConcurrencyKeys(keys...)))
		}
	}
	ids, err := c.SubmitMany(ctx, requests)
	if err != nil {
		return err
	}
	eaten := make([]int, philosophers)
	for _, id := range ids {
		var i int
		if err := c.Result(ctx, id, 30*time.Second, &i); err != nil {
			return err
		}
		eaten[i]++
	}
	stopWorker() // drains, then Run returns
	if err := <-done; err != nil {
		return err
	}

	for i, n := range eaten {
		fmt.Printf("philosopher %d ate %d meals\n", i, n)
	}
	fmt.Printf("most eating at once: %d\n", tb.mostEating)
	clash := "never"
	if tb.forkClash {
		clash = "yes"
	}
	fmt.Printf("fork held by two at once: %s\n", clash)
	if tb.mostEating > 2 || tb.forkClash {
		return fmt.Errorf("the forks were not respected")
	}
	return nil
}

func getenv(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}
