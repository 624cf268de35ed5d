package conveyor

import (
	"context"
	"crypto/tls"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// NewConn returns a *grpc.ClientConn to addr without connecting yet (gRPC
// connects on first use and reconnects by itself).
//
// addr is "host:port" or "http://host:port" (plaintext HTTP/2, as
// `conveyor dev` serves), "https://host:port" (TLS with the system roots),
// or any gRPC target ("dns:///host:port", "unix:///path"), plaintext. The
// connection backs off from 100 ms to 5 s between attempts. opts come last,
// so they may replace the credentials or add interceptors (bearer tokens).
func NewConn(addr string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	target, creds := parseAddr(addr)
	if target == "" {
		return nil, fmt.Errorf("conveyor: empty address")
	}
	base := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay:  100 * time.Millisecond,
				Multiplier: 2,
				Jitter:     0.2,
				MaxDelay:   5 * time.Second,
			},
			MinConnectTimeout: 5 * time.Second,
		}),
	}
	conn, err := grpc.NewClient(target, append(base, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("conveyor: address %q: %w", addr, err)
	}
	return conn, nil
}

func parseAddr(addr string) (string, credentials.TransportCredentials) {
	addr = strings.TrimSpace(addr)
	switch {
	case strings.HasPrefix(addr, "http://"):
		return strings.TrimSuffix(strings.TrimPrefix(addr, "http://"), "/"), insecure.NewCredentials()
	case strings.HasPrefix(addr, "https://"):
		creds := credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12})
		return strings.TrimSuffix(strings.TrimPrefix(addr, "https://"), "/"), creds
	default:
		return addr, insecure.NewCredentials()
	}
}

// Dial connects to addr (see [NewConn]) and waits until the connection is
// ready, failing fast with UNAVAILABLE when nothing answers, or when ctx
// ends. The returned client owns the connection: [Client.Close] closes it.
func Dial(ctx context.Context, addr string, opts ...grpc.DialOption) (*Client, error) {
	conn, err := NewConn(addr, opts...)
	if err != nil {
		return nil, err
	}
	if err := waitReady(ctx, conn); err != nil {
		_ = conn.Close()
		return nil, err
	}
	c := NewClient(conn)
	c.owned = conn
	return c, nil
}

func waitReady(ctx context.Context, conn *grpc.ClientConn) error {
	conn.Connect()
	for {
		state := conn.GetState()
		switch state {
		case connectivity.Ready:
			return nil
		case connectivity.TransientFailure, connectivity.Shutdown:
			err := status.Errorf(codes.Unavailable, "cannot connect to %s (%s)", conn.Target(), state)
			return newRPCError("Dial", err)
		}
		if !conn.WaitForStateChange(ctx, state) {
			return newRPCError("Dial", ctx.Err())
		}
	}
}
