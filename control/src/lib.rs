//! Weft's flow language, control protocol and client library.
