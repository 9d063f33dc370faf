//! Target lists: addresses, CIDRs, hostnames and @FILEs, parsed into a sorted set of hosts.
//! (Being written: see issue 4.)
