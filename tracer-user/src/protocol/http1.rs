//! HTTP/1.x (in progress).
