//! The printer of the ovs-ofctl flow text syntax (`Display` impls).
