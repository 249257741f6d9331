//! (receiver harness: in progress)
