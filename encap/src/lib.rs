//! Wire formats of Weft's overlays: VXLAN, Geneve and IP-in-IP.
#![forbid(unsafe_code)]
