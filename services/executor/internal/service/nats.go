package service

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wasmlet/wasmlet/internal/natsutil"
	"github.com/wasmlet/wasmlet/services/executor/internal/outbox"
	"github.com/wasmlet/wasmlet/services/executor/internal/spool"
)

// natsLink is the executor's connection to NATS, its JetStream and the
// spool of log lines not yet acknowledged. A nil *natsLink is no NATS:
// nothing is published or announced.
type natsLink struct {
	nc    *nats.Conn
	js    jetstream.JetStream
	spool *spool.Spool
}

// dialNATS connects to cfg.NATS (nil without one), ensures the streams in
// the background (NATS may not be up yet: publishing queues meanwhile)
// and opens the log spool under StateDir/logspool.
func dialNATS(ctx context.Context, cfg Config, log *slog.Logger) (*natsLink, error) {
	if cfg.NATS == "" {
		return nil, nil
	}
	nc, err := natsutil.Connect(cfg.NATS, cfg.NATSToken, "wasmlet-executor-"+cfg.ID)
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	go ensureStreams(ctx, js, log)
	sp, err := openLogSpool(filepath.Join(cfg.StateDir, "logspool"), cfg.LogSpoolBytes, js, log)
	if err != nil {
		nc.Close()
		return nil, err
	}
	return &natsLink{nc: nc, js: js, spool: sp}, nil
}

func (n *natsLink) conn() *nats.Conn {
	if n == nil {
		return nil
	}
	return n.nc
}

func (n *natsLink) jetStream() jetstream.JetStream {
	if n == nil {
		return nil
	}
	return n.js
}

// logOutbox is the configuration of the manager's log outbox: spooled
// with NATS, nothing without.
func (n *natsLink) logOutbox() outbox.Config {
	if n == nil {
		return outbox.Config{}
	}
	return outbox.Config{Spool: n.spool}
}

func (n *natsLink) close() {
	if n == nil {
		return
	}
	n.spool.Close()
	n.nc.Close()
}

func ensureStreams(ctx context.Context, js jetstream.JetStream, log *slog.Logger) {
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := natsutil.EnsureStreamsExist(cctx, js)
		cancel()
		if err == nil {
			return
		}
		log.Warn("ensure NATS streams", "error", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(2 * time.Second):
		}
	}
}

// openLogSpool opens the log spool and publishes, in the background, what
// an earlier process left in it (lines of instances it ran when it was
// killed); JetStream drops the ones that had arrived (Nats-Msg-Id).
func openLogSpool(dir string, maxBytes int64, js jetstream.JetStream, log *slog.Logger) (*spool.Spool, error) {
	sp, err := spool.Open(spool.Config{Dir: dir, MaxBytes: maxBytes})
	if err != nil {
		return nil, fmt.Errorf("log spool: %w; remove %s to start without the unsent lines it holds", err, dir)
	}
	if r := sp.Replay(); len(r) > 0 {
		log.Info("publishing log lines left by an earlier executor", "records", len(r), "spool", dir)
		go func() {
			// Replayed lines are never displaced: the queue waits for NATS.
			ob := outbox.New(js, outbox.Config{Spool: sp, Capacity: 8192, BlockTimeout: 10 * time.Minute})
			ob.PublishReplayed(r)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			_ = ob.Close(ctx)
			st := ob.Stats()
			log.Info("log lines left by an earlier executor published", "published", st.Published, "left", st.Left, "dropped", st.Dropped)
		}()
	}
	go warnUnspooled(sp, dir, maxBytes, log)
	return sp, nil
}

// warnUnspooled says, at most once a minute, how many log lines found the
// spool full (published from memory only: a kill before their ack loses
// them).
func warnUnspooled(sp *spool.Spool, dir string, maxBytes int64, log *slog.Logger) {
	var seen uint64
	for range time.Tick(time.Minute) {
		st := sp.Stats()
		if st.Unspooled > seen {
			log.Warn("log spool full: lines published from memory only; raise --log-spool-bytes or check NATS",
				"lines", st.Unspooled-seen, "spool", dir, "bytes", st.Bytes, "max_bytes", maxBytes)
			seen = st.Unspooled
		}
	}
}
