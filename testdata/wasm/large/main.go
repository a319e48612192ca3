//go:build wasip1

// Command large is a test module of the size of a real Go service built
// for wasip1 (~8 MB): it links net/http, crypto/tls, crypto/x509,
// encoding/json, encoding/xml, compress/gzip, regexp and more, and uses
// each a little, so that the linker keeps them. (text/template would make
// it ~12 MB: it keeps every exported method of every reachable type.) It serves one request over
// an in-memory connection pair, prints a line per check and "large: ok",
// and exits 0; with SLEEP (a Go duration) set it then sleeps that long.
// It exists to measure compiling a module of that size (cold start).
package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/csv"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"sort"
	"strings"
	"time"
)

type item struct {
	Name  string   `json:"name" xml:"name"`
	Count int      `json:"count" xml:"count"`
	Tags  []string `json:"tags" xml:"tag"`
}

func main() {
	items := []item{{"a", 1, []string{"x"}}, {"b", 2, []string{"y", "z"}}}
	check("json", func() (string, error) {
		b, err := json.Marshal(items)
		var back []item
		if err == nil {
			err = json.Unmarshal(b, &back)
		}
		return fmt.Sprint(len(b), len(back)), err
	})
	check("xml", func() (string, error) {
		b, err := xml.Marshal(items[1])
		return fmt.Sprint(len(b)), err
	})
	check("format", func() (string, error) {
		var w bytes.Buffer
		var err error
		for _, it := range items {
			fmt.Fprintf(&w, "%s=%d ", it.Name, it.Count)
		}
		return strings.TrimSpace(w.String()), err
	})
	check("gzip", func() (string, error) {
		var w bytes.Buffer
		z := gzip.NewWriter(&w)
		z.Write(bytes.Repeat([]byte("wasmlet "), 1000))
		err := z.Close()
		return fmt.Sprint(w.Len()), err
	})
	check("regexp+csv+url", func() (string, error) {
		re := regexp.MustCompile(`^([a-z]+)-(\d+)$`)
		r := csv.NewReader(strings.NewReader("pod-1,pod-22\n"))
		rec, err := r.Read()
		var out []string
		for _, f := range rec {
			out = append(out, re.ReplaceAllString(f, "$2"))
		}
		sort.Strings(out)
		u, _ := url.Parse("https://example.test/a?b=c")
		return strings.Join(out, ",") + " " + u.Query().Get("b"), err
	})
	check("x509+tls", func() (string, error) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return "", err
		}
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "large"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"large"}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			return "", err
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return "", err
		}
		pool := x509.NewCertPool()
		pool.AddCert(cert)
		cfg := &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}, RootCAs: pool, ServerName: "large", MinVersion: tls.VersionTLS12}
		sum := sha256.Sum256(der)
		return fmt.Sprint(cert.Subject.CommonName, " ", len(cfg.Certificates), " ", base64.StdEncoding.EncodeToString(sum[:4])), nil
	})
	check("http", serveOne)
	fmt.Println("large: ok")
	if s := os.Getenv("SLEEP"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			fmt.Fprintln(os.Stderr, "SLEEP:", err)
			os.Exit(2)
		}
		time.Sleep(d)
	}
}

// serveOne serves one HTTP request through a mux over an in-memory
// connection pair (wasip1 has no connect).
func serveOne() (string, error) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /items/{name}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(item{Name: r.PathValue("name"), Count: 3})
	})
	rec := &recorder{header: http.Header{}}
	r0, err := http.NewRequest("GET", "http://large/items/c", nil)
	if err != nil {
		return "", err
	}
	mux.ServeHTTP(rec, r0)
	c, s := net.Pipe()
	defer c.Close()
	go func() {
		defer s.Close()
		req, err := http.ReadRequest(bufio.NewReader(s))
		if err != nil {
			return
		}
		resp := &http.Response{StatusCode: 200, ProtoMajor: 1, ProtoMinor: 1, Request: req, Header: http.Header{}, Body: http.NoBody}
		resp.Write(s)
	}()
	req, _ := http.NewRequest("GET", "http://large/", nil)
	if err := req.Write(c); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), req)
	if err != nil {
		return "", err
	}
	resp.Body.Close()
	return fmt.Sprint(rec.code, " ", strings.TrimSpace(rec.body.String()), " ", resp.StatusCode), nil
}

// recorder is the http.ResponseWriter of one request served in memory.
type recorder struct {
	header http.Header
	code   int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }

func (r *recorder) WriteHeader(code int) { r.code = code }

func (r *recorder) Write(b []byte) (int, error) {
	if r.code == 0 {
		r.code = 200
	}
	return r.body.Write(b)
}

func check(name string, f func() (string, error)) {
	out, err := f()
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(1)
	}
	fmt.Printf("%s: %s\n", name, out)
}
