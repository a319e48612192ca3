// Package subjects names the NATS subjects wasmlet publishes on. Kubernetes
// names may hold dots, which NATS takes as token separators, so every
// coordinate is escaped into one token: '.' becomes '_' (no Kubernetes name
// may hold '_', so the mapping is reversible).
//
//	wasmlet.logs.<node>.<namespace>.<pod>.<container>   events.v1.LogRecord
//	wasmlet.events.<executor>.<instance>                events.v1.InstanceEvent
//
// A log shipper follows a namespace with "wasmlet.logs.*.<namespace>.>" and a
// pod with "wasmlet.logs.*.<namespace>.<pod>.*".
package subjects

import "strings"

const (
	// LogsPrefix is the first two tokens of every log subject.
	LogsPrefix = "wasmlet.logs"
	// EventsPrefix is the first two tokens of every instance-event subject.
	EventsPrefix = "wasmlet.events"
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

// Logs is the subject of one container's log records.
func Logs(node, namespace, pod, container string) string {
	return strings.Join([]string{LogsPrefix, Token(node), Token(namespace), Token(pod), Token(container)}, ".")
}

// Events is the subject of one instance's state changes.
func Events(executor, instance string) string {
	return strings.Join([]string{EventsPrefix, Token(executor), Token(instance)}, ".")
}
