//! HTTP/2 (RFC 9113) and gRPC over it: frames per direction, HPACK, and streams paired into
//! exchanges.

mod hpack;
mod huffman;
