// HTTPS server and client for the TLS tests, using only Go's standard library
// (crypto/tls), HTTP/1.1 only.
//
//	tlsapp server ADDR CERT KEY   serves "hello <path>", 404 for /missing; prints READY
//	tlsapp client URL...          GETs each URL on one keep-alive connection, prints statuses
package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"
)

func main() {
	switch os.Args[1] {
	case "server":
		mux := http.NewServeMux()
		mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/missing" {
				http.Error(w, "not here", http.StatusNotFound)
				return
			}
			fmt.Fprintf(w, "hello %s", r.URL.Path)
		})
		srv := &http.Server{
			Handler: mux,
			// An empty TLSNextProto turns HTTP/2 off: HTTP/1.1 over TLS.
			TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
		}
		ln, err := net.Listen("tcp", os.Args[2])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println("READY")
		if err := srv.ServeTLS(ln, os.Args[3], os.Args[4]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	case "client":
		tr := &http.Transport{
			TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
			TLSNextProto:    map[string]func(string, *tls.Conn) http.RoundTripper{},
		}
		c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
		for _, u := range os.Args[2:] {
			resp, err := c.Get(u)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			fmt.Println(resp.StatusCode)
		}
	}
}
