package logmsg

import (
	"testing"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	eventsv1 "github.com/wasmlet/wasmlet/gen/wasmlet/events/v1"
)

func TestDecodeBothKinds(t *testing.T) {
	one, _ := proto.Marshal(&eventsv1.LogRecord{InstanceId: "i", Sequence: 7, Line: []byte("old")})
	recs, err := Decode(nil, one)
	if err != nil || len(recs) != 1 || recs[0].GetSequence() != 7 || string(recs[0].GetLine()) != "old" {
		t.Fatalf("single record: %v %v", recs, err)
	}
	batch, _ := proto.Marshal(&eventsv1.LogBatch{Records: []*eventsv1.LogRecord{
		{InstanceId: "i", Sequence: 8, Line: []byte("a")}, {InstanceId: "i", Sequence: 9, Line: []byte("b")}}})
	recs, err = Decode(nats.Header{Header: []string{Batch}}, batch)
	if err != nil || len(recs) != 2 || recs[0].GetSequence() != 8 || string(recs[1].GetLine()) != "b" {
		t.Fatalf("batch: %v %v", recs, err)
	}
	// A batch read without its header is not taken for a record.
	recs, err = Decode(nil, batch)
	if err == nil && len(recs) == 1 && recs[0].GetSequence() != 0 {
		t.Fatalf("batch decoded as a record: %v", recs)
	}
	if _, err := Decode(nats.Header{Header: []string{"Other"}}, batch); err == nil {
		t.Fatal("unknown payload kind accepted")
	}
}
