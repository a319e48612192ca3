package wagi

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"

	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
)

// Env is the environment of a run for r, received on the listener at
// local: the spec's own env, then the CGI variables (RFC 3875) and those
// WAGI adds, which win over the spec's; each request header as HTTP_<NAME>
// (Proxy-Authorization excepted, as RFC 3875 allows).
func Env(spec []engine.EnvVar, r *http.Request, local net.Addr) []engine.EnvVar {
	env := make([]engine.EnvVar, 0, len(spec)+24+len(r.Header))
	env = append(env, spec...)
	add := func(name, value string) { env = append(env, engine.EnvVar{Name: name, Value: value}) }
	serverName, serverPort := r.Host, ""
	if h, p, err := net.SplitHostPort(r.Host); err == nil {
		serverName, serverPort = h, p
	}
	if a, ok := local.(*net.TCPAddr); ok {
		if serverName == "" {
			serverName = a.IP.String()
		}
		serverPort = strconv.Itoa(a.Port)
	}
	remote, remotePort := r.RemoteAddr, ""
	if h, p, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		remote, remotePort = h, p
	}
	length := ""
	if r.ContentLength >= 0 {
		length = strconv.FormatInt(r.ContentLength, 10)
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	add("AUTH_TYPE", "")
	add("CONTENT_LENGTH", length)
	add("CONTENT_TYPE", r.Header.Get("Content-Type"))
	add("GATEWAY_INTERFACE", "CGI/1.1")
	// The module serves every path: its script is at the root.
	add("SCRIPT_NAME", "")
	add("PATH_INFO", r.URL.Path)
	add("PATH_TRANSLATED", r.URL.Path)
	add("QUERY_STRING", r.URL.RawQuery)
	add("REMOTE_ADDR", remote)
	add("REMOTE_HOST", remote)
	add("REMOTE_PORT", remotePort)
	add("REMOTE_USER", "")
	add("REQUEST_METHOD", r.Method)
	add("REQUEST_URI", r.URL.RequestURI())
	add("SERVER_NAME", serverName)
	add("SERVER_PORT", serverPort)
	add("SERVER_PROTOCOL", r.Proto)
	add("SERVER_SOFTWARE", "wasmlet")
	add("X_MATCHED_ROUTE", "/...")
	add("X_RAW_PATH_INFO", r.URL.EscapedPath())
	add("X_FULL_URL", scheme+"://"+r.Host+r.URL.RequestURI())
	add("HTTP_HOST", r.Host)
	for name, values := range r.Header {
		if name == "Proxy-Authorization" {
			continue
		}
		add("HTTP_"+strings.ToUpper(strings.ReplaceAll(name, "-", "_")), strings.Join(values, ", "))
	}
	return env
}

// Response is a CGI response as a handler wrote it on stdout.
type Response struct {
	Status int
	Header http.Header
	Body   []byte
}

// errMalformed: the output is no CGI response.
var errMalformed = errors.New("malformed CGI response")

// ParseResponse parses out as a CGI response (RFC 3875 section 6): header
// lines (LF or CRLF), a blank line, the body. "Status: <code> [reason]"
// sets the status; a Location without a Status redirects (302); other
// headers are the response's. A response without a Content-Type or a
// Location is refused, as is one with no blank line after its headers.
func ParseResponse(out []byte) (Response, error) {
	if len(out) == 0 {
		return Response{}, fmt.Errorf("%w: the handler wrote nothing to stdout; write headers (at least Content-Type), a blank line, then the body", errMalformed)
	}
	// A reader no larger than the output: a small response's headers
	// need no buffer of 4 KiB.
	tp := textproto.NewReader(bufio.NewReaderSize(bytes.NewReader(out), min(len(out), 4096)))
	h, err := tp.ReadMIMEHeader()
	if err != nil {
		return Response{}, fmt.Errorf("%w: %v; the handler must write header lines (Name: value), a blank line, then the body", errMalformed, err)
	}
	body := out[headerEnd(out):]
	res := Response{Status: http.StatusOK, Header: http.Header(h), Body: body}
	if s := res.Header.Get("Status"); s != "" {
		code, _, _ := strings.Cut(strings.TrimSpace(s), " ")
		n, err := strconv.Atoi(code)
		if err != nil || n < 100 || n > 999 {
			return Response{}, fmt.Errorf("%w: Status %q: want a three-digit code and an optional reason", errMalformed, s)
		}
		res.Status = n
		res.Header.Del("Status")
	} else if res.Header.Get("Location") != "" {
		res.Status = http.StatusFound
	}
	if res.Header.Get("Content-Type") == "" && res.Header.Get("Location") == "" && res.Status == http.StatusOK {
		return Response{}, fmt.Errorf("%w: no Content-Type, Location or Status header; a CGI response needs one of them", errMalformed)
	}
	return res, nil
}

// headerEnd is the offset of the body: after the first blank line (LF LF
// or CRLF CRLF, mixed endings allowed); ReadMIMEHeader found one.
func headerEnd(out []byte) int {
	for i := 0; i < len(out); i++ {
		if out[i] != '\n' {
			continue
		}
		j := i + 1
		if j < len(out) && out[j] == '\r' {
			j++
		}
		if j < len(out) && out[j] == '\n' {
			return j + 1
		}
		if i == 0 || (i == 1 && out[0] == '\r') {
			return i + 1 // no headers at all
		}
	}
	return len(out)
}
