//! End-to-end tests of Weft in network namespaces.
