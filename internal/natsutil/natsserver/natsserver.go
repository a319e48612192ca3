// Package natsserver runs a NATS server with JetStream in-process: the
// node agent's embedded default, and a real server on a random loopback
// port for tests. It is apart from natsutil because the server is most of
// what NATS adds to a binary, and the executor and registry cache only
// connect.
package natsserver

import (
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Config configures an embedded server.
type Config struct {
	// Host defaults to 127.0.0.1; Port 0 picks a free one.
	Host string
	Port int
	// StoreDir keeps JetStream data; it must survive restarts for logs to.
	StoreDir string
	// Token, when set, is required of every client.
	Token string
}

// Server is a running embedded NATS server.
type Server struct {
	*server.Server
	URL string
}

// Start starts a NATS server with JetStream and waits until it accepts
// connections.
func Start(cfg Config) (*Server, error) {
	if cfg.StoreDir == "" {
		return nil, errors.New("nats: StoreDir is required")
	}
	if cfg.Host == "" {
		cfg.Host = "127.0.0.1"
	}
	port := cfg.Port
	if port == 0 {
		port = server.RANDOM_PORT
	}
	opts := &server.Options{
		Host:          cfg.Host,
		Port:          port,
		JetStream:     true,
		StoreDir:      cfg.StoreDir,
		Authorization: cfg.Token,
		NoSigs:        true,
		NoLog:         true,
		MaxPayload:    1 << 20,
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("nats: %w", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, errors.New("nats: server not ready after 10s")
	}
	return &Server{Server: s, URL: s.ClientURL()}, nil
}
