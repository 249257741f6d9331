// grpc-go peer for the HTTP/2 and gRPC tests (Debian's golang-google-grpc-dev; the stubs are
// generated from demo.proto by the test with protoc-gen-go and protoc-gen-go-grpc).
//
//	grpcpeer server <port> [-cert F -key F]   demo.Greeter: SayHello (unary, "hello <name>"),
//	                                          Missing (fails NOT_FOUND), Count (server
//	                                          streaming, 3 replies). Prints READY <port>.
//	grpcpeer client <port> [-ca F] [-calls N] [-traceparent V] [-b3 V]
//	                                          on one connection: N × SayHello, Missing, Count;
//	                                          one line per call, then DONE. -traceparent and
//	                                          -b3 send that metadata (W3C `traceparent`, B3
//	                                          single `b3`) with every call.
//
// Plaintext is h2c with prior knowledge; with -cert/-ca it is TLS (ALPN h2, crypto/tls).
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"io/ioutil"
	"net"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"grpcpeer/demo"
)

type greeter struct {
	demo.UnimplementedGreeterServer
}

func (greeter) SayHello(_ context.Context, r *demo.HelloRequest) (*demo.HelloReply, error) {
	return &demo.HelloReply{Message: "hello " + r.Name}, nil
}

func (greeter) Missing(context.Context, *demo.HelloRequest) (*demo.HelloReply, error) {
	return nil, status.Error(codes.NotFound, "no such greeting")
}

func (greeter) Count(_ *demo.HelloRequest, s demo.Greeter_CountServer) error {
	for i := 0; i < 3; i++ {
		if err := s.Send(&demo.HelloReply{Message: fmt.Sprint(i)}); err != nil {
			return err
		}
	}
	return nil
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(1)
}

func server(port string, args []string) {
	fs := flag.NewFlagSet("server", flag.ExitOnError)
	cert := fs.String("cert", "", "TLS certificate (PEM)")
	key := fs.String("key", "", "TLS key (PEM)")
	fs.Parse(args)
	var opts []grpc.ServerOption
	if *cert != "" {
		c, err := credentials.NewServerTLSFromFile(*cert, *key)
		if err != nil {
			fail("tls: %v", err)
		}
		opts = append(opts, grpc.Creds(c))
	}
	l, err := net.Listen("tcp", "127.0.0.1:"+port)
	if err != nil {
		fail("listen: %v", err)
	}
	s := grpc.NewServer(opts...)
	demo.RegisterGreeterServer(s, greeter{})
	fmt.Printf("READY %s\n", port)
	if err := s.Serve(l); err != nil {
		fail("serve: %v", err)
	}
}

func client(port string, args []string) {
	fs := flag.NewFlagSet("client", flag.ExitOnError)
	ca := fs.String("ca", "", "CA certificate (PEM): use TLS")
	calls := fs.Int("calls", 3, "SayHello calls")
	traceparent := fs.String("traceparent", "", "traceparent metadata sent with every call")
	b3 := fs.String("b3", "", "b3 (B3 single header) metadata sent with every call")
	fs.Parse(args)
	opts := []grpc.DialOption{grpc.WithBlock()}
	if *ca != "" {
		pem, err := ioutil.ReadFile(*ca)
		if err != nil {
			fail("ca: %v", err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pem)
		opts = append(opts, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "localhost"})))
	} else {
		opts = append(opts, grpc.WithInsecure())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := grpc.DialContext(ctx, "127.0.0.1:"+port, opts...)
	if err != nil {
		fail("dial: %v", err)
	}
	defer conn.Close()
	if *traceparent != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "traceparent", *traceparent)
	}
	if *b3 != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "b3", *b3)
	}
	c := demo.NewGreeterClient(conn)
	for i := 0; i < *calls; i++ {
		r, err := c.SayHello(ctx, &demo.HelloRequest{Name: fmt.Sprintf("n%d", i)})
		if err != nil {
			fail("SayHello: %v", err)
		}
		fmt.Println("SayHello", r.Message)
	}
	_, err = c.Missing(ctx, &demo.HelloRequest{Name: "x"})
	fmt.Println("Missing", status.Code(err))
	stream, err := c.Count(ctx, &demo.HelloRequest{})
	if err != nil {
		fail("Count: %v", err)
	}
	var got []string
	for {
		r, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			fail("Count: %v", err)
		}
		got = append(got, r.Message)
	}
	fmt.Println("Count", got)
	fmt.Println("DONE")
}

func main() {
	if len(os.Args) < 3 {
		fail("usage: grpcpeer server|client <port> [flags]")
	}
	switch os.Args[1] {
	case "server":
		server(os.Args[2], os.Args[3:])
	case "client":
		client(os.Args[2], os.Args[3:])
	default:
		fail("unknown mode %q", os.Args[1])
	}
}
