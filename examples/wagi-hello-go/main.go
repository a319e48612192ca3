// Command wagi-hello-go is examples/wagi-hello written in Go: a WAGI
// handler, run once per HTTP request by an executor in handler mode
// (instances.Spec.Handler = "wagi"), that answers with the request's path.
// The request is in the environment (CGI: REQUEST_METHOD, PATH_INFO,
// QUERY_STRING, HTTP_<HEADER>, ...) and its body on stdin; the response is
// written to stdout in CGI form: headers, a blank line, the body. A Go
// module pays the Go runtime's start at every request (milliseconds);
// the WAT example does not.
//
//	GOOS=wasip1 GOARCH=wasm go build -o wagi-hello-go.wasm ./examples/wagi-hello-go
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Printf("Content-Type: text/plain\n\nHello from a WebAssembly handler at %s\n", os.Getenv("PATH_INFO"))
}
