package server_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	registryv1 "github.com/wasmlet/wasmlet/gen/wasmlet/registry/v1"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/server"
)

// fakeCache serves one blob and fails Resolve with a chosen error.
type fakeCache struct {
	blob       []byte
	resolveErr error
	got        regcache.ResolveRequest
}

func (f *fakeCache) Resolve(_ context.Context, req regcache.ResolveRequest) (regcache.Resolved, error) {
	f.got = req
	if f.resolveErr != nil {
		return regcache.Resolved{}, f.resolveErr
	}
	return regcache.Resolved{Reference: req.Reference, ModuleDigest: "sha256:x", Warning: "w"}, nil
}

func (f *fakeCache) Fetch(_ context.Context, d string) (io.ReadCloser, int64, error) {
	if d != "sha256:blob" {
		return nil, 0, fmt.Errorf("blob %s: %w", d, regcache.ErrNotFound)
	}
	return io.NopCloser(bytes.NewReader(f.blob)), int64(len(f.blob)), nil
}

func dial(t *testing.T, c regcache.Cache) registryv1.RegistryServiceClient {
	t.Helper()
	l := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	server.New(c).Register(srv)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return l.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return registryv1.NewRegistryServiceClient(conn)
}

func TestFetchChunks(t *testing.T) {
	for _, n := range []int{0, 1, server.ChunkSize, 2*server.ChunkSize + 7} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			blob := bytes.Repeat([]byte{'a'}, n)
			client := dial(t, &fakeCache{blob: blob})
			stream, err := client.Fetch(context.Background(), &registryv1.FetchRequest{Digest: "sha256:blob"})
			if err != nil {
				t.Fatal(err)
			}
			var got []byte
			for i := 0; ; i++ {
				msg, err := stream.Recv()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				if i == 0 && msg.GetSize() != int64(n) {
					t.Fatalf("first message size %d, want %d", msg.GetSize(), n)
				}
				if i > 0 && msg.GetSize() != 0 {
					t.Fatalf("message %d carries size %d; only the first should", i, msg.GetSize())
				}
				if len(msg.GetChunk()) > server.ChunkSize {
					t.Fatalf("chunk of %d bytes, over %d", len(msg.GetChunk()), server.ChunkSize)
				}
				got = append(got, msg.GetChunk()...)
			}
			if !bytes.Equal(got, blob) {
				t.Fatalf("got %d bytes, want %d", len(got), n)
			}
		})
	}
}

func TestCodes(t *testing.T) {
	for err, want := range map[error]codes.Code{
		regcache.ErrInvalidReference: codes.InvalidArgument,
		regcache.ErrNotFound:         codes.NotFound,
		regcache.ErrUnauthorized:     codes.Unauthenticated,
		regcache.ErrNotWasm:          codes.FailedPrecondition,
		regcache.ErrDigestMismatch:   codes.DataLoss,
		regcache.ErrTooLarge:         codes.ResourceExhausted,
		regcache.ErrUnavailable:      codes.Unavailable,
	} {
		wrapped := fmt.Errorf("pull r: %w: what to do", err)
		client := dial(t, &fakeCache{resolveErr: wrapped})
		_, got := client.Resolve(context.Background(), &registryv1.ResolveRequest{Reference: "r"})
		st, _ := status.FromError(got)
		if st.Code() != want || st.Message() != wrapped.Error() {
			t.Errorf("%v: got %v %q, want %v %q", err, st.Code(), st.Message(), want, wrapped.Error())
		}
	}
	client := dial(t, &fakeCache{})
	stream, err := client.Fetch(context.Background(), &registryv1.FetchRequest{Digest: "sha256:other"})
	if err == nil {
		// A server stream reports its error on the first Recv.
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.NotFound {
		t.Errorf("Fetch of a missing blob: %v, want NotFound", err)
	}
}

func TestResolvePassesRequest(t *testing.T) {
	fc := &fakeCache{}
	client := dial(t, fc)
	resp, err := client.Resolve(context.Background(), &registryv1.ResolveRequest{
		Reference:   "h:1/r:v",
		PullPolicy:  registryv1.PullPolicy_PULL_POLICY_NEVER,
		Credentials: map[string]*registryv1.Credentials{"h:1": {Username: "u", Password: "p"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetWarning() != "w" || resp.GetModuleDigest() != "sha256:x" {
		t.Errorf("response %v", resp)
	}
	if fc.got.Policy != regcache.PullNever || fc.got.Credentials["h:1"].Password != "p" {
		t.Errorf("cache got %+v", fc.got)
	}
	_, err = client.Resolve(context.Background(), &registryv1.ResolveRequest{Reference: "r", PullPolicy: 99})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("unknown policy: %v, want InvalidArgument", err)
	}
}

// TestOptionalServices: a Cache that neither pins nor stores precompiled
// modules answers those RPCs with UNIMPLEMENTED.
func TestOptionalServices(t *testing.T) {
	client := dial(t, &fakeCache{})
	ctx := context.Background()
	_, err := client.Pin(ctx, &registryv1.PinRequest{Holder: "h", Digest: "sha256:blob"})
	if status.Code(err) != codes.Unimplemented {
		t.Errorf("Pin: %v, want Unimplemented", err)
	}
	_, err = client.Unpin(ctx, &registryv1.UnpinRequest{Holder: "h"})
	if status.Code(err) != codes.Unimplemented {
		t.Errorf("Unpin: %v, want Unimplemented", err)
	}
	put, err := client.PutPrecompiled(ctx)
	if err == nil {
		_, err = put.CloseAndRecv()
	}
	if status.Code(err) != codes.Unimplemented {
		t.Errorf("PutPrecompiled: %v, want Unimplemented", err)
	}
	get, err := client.GetPrecompiled(ctx, &registryv1.GetPrecompiledRequest{ModuleDigest: "sha256:blob", EngineKey: "e"})
	if err == nil {
		_, err = get.Recv()
	}
	if status.Code(err) != codes.Unimplemented {
		t.Errorf("GetPrecompiled: %v, want Unimplemented", err)
	}
}
