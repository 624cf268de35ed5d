package conveyor

import (
	"fmt"
	"math/rand/v2"
	"os"
	"time"
)

// Reconnect backoff defaults: from 100 ms, doubling, up to 5 s.
const (
	DefaultMinBackoff = 100 * time.Millisecond
	DefaultMaxBackoff = 5 * time.Second
)

// reconnectBackoff is exponential backoff with "equal jitter": each delay
// is drawn uniformly from the upper half of min*2^failures (capped at max).
type reconnectBackoff struct {
	min, max time.Duration
	failures int
}

func newBackoff(lo, hi time.Duration) *reconnectBackoff {
	return &reconnectBackoff{min: lo, max: max(hi, lo)}
}

// ceiling is the next delay before jitter.
func (b *reconnectBackoff) ceiling() time.Duration {
	d := b.min
	for i := 0; i < b.failures && d < b.max; i++ {
		d *= 2
	}
	return min(d, b.max)
}

// next returns the jittered delay before the next attempt and advances.
func (b *reconnectBackoff) next() time.Duration {
	c := b.ceiling()
	b.failures++
	half := c / 2
	return half + time.Duration(rand.Int64N(int64(c-half)+1))
}

func (b *reconnectBackoff) reset() { b.failures = 0 }

// hostname is the host's name, "localhost" when unknown.
func hostname() string {
	if h, err := os.Hostname(); err == nil && h != "" {
		return h
	}
	return "localhost"
}

// defaultWorkerID is "hostname-pid".
func defaultWorkerID(host string) string {
	return fmt.Sprintf("%s-%d", host, os.Getpid())
}
