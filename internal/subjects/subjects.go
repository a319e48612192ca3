// Package subjects names the NATS subjects wasmlet publishes on. Kubernetes
// names may hold dots, which NATS takes as token separators, so every
// coordinate is escaped into one token: '.' becomes '_' (no Kubernetes name
// may hold '_', so the mapping is reversible).
//
//	wasmlet.logs.<node>.<namespace>.<pod>.<container>   events.v1.LogBatch (or LogRecord)
//	wasmlet.events.<executor>.<instance>                events.v1.InstanceEvent
//	wasmlet.executors.<node>.<flavour>.<executor>       events.v1.ExecutorAnnouncement
//	wasmlet.discover.<node>                             events.v1.ExecutorDiscovery
//
// A log shipper follows a namespace with "wasmlet.logs.*.<namespace>.>" and a
// pod with "wasmlet.logs.*.<namespace>.<pod>.*". A node agent follows the
// executors serving it with ExecutorsOf(node) and asks them to announce
// themselves at once on Discover(node). Announcements and discovery requests
// are plain NATS messages, kept by no stream: they say what is there now.
package subjects

import "strings"

const (
	// LogsPrefix is the first two tokens of every log subject.
	LogsPrefix = "wasmlet.logs"
	// EventsPrefix is the first two tokens of every instance-event subject.
	EventsPrefix = "wasmlet.events"
	// ExecutorsPrefix is the first two tokens of every executor announcement.
	ExecutorsPrefix = "wasmlet.executors"
	// DiscoverPrefix is the first two tokens of a request to announce.
	DiscoverPrefix = "wasmlet.discover"
	// LogsStream is the JetStream stream that keeps log records.
	LogsStream = "WASMLET_LOGS"
	// EventsStream is the JetStream stream that keeps instance events.
	EventsStream = "WASMLET_EVENTS"
)

// Token escapes s into a single NATS subject token.
func Token(s string) string {
	if s == "" {
		return "_empty_"
	}
	return strings.NewReplacer(".", "_", "*", "_", ">", "_", " ", "_").Replace(s)
}

// Logs is the subject of one container's log records, kept by the stream
// LogsStream. For a log shipper:
//
//   - payload: with the header "Wasmlet-Payload: LogBatch", one
//     events.v1.LogBatch (protobuf): the records of one write by the
//     module, 1 to 1024, at most 64 KiB together; without that header (executors before batching), one
//     events.v1.LogRecord. Package logmsg decodes both. A record is one
//     line: instance_id, stream (stdout/stderr), time, line (bytes, no
//     newline; a line over 16 KiB comes as pieces marked partial),
//     sequence (per instance, from 1, no gaps at the source).
//   - header Nats-Msg-Id: "<instance_id>:<sequence of the first record>".
//     JetStream drops a copy within the stream's duplicate window; a
//     reader that must never show a line twice (e.g. across a window
//     longer than that) skips a sequence it has already seen for the
//     instance.
//   - wildcards: a namespace "wasmlet.logs.*.<namespace>.>", a pod
//     "wasmlet.logs.*.<namespace>.<pod>.*", a node "wasmlet.logs.<node>.>"
//     (tokens escaped with Token). A plain subscription, e.g.
//     `nats sub 'wasmlet.logs.*.default.>'`, sees lines as they are
//     published; a JetStream consumer on LogsStream with that filter
//     subject also gets what the stream keeps, and resumes where it was.
func Logs(node, namespace, pod, container string) string {
	return strings.Join([]string{LogsPrefix, Token(node), Token(namespace), Token(pod), Token(container)}, ".")
}

// Events is the subject of one instance's state changes.
func Events(executor, instance string) string {
	return strings.Join([]string{EventsPrefix, Token(executor), Token(instance)}, ".")
}

// Executor is the subject one executor announces itself on.
func Executor(node, flavour, executor string) string {
	return strings.Join([]string{ExecutorsPrefix, Token(node), Token(flavour), Token(executor)}, ".")
}

// ExecutorsOf matches every announcement of the executors serving node.
func ExecutorsOf(node string) string {
	return ExecutorsPrefix + "." + Token(node) + ".*.*"
}

// Discover is the subject on which a node's executors are asked to
// announce themselves now.
func Discover(node string) string {
	return DiscoverPrefix + "." + Token(node)
}
